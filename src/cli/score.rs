//! `sfam score`: every image of the datasets under the roots through the
//! scoring engine, into a score table that `sfam cross-auc` reads.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sfam_studio::data::Label;
use sfam_studio::data::atomic::write_atomic;
use sfam_studio::data::datasets::{DiscoverOptions, discover};
use sfam_studio::data::scores::{ScoreFormat, write_scores};
use sfam_studio::engine::{
    self, CACHE_SUFFIX, Cache, Engine, EngineOptions, Event, FaceScore, Item, Outcome, Progress,
    Report, Source, count_by_dataset,
};
use sfam_studio::model::sfam::HEAD_CONFIG_FILE;
use sfam_studio::model::training_images::TRAINING_IMAGES_FILE;
use sfam_studio::model::{DeviceSpec, Precision, SfamModel};

use super::embed::resolve_model;

/// Arguments of `sfam score`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folders (ROOT/<dataset>/{real,fake}/**, or a ROOT that is
    /// one dataset), CSV manifests or DeepfakeBench JSON files, as for
    /// `sfam datasets`.
    #[arg(value_name = "ROOT", required = true)]
    pub roots: Vec<PathBuf>,
    /// The score table to write (`.csv` or `.json`), atomically:
    /// `path,dataset,label,score[,video]`, one row per scored image.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Faces scored per image, largest first; the table holds the first
    /// one's score, `--details` shows them all.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_faces: u16,
    /// Also write FILE.details.jsonl: one JSON object per scored face
    /// (image, box, landmarks, precropped, region contributions, routing).
    #[arg(long)]
    pub details: bool,
    /// How the model runs.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Only this split of DeepfakeBench JSON files (train, val, test).
    #[arg(long)]
    pub split: Option<String>,
    /// Leave the model's own training images out (those whose bytes are in
    /// its folder's `training_images.txt`): what is scored is then a test of
    /// the model. Without it they are scored, and counted and named in the
    /// summary.
    #[arg(long)]
    pub skip_training_images: bool,
}

/// The scoring engine's options, shared by `sfam score` and `sfam scan`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// SFAM model folder (`sfam_head.json`, `sfam_head.safetensors` and
    /// a backbone: `faceres.safetensors`, or CLIP's `config.json` +
    /// `model.safetensors`; see docs/MODEL.md). Default: the bundled model in `models/default/`. Builds with the
    /// `hub` feature also take `hf://OWNER/NAME[@REVISION]`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// Compute device for the model: cpu, cuda, cuda:N or metal (faces
    /// are always detected on the CPU).
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceSpec))]
    pub device: DeviceSpec,
    /// Precision of a CLIP backbone's matrix products: auto (bf16 where the
    /// CPU has AVX-512 BF16), f32, or bf16 (bf16 inputs, float32 sums; the
    /// faceres backbone always runs in float32).
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(Precision))]
    pub precision: Precision,
    /// Faces per model call.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: u16,
    /// Threads that read, decode and detect faces (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Score cache folder (default: FILE.cache beside the output).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache: Option<PathBuf>,
    /// Neither read nor write the score cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// At most this many per-file errors are listed in the final summary (all
/// of them are in the log and in FILE.errors.csv).
const ERRORS_LISTED: usize = 50;
/// Seconds between progress lines when standard error is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `path` with `suffix` appended to its file name (`s.csv` → `s.csv.errors.csv`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// The model folder: `--model`, else the bundled `models/default/`
/// (beside the crate's sources, then in the current folder).
pub(super) fn model_dir(arg: Option<&str>) -> Result<PathBuf> {
    if let Some(arg) = arg {
        return resolve_model(arg, true);
    }
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default"),
        PathBuf::from("models/default"),
    ];
    candidates
        .into_iter()
        .find(|d| d.join(HEAD_CONFIG_FILE).is_file())
        .context(
            "no default model is bundled yet; pass --model DIR (a folder with sfam_head.json, \
             sfam_head.safetensors and a backbone; see docs/MODEL.md)",
        )
}

/// One line of FILE.details.jsonl.
#[derive(Debug, Serialize)]
struct DetailLine<'a> {
    path: String,
    dataset: &'a str,
    label: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    video: Option<&'a str>,
    /// Index of the face in its image (0 = largest: the image's score).
    face: usize,
    faces_found: usize,
    faces_scored: usize,
    precropped: bool,
    size: [u32; 2],
    /// computed, cached or recomputed.
    source: &'static str,
    /// The image is one of the model's training images (by content).
    training_image: bool,
    #[serde(flatten)]
    detail: &'a FaceScore,
}

