//! The command line (clap): parses arguments, calls the library, prints.
//! Errors are reported once, here, with the file they concern.

mod compare;
mod cross_auc;
mod datasets;
mod embed;
mod faces;
mod inspect;
mod runs;
mod scan;
mod score;
pub(crate) mod train;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// SFAM Studio: face-forgery inspection and cross-domain evaluation.
///
/// Scores from the SFAM detector — or from any other detector, as a CSV or
/// JSON score table — are compared across datasets with the Cross-AUC
/// matrix: real faces of one dataset against fake faces of another.
#[derive(Debug, Parser)]
#[command(name = "sfam", version, propagate_version = true)]
pub struct Cli {
    /// What to do. Without a subcommand, `sfam` opens the desktop app.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: open these in the app at start (photos in
    /// Inspect, score tables `.csv`/`.json` in Datasets, a training run's
    /// folder in Train; other folders by what they hold).
    #[arg(long, value_name = "PATH")]
    pub open: Vec<PathBuf>,
    /// With no subcommand: the SFAM model folder the app's Inspect view
    /// uses (remembered), instead of the bundled `models/default`; also
    /// `hf://OWNER/NAME[@REVISION]` (downloaded into the hub's cache before
    /// the window opens).
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// With no subcommand: compare the score table opened with `--open`
    /// with this one (another detector's scores of the same files) once it
    /// has loaded.
    #[arg(long, value_name = "SCORES")]
    pub compare: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cross-AUC matrix and per-dataset metrics of a score table.
    ///
    /// SCORES is a CSV file with header `path,dataset,label,score[,video]`
    /// (labels real/fake or 0/1; higher score = more likely fake) or a JSON
    /// array of records with the same fields — the output of `sfam score`
    /// or of any other detector.
    ///
    /// Cell [i][j] of the matrix is the AUC of the real faces of dataset i
    /// (rows) against the fake faces of dataset j (columns). The diagonal
    /// is the usual within-dataset AUC; a detector whose scores shift with
    /// the domain keeps a good diagonal and collapses off it. Cells lacking
    /// real or fake faces are undefined and shown as `-` (null in JSON).
    #[command(name = "cross-auc")]
    CrossAuc(cross_auc::Args),
    /// Two detectors' score tables on the same faces: each Cross-AUC
    /// cell's AUC difference (second − first) with a paired bootstrap
    /// interval.
    ///
    /// Rows are paired by `path` (the tables must agree on each shared
    /// face's dataset and label; faces in one table only are counted and
    /// left out). Each resample draws real and fake faces with replacement
    /// (stratified) and scores the drawn faces with both detectors, so the
    /// faces' own difficulty, which both share, cancels: a difference whose
    /// interval excludes 0 is more than these faces' sampling explains
    /// (not more than a rerun of training would move — compare runs, not
    /// single models, for that).
    Compare(compare::Args),
    /// Find datasets of real and fake faces under folders or manifests.
    ///
    /// Layouts: ROOT/<dataset>/{real,fake}/** (also Real/Fake,
    /// original/manipulated, `0_real`/`1_fake`); a ROOT that is itself one
    /// dataset; a CSV manifest `path,label[,dataset][,video]`; a
    /// DeepfakeBench dataset JSON. Images in subfolders of a label folder
    /// belong to the video named by that subfolder.
    Datasets(datasets::Args),
    /// Detect faces: boxes, scores and 5 landmarks, largest face first.
    ///
    /// Every face of each image is reported (MTCNN, facenet-pytorch's
    /// weights), in the image's pixels after EXIF orientation; an image
    /// without a face says "no face found". `--save-aligned` writes each
    /// face aligned to the 224×224 template the SFAM model reads.
    /// `--tight-crops` treats the images as tight face crops (like DFDC's):
    /// a crop without a detected face is used whole and marked precropped.
    Faces(faces::Args),
    /// CLIP embeddings of an image (class and patch tokens) or of a text.
    ///
    /// `--image`: the projected class embedding and the projected patch
    /// embeddings (row-major), after CLIP's preprocessing (shorter side
    /// resized to the input size, bicubic; centre crop; CLIP mean/std).
    /// `--text`: the projected text embedding. Neither is normalised.
    Embed(embed::Args),
    /// The SFAM detector's full output for each face: score, global and
    /// per-region logit parts, routing over experts, region masks, one
    /// alignment map per prompt.
    ///
    /// Every face is detected and aligned by the face pipeline (`sfam
    /// faces`; a crop without a detected face is used whole); the region
    /// masks come from each face's own landmarks. `--aligned` takes each
    /// image whole as a face already aligned to the template. Without
    /// `--model`, the bundled default model.
    Inspect(inspect::Args),
    /// Train SFAM heads on a backbone: the bundled faceres network (last
    /// blocks fine-tuned) or a CLIP model folder (frozen, or its last
    /// layers fine-tuned).
    ///
    /// Balanced sampling over dataset × label, augmentations (flip, colour,
    /// JPEG, blur, downscaling, black borders), self-blended fakes, the
    /// CIPLAB file-name codes as region targets; cross-entropy + patch
    /// alignment + router load balance. Every epoch: validation AUC and
    /// Cross-AUC, a checkpoint (a killed run resumes from it), `best/` (a
    /// model folder for `--model`) and `train_log.csv`.
    Train(train::Args),
    /// Score every image of the datasets under the roots with the SFAM
    /// model, into a score table for `sfam cross-auc`.
    ///
    /// Images are read, decoded and searched for faces in parallel while
    /// the model scores the previous batch. Every image is taken as a
    /// photo whose largest face is scored, or, when no face is detected,
    /// as a tight face crop used whole (flagged precropped in --details).
    /// Scores are cached per image content, model and preprocessing in
    /// FILE.cache/, so a rerun (after a crash, or on a grown dataset)
    /// scores only what is new. A file that cannot be scored is reported
    /// (log, summary, FILE.errors.csv) and the run goes on; the exit
    /// status is 0 whenever the run completed.
    Score(score::Args),
    /// Score every face in photos and folders of photos, without labels:
    /// an analyst's triage.
    ///
    /// The same engine as `sfam score` (faces detected and aligned in
    /// parallel, batches through the model, a score cache in FILE.cache/),
    /// but every image is just a photo: up to --max-faces faces each,
    /// largest first, every one a row of the table with its score, its
    /// verdict at --threshold, its box and the region whose part of the
    /// logit is largest in size (the JSON table has the model's full
    /// explanation). The summary lists the highest-scoring faces. A file
    /// that cannot be scored is reported (log, summary, FILE.errors.csv)
    /// and the run goes on.
    Scan(scan::Args),
    /// Training runs in brief, side by side: each run's best epoch with its
    /// validation AUC per dataset, and those averaged over its last epochs.
    ///
    /// RUN is a run folder (`sfam train --out DIR`; a model folder with
    /// its `train_log.csv`, like models/default, works too) or a
    /// `train_log.csv`. One epoch's AUC swings by a few hundredths from
    /// the next: the average of the last ten compares runs better than
    /// their best epochs do. The app's Train view shows the same table
    /// beside the runs' curves.
    Runs(runs::Args),
}

