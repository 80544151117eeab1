//! `sfam scan`: an analyst's photos and folders, without labels, through
//! the scoring engine: every face's score and verdict in one table, the
//! most suspicious faces listed at the end.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde::Serialize;
use sfam_studio::data::scores::ScoreFormat;
use sfam_studio::engine::{FaceScore, ImageScore, Item, Outcome};

use super::score::{EngineArgs, Streamed, output, problems, summary, write_errors};

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
    /// A face is called fake when its score is at least this.
    #[arg(long, default_value_t = 0.5, value_name = "T", value_parser = probability)]
    pub threshold: f64,
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

/// One scored face: a row of the CSV, an object of the JSON (which
/// flattens the face's full [`FaceScore`] into it).
#[derive(Debug, Serialize)]
struct FaceRow<'a> {
    path: String,
    /// Index of the face in its photo (0 = the largest).
    face: usize,
    /// Faces the detector found in the photo (0 when it was used whole).
    faces_found: usize,
    /// No face was detected: the photo was taken whole as a face crop.
    precropped: bool,
    /// The photo's width and height (upright).
    size: [u32; 2],
    /// `fake` when the score is at least the threshold, else `real`.
    verdict: &'static str,
    /// The region whose part of the logit is largest in size, and that
    /// part (attention × region logit; positive: towards fake).
    top_region: &'a str,
    top_region_part: f32,
    #[serde(flatten)]
    detail: &'a FaceScore,
}

/// The CSV's columns.
const CSV_HEADER: [&str; 15] = [
    "path",
    "face",
    "faces_found",
    "precropped",
    "verdict",
    "score",
    "logit",
    "global_logit",
    "top_region",
    "top_region_part",
    "x1",
    "y1",
    "x2",
    "y2",
    "detector_score",
];

impl FaceRow<'_> {
    fn csv_record(&self) -> Vec<String> {
        let d = self.detail;
        let mut r = vec![
            self.path.clone(),
            self.face.to_string(),
            self.faces_found.to_string(),
            self.precropped.to_string(),
            self.verdict.to_owned(),
            d.score.to_string(),
            d.logit.to_string(),
            d.global_logit.to_string(),
            self.top_region.to_owned(),
            self.top_region_part.to_string(),
        ];
        r.extend(d.bbox.iter().map(ToString::to_string));
        r.push(d.detector_score.to_string());
        r
    }
}

/// Every face of one scored photo, as rows.
fn rows<'a>(path: &Path, image: &'a ImageScore, threshold: f64) -> Vec<FaceRow<'a>> {
    image
        .faces
        .iter()
        .enumerate()
        .map(|(face, detail)| {
            let (top_region, top_region_part) = detail
                .regions
                .iter()
                .zip(&detail.region_contributions)
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map_or(("", 0.0), |(name, part)| (name.as_str(), *part));
            FaceRow {
                path: path.display().to_string(),
                face,
                faces_found: image.faces_found,
                precropped: image.precropped,
                size: image.size,
                verdict: verdict(detail.score, threshold),
                top_region,
                top_region_part,
                detail,
            }
        })
        .collect()
}

fn verdict(score: f32, threshold: f64) -> &'static str {
    if f64::from(score) >= threshold {
        "fake"
    } else {
        "real"
    }
}

/// The table being written, row by row, into a temporary file beside
/// the output, and what the summary needs.
struct Table {
    out: Streamed,
    format: ScoreFormat,
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
            "{} face(s): {} likely fake (score >= {threshold}), {} likely real",
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
        out.write(|w| match format {
            ScoreFormat::Csv => write_csv_record(w, CSV_HEADER),
            ScoreFormat::Json => w.write_all(b"["),
        });
        Ok(Self {
            out,
            format,
            seen: Seen {
                keep,
                ..Seen::default()
            },
        })
    }

    fn add(&mut self, row: &FaceRow<'_>) {
        let first = self.seen.faces == 0;
        self.seen.add(row);
        let format = self.format;
        self.out.write(|w| match format {
            ScoreFormat::Csv => write_csv_record(w, row.csv_record()),
            ScoreFormat::Json => {
                w.write_all(if first { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *w, row)?;
                Ok(())
            }
        });
    }

    /// Closes the table and renames it to `path`.
    fn finish(mut self, path: &Path) -> Result<Seen> {
        if self.format == ScoreFormat::Json {
            let end: &[u8] = if self.seen.faces == 0 {
                b"]\n"
            } else {
                b"\n]\n"
            };
            self.out.write(|w| w.write_all(end));
        }
        self.out.persist(path)?;
        self.seen.trim();
        Ok(self.seen)
    }
}

fn write_csv_record<I, T>(w: &mut impl Write, record: I) -> std::io::Result<()>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(w);
    csv.write_record(record)?;
    csv.flush()
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
    let mut table = Table::new(&out_dir, format, args.top)?;
    let report = scoring.run(&items, |item, outcome| {
        if let Outcome::Scored { score, .. } = outcome {
            for row in rows(&item.path, score, args.threshold) {
                table.add(&row);
            }
        }
    })?;
    let seen = table.finish(&args.out)?;
    let errors = write_errors(&args.out, &report)?;
    let mut text = summary(&report, "photos");
    let _ = writeln!(text, "wrote {} ({} rows)", args.out.display(), seen.faces);
    text.push_str(&seen.describe(args.threshold));
    text.push_str(&problems(&report, errors.as_deref()));
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