/// Where the run's messages go: above the progress bar on a terminal,
/// else plain lines on standard error.
struct Log {
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Log {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:25}] {pos}/{len} images, {per_sec}, ETA {eta}, {msg}",
            )
            .map_or_else(
                |_| ProgressStyle::default_bar(),
                |s| s.progress_chars("=> "),
            );
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            last_line: Instant::now(),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn progress(&mut self, p: &Progress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.done as u64);
            bar.set_message(format!("{} cached, {} errors", p.cached, p.failed));
        } else if self.last_line.elapsed() >= LOG_EVERY || p.done == p.total {
            self.last_line = Instant::now();
            eprintln!(
                "progress: {}/{} images ({} cached, {} errors), {:.1} faces/s, ETA {}",
                p.done,
                p.total,
                p.cached,
                p.failed,
                p.faces_per_sec(),
                eta(p)
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Time left at the rate so far, in words.
fn eta(p: &Progress) -> String {
    if p.done == 0 || p.elapsed_secs <= 0.0 {
        return "-".into();
    }
    #[allow(clippy::cast_precision_loss)]
    let secs = p.elapsed_secs / p.done as f64 * (p.total - p.done) as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = secs.round() as u64;
    if secs >= 3600 {
        format!("{}h {:02}m", secs / 3600, secs / 60 % 60)
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

/// A file being written: a temporary file beside the output, renamed at
/// the end (so it appears whole or not at all). The first write error is
/// kept and reported by [`Streamed::persist`]; later writes are skipped.
pub(super) struct Streamed {
    tmp: BufWriter<tempfile::NamedTempFile>,
    error: Option<std::io::Error>,
}

impl Streamed {
    pub(super) fn create(dir: &Path) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(".sfam-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        Ok(Self {
            tmp: BufWriter::new(tmp),
            error: None,
        })
    }

    /// Writes with `f`, unless an earlier write failed.
    pub(super) fn write(
        &mut self,
        f: impl FnOnce(&mut BufWriter<tempfile::NamedTempFile>) -> std::io::Result<()>,
    ) {
        if self.error.is_none()
            && let Err(e) = f(&mut self.tmp)
        {
            self.error = Some(e);
        }
    }

    /// Syncs the file and renames it to `path`.
    pub(super) fn persist(self, path: &Path) -> Result<()> {
        let context = || format!("cannot write {}", path.display());
        if let Some(e) = self.error {
            return Err(e).with_context(context);
        }
        let tmp = self
            .tmp
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)
            .with_context(context)?;
        tmp.as_file().sync_all().with_context(context)?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(context)?;
        Ok(())
    }
}

/// Writes the FILE.details.jsonl lines of one image.
fn write_details(out: &mut Streamed, item: &Item, outcome: &Outcome, trained_on: bool) {
    let Outcome::Scored { score, source } = outcome else {
        return;
    };
    let path = item.path.display().to_string();
    for (face, detail) in score.faces.iter().enumerate() {
        let line = DetailLine {
            path: path.clone(),
            dataset: &item.dataset,
            label: item.label.map_or("", Label::as_str),
            video: item.video.as_deref(),
            face,
            faces_found: score.faces_found,
            faces_scored: score.faces.len(),
            precropped: score.precropped,
            size: score.size,
            source: match source {
                Source::Computed => "computed",
                Source::Cached => "cached",
                Source::Recomputed(_) => "recomputed",
            },
            training_image: trained_on,
            detail,
        };
        out.write(|w| {
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")
        });
    }
}

/// Runs `sfam score`. Exit status 0 when the run completed, even with
/// per-file errors; 1 when it could not proceed (no model, no images, an
/// output that cannot be written, a failing model).
pub fn run(args: &Args) -> Result<ExitCode> {
    let (format, out_dir) = output(&args.out)?;
    let (items, datasets) = find_items(args)?;
    let scoring = args.engine.open(args.max_faces, &args.out)?;
    let (items, skipped) = if args.skip_training_images {
        without_training_images(items, scoring.engine().model())?
    } else {
        (items, 0)
    };
    eprintln!(
        "scoring {} images of {} dataset(s) with {}",
        items.len(),
        datasets,
        scoring.describe(&args.engine)
    );

    let mut details = if args.details {
        Some(Streamed::create(&out_dir)?)
    } else {
        None
    };
    let report = scoring.run(&items, |item, outcome, trained_on| {
        if let Some(d) = details.as_mut() {
            write_details(d, item, outcome, trained_on);
        }
    })?;

    write_scores(&args.out, &report.records, format)?;
    let errors_path = write_errors(&args.out, &report)?;
    let details_path = with_suffix(&args.out, ".details.jsonl");
    if let Some(d) = details {
        d.persist(&details_path)?;
    }
    let mut text = summary(&report, "images");
    if skipped > 0 {
        let _ = writeln!(
            text,
            "left out {skipped} training image(s) of this model (--skip-training-images)"
        );
    }
    text.push_str(&trained_on(&report, &items, "images"));
    let _ = writeln!(
        text,
        "wrote {} ({} rows)",
        args.out.display(),
        report.records.len()
    );
    if args.details {
        let _ = writeln!(text, "wrote {}", details_path.display());
    }
    text.push_str(&problems(&report, errors_path.as_deref()));
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The output's format (by its extension) and its folder, which must
/// exist (checked before any work is done).
pub(super) fn output(out: &Path) -> Result<(ScoreFormat, PathBuf)> {
    let format = ScoreFormat::from_path(out)
        .with_context(|| format!("the output must end in .csv or .json: {}", out.display()))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("the output's folder does not exist: {}", dir.display());
    }
    Ok((format, dir))
}

/// A loaded engine, its cache and the model folder it came from.
pub(super) struct Scoring {
    engine: Engine,
    cache: Option<Cache>,
    dir: PathBuf,
}

impl EngineArgs {
    /// Loads the model into an engine and opens the cache (`--cache`, else
    /// `OUT.cache`, unless `--no-cache`).
    pub(super) fn open(&self, max_faces: u16, out: &Path) -> Result<Scoring> {
        let dir = model_dir(self.model.as_deref())?;
        let device = self.device.open()?;
        let options = EngineOptions {
            batch_size: usize::from(self.batch),
            max_faces: usize::from(max_faces),
            workers: self.workers.unwrap_or(0),
            precision: self.precision,
        };
        let engine = Engine::load(&dir, &device, options)?;
        let cache = if self.no_cache {
            None
        } else {
            let root = self
                .cache
                .clone()
                .unwrap_or_else(|| with_suffix(out, CACHE_SUFFIX));
            Some(engine.open_cache(&root)?)
        };
        Ok(Scoring { engine, cache, dir })
    }
}

impl Scoring {
    /// The engine (and through it the model).
    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// "MODEL (batch, workers, device, precision, cache)", for the first
    /// log line.
    pub(super) fn describe(&self, args: &EngineArgs) -> String {
        let options = self.engine.options();
        format!(
            "{} (batch {}, {} workers, device {}, {}){}",
            self.dir.display(),
            options.batch_size,
            self.engine.workers(),
            args.device,
            self.engine.model().precision(),
            self.cache
                .as_ref()
                .map(|c| format!(", cache {}", c.dir().display()))
                .unwrap_or_default()
        )
    }

    /// Scores `items` with a progress bar (or log lines), logging per-file
    /// errors as they come; `on_image` sees every image's outcome in
    /// input order.
    pub(super) fn run(
        &self,
        items: &[Item],
        mut on_image: impl FnMut(&Item, &Outcome, bool),
    ) -> Result<Report> {
        let mut log = Log::new(items.len());
        let cancel = AtomicBool::new(false);
        let result = self
            .engine
            .score(items, self.cache.as_ref(), &cancel, |event| match event {
                Event::Image {
                    item,
                    outcome,
                    trained_on,
                    ..
                } => {
                    match outcome {
                        Outcome::Failed(e) => log.line(&format!("error: {e}")),
                        Outcome::Scored {
                            source: Source::Recomputed(why),
                            ..
                        } => log.line(&format!("note: corrupt cache entry, scored again ({why})")),
                        Outcome::Scored { .. } => {}
                    }
                    on_image(item, outcome, trained_on);
                }
                Event::Progress(p) => log.progress(&p),
            });
        log.finish();
        Ok(result?)
    }
}

/// `items` without the model's training images (by content), and how many
/// were left out.
fn without_training_images(items: Vec<Item>, model: &SfamModel) -> Result<(Vec<Item>, usize)> {
    let Some(list) = model.training_images() else {
        bail!(
            "--skip-training-images: this model folder does not list its training images \
             (no {TRAINING_IMAGES_FILE})"
        );
    };
    let (kept, skipped) = engine::without_training_images(items, list);
    if kept.is_empty() {
        bail!("every image found is a training image of this model: nothing left to test it on");
    }
    Ok((kept, skipped))
}

/// The images under the roots, and the number of datasets; discovery
/// problems are warnings.
fn find_items(args: &Args) -> Result<(Vec<Item>, usize)> {
    let found = discover(
        &args.roots,
        &DiscoverOptions {
            split: args.split.clone(),
        },
    );
    for e in &found.errors {
        eprintln!("warning: {e}");
    }
    if !found.skipped.is_empty() {
        eprintln!(
            "note: {} non-image or hidden file(s) skipped (see `sfam datasets`)",
            found.skipped.len()
        );
    }
    let items = Item::from_discovery(&found);
    if items.is_empty() {
        bail!("no images found under the given roots");
    }
    Ok((items, found.datasets.len()))
}

/// Writes OUT.errors.csv (`path,error`) atomically when there are
/// errors, and returns its path; removes a stale one otherwise.
pub(super) fn write_errors(out: &Path, report: &Report) -> Result<Option<PathBuf>> {
    let path = with_suffix(out, ".errors.csv");
    if report.errors.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove stale {}", path.display()))
            }
            _ => Ok(None),
        };
    }
    write_atomic(&path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record(["path", "error"])?;
        for e in &report.errors {
            csv.write_record([e.path.display().to_string(), e.error.to_string()])?;
        }
        csv.flush()
    })
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}