/// Output formats of the table-producing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// CSV (the matrix, for spreadsheets).
    Csv,
    /// One JSON object.
    Json,
}

/// Runs the command line; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => cli
            .model
            .as_deref()
            .map(|m| embed::resolve_model(m, true))
            .transpose()
            .and_then(|model| crate::app::run(cli.open, model, cli.compare))
            .map(|()| ExitCode::SUCCESS),
        Some(Command::CrossAuc(args)) => cross_auc::run(&args),
        Some(Command::Compare(args)) => compare::run(&args),
        Some(Command::Datasets(args)) => datasets::run(&args),
        Some(Command::Faces(args)) => faces::run(&args),
        Some(Command::Embed(args)) => embed::run(&args),
        Some(Command::Inspect(args)) => inspect::run(&args),
        Some(Command::Train(args)) => train::run(&args),
        Some(Command::Score(args)) => score::run(&args),
        Some(Command::Scan(args)) => scan::run(&args),
        Some(Command::Runs(args)) => runs::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: the library's
/// errors already say their cause in their own message (`cannot read
/// (reason): FILE`), which `{:#}` would repeat after it.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}

/// A Markdown-style table with this header (the table-producing commands').
fn new_table(header: Vec<String>) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::ASCII_MARKDOWN)
        .set_header(header);
    t
}

/// A dataset × dataset matrix as a table (rows: real faces of; columns:
/// fake faces of), each cell written by `cell`, numbers right-aligned.
fn matrix_table<C>(
    names: &[String],
    rows: &[Vec<C>],
    cell: impl Fn(&C) -> String,
) -> comfy_table::Table {
    let mut header = vec!["real \\ fake".to_owned()];
    header.extend(names.iter().cloned());
    let mut t = new_table(header);
    for (name, row) in names.iter().zip(rows) {
        let mut cells = vec![name.clone()];
        cells.extend(row.iter().map(&cell));
        t.add_row(cells);
    }
    align_numbers(&mut t, 1);
    t
}

/// Right-aligns the columns from `from` on (numbers).
fn align_numbers(t: &mut comfy_table::Table, from: usize) {
    for i in from..t.column_count() {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
}

/// Writes `text` to `out` atomically, or to stdout when `out` is `None`.
fn emit(text: &str, out: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(path) = out {
        return sfam_studio::data::atomic::write_atomic(path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()));
    }
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

/// The photos named on the command line: files as given (one that cannot
/// be read fails on its own later, named), folders expanded to their image
/// files (`data::datasets::find_images`: recursive, sorted, hidden and
/// non-image files passed over), each folder's problems printed as
/// warnings. A file named twice is kept once.
fn photos(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        let found = if input.is_dir() {
            let found = sfam_studio::data::datasets::find_images(std::slice::from_ref(input));
            for e in &found.errors {
                eprintln!("warning: {e}");
            }
            found.images
        } else {
            vec![input.clone()]
        };
        out.extend(found.into_iter().filter(|p| seen.insert(p.clone())));
    }
    out
}

/// A number with 4 decimals, or `-` when undefined.
fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"))
}

#[cfg(test)]
mod tests {
    use super::error_line;
    use anyhow::Context as _;

    /// A cause the error's own message states is not repeated; one it
    /// does not state (a context's cause) is appended once.
    #[test]
    fn error_lines_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(sfam_studio::model::ModelError::Io {
            path: "/m/config.json".into(),
            source: io,
        });
        assert_eq!(error_line(&e), "cannot read (no such file): /m/config.json");
        let e = Err::<(), _>(std::io::Error::other("disk full"))
            .context("cannot write /o/s.csv")
            .unwrap_err();
        assert_eq!(error_line(&e), "cannot write /o/s.csv: disk full");
    }
}
