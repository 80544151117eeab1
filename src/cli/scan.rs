//! `sfam scan`: an analyst's photos and folders, without labels, through
//! the scoring engine: every face's score and verdict in one table, the
//! most suspicious faces listed at the end.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use sfam_studio::data::scores::ScoreFormat;
use sfam_studio::engine::table::{FaceRow, FaceTable, face_rows};
use sfam_studio::engine::{Item, Outcome};
use sfam_studio::model::UNSEEN_KINDS_CAVEAT;

use super::score::{EngineArgs, Streamed, output, problems, summary, trained_on, write_errors};

/// Arguments of `sfam scan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Photos, and folders of photos (searched recursively; hidden and
    /// non-image files in folders are passed over).
    #[arg(value_name = "PATH", required = true)]
    pub inputs: Vec<PathBuf>,
    /// The table to write, atomically: `.csv` (one row per face) or
    /// `.json` (one object per face, with the model's full explanation:
    /// landmarks, region logits, attention, routing).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A face is called fake when its score is at least this. Default:
    /// the threshold the model suggests (`sfam train` writes the one that
    /// flags 10 % of its validation real faces), else 0.5.
    #[arg(long, value_name = "T", value_parser = probability)]
    pub threshold: Option<f64>,
    /// Faces scored per photo, largest first.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_faces: u16,
    /// How many of the highest-scoring faces the summary lists.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// How the model runs.
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        Ok(_) => Err("must be between 0 and 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The table being written, row by row, into a temporary file beside
/// the output, and what the summary needs.
struct Table {
    out: Streamed,
    /// `None` when its start could not be written (the error is in `out`).
    writer: Option<FaceTable>,
    seen: Seen,
}

/// The faces written: counts and the highest scores.
#[derive(Default)]
struct Seen {
    faces: usize,
    fakes: usize,
    /// At most `2 × keep` faces between trims; `keep` after [`Seen::trim`].
    top: Vec<Top>,
    keep: usize,
}

/// A face for the summary's list.
struct Top {
    score: f32,
    path: String,
    face: usize,
    verdict: &'static str,
    region: String,
    part: f32,
}

impl Seen {
    fn add(&mut self, row: &FaceRow<'_>) {
        self.faces += 1;
        if row.verdict == "fake" {
            self.fakes += 1;
        }
        if self.keep == 0 {
            return;
        }
        self.top.push(Top {
            score: row.detail.score,
            path: row.path.clone(),
            face: row.face,
            verdict: row.verdict,
            region: row.top_region.to_owned(),
            part: row.top_region_part,
        });
        if self.top.len() >= 2 * self.keep {
            self.trim();
        }
    }

    /// Keeps the `keep` highest scores, highest first (among equal
    /// scores, the face met first).
    fn trim(&mut self) {
        self.top.sort_by(|a, b| b.score.total_cmp(&a.score));
        self.top.truncate(self.keep);
    }

    /// The summary's lines.
    fn describe(&self, threshold: f64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} face(s): {} likely fake (score >= {threshold:.4}), {} likely real",
            self.faces,
            self.fakes,
            self.faces - self.fakes
        );
        if !self.top.is_empty() {
            let _ = writeln!(s, "highest scores:");
        }
        for t in &self.top {
            let _ = writeln!(
                s,
                "  {:.4}  {}  {} (face {}; largest regional part: {} {:+.2})",
                t.score,
                t.verdict,
                t.path,
                t.face,
                if t.region.is_empty() { "-" } else { &t.region },
                t.part
            );
        }
        s
    }
}

impl Table {
    fn new(dir: &Path, format: ScoreFormat, keep: usize) -> Result<Self> {
        let mut out = Streamed::create(dir)?;
        let mut writer = None;
        out.write(|w| {
            writer = Some(FaceTable::start(format, w)?);
            Ok(())
        });
        Ok(Self {
            out,
            writer,
            seen: Seen {
                keep,
                ..Seen::default()
            },
        })
    }

    fn add(&mut self, row: &FaceRow<'_>) {
        self.seen.add(row);
        if let Some(writer) = self.writer.as_mut() {
            self.out.write(|w| writer.add(w, row));
        }
    }

    /// Closes the table and renames it to `path`.
    fn finish(mut self, path: &Path) -> Result<Seen> {
        if let Some(writer) = self.writer.take() {
            self.out.write(|w| writer.finish(w));
        }
        self.out.persist(path)?;
        self.seen.trim();
        Ok(self.seen)
    }
}

/// Runs `sfam scan`. Exit status 0 when the run completed, even with
/// photos that could not be scored; 1 when it could not proceed (no
/// model, no photo found, an output that cannot be written).
pub fn run(args: &Args) -> Result<ExitCode> {
    let (format, out_dir) = output(&args.out)?;
    let photos = super::photos(&args.inputs);
    if photos.is_empty() {
        bail!("no photos found in the given paths");
    }
    let items: Vec<Item> = photos
        .into_iter()
        .map(|path| Item {
            path,
            dataset: String::new(),
            label: None,
            video: None,
        })
        .collect();
    let scoring = args.engine.open(args.max_faces, &args.out)?;
    eprintln!(
        "scanning {} photos with {}",
        items.len(),
        scoring.describe(&args.engine)
    );
    let (threshold, why) = match (
        args.threshold,
        &scoring.engine().model().head().config().threshold,
    ) {
        (Some(t), _) => (t, "--threshold".to_owned()),
        (None, Some(s)) => (s.value, format!("suggested by the model: {}", s.rule)),
        (None, None) => (0.5, "the default; the model suggests none".to_owned()),
    };
    eprintln!("threshold {threshold:.4} ({why})");
    let mut table = Table::new(&out_dir, format, args.top)?;
    let report = scoring.run(&items, |item, outcome, trained_on| {
        if let Outcome::Scored { score, .. } = outcome {
            for row in face_rows(&item.path, score, trained_on, threshold) {
                table.add(&row);
            }
        }
    })?;
    let seen = table.finish(&args.out)?;
    let errors = write_errors(&args.out, &report)?;
    let mut text = summary(&report, "photos");
    text.push_str(&trained_on(&report, &items, "photos"));
    let _ = writeln!(text, "wrote {} ({} rows)", args.out.display(), seen.faces);
    let _ = writeln!(text, "threshold {threshold:.4} ({why})");
    let config = scoring.engine().model().head().config();
    let _ = writeln!(
        text,
        "the model: {}\n  {UNSEEN_KINDS_CAVEAT}",
        config.training_note()
    );
    text.push_str(&seen.describe(threshold));
    text.push_str(&problems(&report, errors.as_deref()));
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