/// The run's counts and speed, for the final summary (standard output);
/// `unit` names what was scored ("images", "photos").
pub(super) fn summary(report: &Report, unit: &str) -> String {
    let p = &report.progress;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scored {} of {} {unit}: {} computed, {} from cache ({} corrupt cache entries recomputed), {} errors",
        p.done - p.failed,
        p.total,
        p.computed,
        p.cached,
        p.recomputed,
        p.failed
    );
    let _ = writeln!(
        s,
        "{} faces through the model in {:.1} s: {:.2} faces/s, model busy {:.1}% of the run",
        p.faces,
        p.elapsed_secs,
        p.faces_per_sec(),
        100.0 * p.model_busy()
    );
    s
}

/// How many training images list in the summary.
const TRAINED_LISTED: usize = 3;

/// A warning when some of the scored images are the model's own training
/// images (its folder's `training_images.txt` holds their bytes' hashes).
pub(super) fn trained_on(report: &Report, items: &[Item], unit: &str) -> String {
    let n = report.trained_on.len();
    if n == 0 {
        return String::new();
    }
    let scored = report.progress.done - report.progress.failed;
    let examples: Vec<String> = report
        .trained_on
        .iter()
        .take(TRAINED_LISTED)
        .filter_map(|&i| items.get(i))
        .map(|item| item.path.display().to_string())
        .collect();
    // Per dataset, where the items have one (`sfam score`'s, not scan's).
    let per: Vec<String> = count_by_dataset(items, &report.trained_on)
        .into_iter()
        .filter(|(d, _)| !d.is_empty())
        .map(|(d, k)| format!("{d} {k}"))
        .collect();
    let per = if per.is_empty() {
        String::new()
    } else {
        format!(" ({})", per.join(", "))
    };
    format!(
        "warning: {n} of the {scored} scored {unit} are training images of this model \
         (the same bytes are in its {TRAINING_IMAGES_FILE}): their scores are no test of it{per}; e.g. {}{}\n",
        examples.join(", "),
        if n > examples.len() { ", ..." } else { "" }
    )
}

/// The end of the final summary: cache entries that could not be
/// written, and the files that could not be scored (all of them in
/// `errors`, the first [`ERRORS_LISTED`] here).
pub(super) fn problems(report: &Report, errors: Option<&Path>) -> String {
    let mut s = String::new();
    if report.cache_write_failures > 0 {
        let _ = writeln!(
            s,
            "warning: {} cache entries could not be written, e.g. {}",
            report.cache_write_failures,
            report.cache_write_errors.first().map_or("", String::as_str)
        );
    }
    if let Some(path) = errors {
        let _ = writeln!(
            s,
            "{} file(s) could not be scored (all in {}):",
            report.errors.len(),
            path.display()
        );
        for e in report.errors.iter().take(ERRORS_LISTED) {
            let _ = writeln!(s, "  {}", e.error);
        }
        if report.errors.len() > ERRORS_LISTED {
            let _ = writeln!(s, "  … and {} more", report.errors.len() - ERRORS_LISTED);
        }
    }
    s
}
