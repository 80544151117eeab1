//! `sfam score`: every image of the datasets under the roots through the
//! scoring engine, into a score table that `sfam cross-auc` reads.

use std::ffi::OsString;
use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sfam_studio::data::atomic::write_atomic;
use sfam_studio::data::datasets::{DiscoverOptions, discover};
use sfam_studio::data::scores::{ScoreFormat, write_scores};
use sfam_studio::engine::{
    CACHE_SUFFIX, Engine, EngineOptions, Event, FaceScore, Item, Outcome, Progress, Report, Source,
};
use sfam_studio::model::sfam::HEAD_CONFIG_FILE;
use sfam_studio::model::{DeviceSpec, Precision};

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
    /// SFAM model folder (`config.json`, `model.safetensors`,
    /// `sfam_head.json`, `sfam_head.safetensors`; see docs/MODEL.md).
    /// Default: the bundled model in `models/default/`. Builds with the
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
    /// Faces scored per image, largest first; the table holds the first
    /// one's score, `--details` shows them all.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_faces: u16,
    /// Threads that read, decode and detect faces (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Also write FILE.details.jsonl: one JSON object per scored face
    /// (image, box, landmarks, precropped, region contributions, routing).
    #[arg(long)]
    pub details: bool,
    /// Score cache folder (default: FILE.cache beside the output).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache: Option<PathBuf>,
    /// Neither read nor write the score cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Only this split of DeepfakeBench JSON files (train, val, test).
    #[arg(long)]
    pub split: Option<String>,
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

/// The details file being written: a temporary file beside the output,
/// renamed at the end (so it too appears whole or not at all).
struct Details {
    tmp: BufWriter<tempfile::NamedTempFile>,
    error: Option<std::io::Error>,
}

impl Details {
    fn create(dir: &Path) -> Result<Self> {
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

    fn write(&mut self, item: &Item, outcome: &Outcome) {
        let Outcome::Scored { score, source } = outcome else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        let path = item.path.display().to_string();
        for (face, detail) in score.faces.iter().enumerate() {
            let line = DetailLine {
                path: path.clone(),
                dataset: &item.dataset,
                label: item.label.as_str(),
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
                detail,
            };
            let result = serde_json::to_writer(&mut self.tmp, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| self.tmp.write_all(b"\n"));
            if let Err(e) = result {
                self.error = Some(e);
                return;
            }
        }
    }

    fn persist(self, path: &Path) -> Result<()> {
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

/// Runs `sfam score`. Exit status 0 when the run completed, even with
/// per-file errors; 1 when it could not proceed (no model, no images, an
/// output that cannot be written, a failing model).
pub fn run(args: &Args) -> Result<ExitCode> {
    let format = ScoreFormat::from_path(&args.out).with_context(|| {
        format!(
            "the output must end in .csv or .json: {}",
            args.out.display()
        )
    })?;
    let out_dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        bail!("the output's folder does not exist: {}", out_dir.display());
    }
    let dir = model_dir(args.model.as_deref())?;
    let (items, datasets) = find_items(args)?;

    let device = args.device.open()?;
    let options = EngineOptions {
        batch_size: usize::from(args.batch),
        max_faces: usize::from(args.max_faces),
        workers: args.workers.unwrap_or(0),
        precision: args.precision,
    };
    let engine = Engine::load(&dir, &device, options)?;
    let cache = if args.no_cache {
        None
    } else {
        let root = args
            .cache
            .clone()
            .unwrap_or_else(|| with_suffix(&args.out, CACHE_SUFFIX));
        Some(engine.open_cache(&root)?)
    };
    eprintln!(
        "scoring {} images of {} dataset(s) with {} (batch {}, {} workers, device {}, {}){}",
        items.len(),
        datasets,
        dir.display(),
        options.batch_size,
        engine.workers(),
        args.device,
        engine.model().precision(),
        cache
            .as_ref()
            .map(|c| format!(", cache {}", c.dir().display()))
            .unwrap_or_default()
    );

    let mut details = if args.details {
        Some(Details::create(&out_dir)?)
    } else {
        None
    };
    let mut log = Log::new(items.len());
    let cancel = AtomicBool::new(false);
    let result = engine.score(&items, cache.as_ref(), &cancel, |event| match event {
        Event::Image { item, outcome, .. } => {
            match outcome {
                Outcome::Failed(e) => log.line(&format!("error: {e}")),
                Outcome::Scored {
                    source: Source::Recomputed(why),
                    ..
                } => log.line(&format!("note: corrupt cache entry, scored again ({why})")),
                Outcome::Scored { .. } => {}
            }
            if let Some(d) = details.as_mut() {
                d.write(item, outcome);
            }
        }
        Event::Progress(p) => log.progress(&p),
    });
    log.finish();
    let report = result?;

    write_scores(&args.out, &report.records, format)?;
    let errors_path = with_suffix(&args.out, ".errors.csv");
    write_errors(&errors_path, &report)?;
    let details_path = with_suffix(&args.out, ".details.jsonl");
    if let Some(d) = details {
        d.persist(&details_path)?;
    }
    print!(
        "{}",
        summary(
            &report,
            &args.out,
            (!report.errors.is_empty()).then_some(errors_path.as_path()),
            args.details.then_some(details_path.as_path()),
        )
    );
    Ok(ExitCode::SUCCESS)
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

/// Writes FILE.errors.csv (`path,error`) atomically when there are errors;
/// removes a stale one otherwise.
fn write_errors(path: &Path, report: &Report) -> Result<()> {
    if report.errors.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove stale {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    write_atomic(path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record(["path", "error"])?;
        for e in &report.errors {
            csv.write_record([e.path.display().to_string(), e.error.to_string()])?;
        }
        csv.flush()
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

/// The final summary (standard output).
fn summary(report: &Report, out: &Path, errors: Option<&Path>, details: Option<&Path>) -> String {
    use std::fmt::Write as _;
    let p = &report.progress;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scored {} of {} images: {} computed, {} from cache ({} corrupt cache entries recomputed), {} errors",
        report.records.len(),
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
    let _ = writeln!(s, "wrote {} ({} rows)", out.display(), report.records.len());
    if let Some(d) = details {
        let _ = writeln!(s, "wrote {}", d.display());
    }
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
