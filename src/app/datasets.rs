//! The researchers' view: a score table (any detector's) or discovered
//! dataset folders -> per-dataset histograms and ROC curves, the Cross-AUC
//! matrix as a coloured grid (hover: counts; click: the two distributions
//! the cell contrasts and its ROC), threshold transfer, exports. Discovered
//! folders are scored with the model in the background ([`super::scoring`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Color32, RichText, Ui};
use egui_plot::{BarChart, Legend, Line, Plot, PlotPoints, VLine};
use sfam_studio::data::datasets::{DiscoverOptions, Discovery, discover};
use sfam_studio::data::scores::{ScoreRecord, read_scores};
use sfam_studio::metrics::{
    AucInterval, Evaluation, EvaluationOptions, PairedDifference, PairedTables, RocCurve,
    ThresholdRule, TransferCell, VideoAgg, paired_cells, paired_cross_auc_difference, rates_at,
    roc_curve, transfer_table,
};

use super::jobs::{Ctx, Job};
use super::plots::{Histogram, auc_color, score_range};
use super::scoring::{ScoreOutcome, ScoredRun, default_cache_root, errors_message, score_datasets};

/// Most points drawn per ROC curve (the curve is monotone: evenly spaced
/// points keep its shape).
const ROC_POINTS: usize = 2000;

/// Coverage of the AUC intervals the view shows.
const CI_LEVEL: f64 = 0.95;

/// Seed of the bootstrap: `sfam cross-auc --bootstrap N` (seed 0 by
/// default) gives the same per-dataset intervals for the same N.
const CI_SEED: u64 = 0;

/// Most bootstrap resamples per interval.
const CI_MAX_RESAMPLES: usize = 1000;

/// Fewest bootstrap resamples per interval, however large the table.
const CI_MIN_RESAMPLES: usize = 100;

/// Scores drawn in all for the intervals of one evaluation (each resample
/// of a cell draws as many scores as the cell holds): keeps a table of a
/// million scores to about a second of work on the worker.
const CI_DRAW_BUDGET: usize = 200_000_000;

/// An evaluation with everything the plots need, computed off the UI thread.
pub struct Loaded {
    /// Where the scores came from: the score table, or the datasets and
    /// the model that scored them.
    pub source: String,
    /// The evaluation.
    pub eval: Evaluation,
    /// Shared score range of the histograms.
    pub range: (f64, f64),
    /// Per dataset: real and fake histograms.
    pub hists: Vec<(Histogram, Histogram)>,
    /// Per dataset: its ROC curve (display points), if defined.
    pub rocs: Vec<Option<Vec<[f64; 2]>>>,
    /// The score table itself (a comparison pairs it with another).
    pub records: Arc<Vec<ScoreRecord>>,
}

/// Another detector's score table compared with the loaded one on the
/// faces both scored: every cell's AUC difference (second − first) with a
/// paired bootstrap interval ([`paired_cells`]).
pub struct Comparison {
    /// Where the second table came from.
    pub second: String,
    /// Faces in both tables.
    pub paired: usize,
    /// Rows of the loaded table the second lacks.
    pub only_first: usize,
    /// Rows of the second table the loaded one lacks.
    pub only_second: usize,
    /// Dataset names, in the order of the loaded table.
    pub datasets: Vec<String>,
    /// Rows: reals of; columns: fakes of; `None` where undefined.
    pub cells: Vec<Vec<Option<PairedDifference>>>,
    /// The Cross-AUC's difference, if an off-diagonal cell is defined.
    pub cross_auc: Option<PairedDifference>,
}

/// Reads `path` and compares it with `first` (on a worker thread).
///
/// # Errors
/// A message naming the file when it cannot be read or paired.
pub fn compare_tables(
    first: &[ScoreRecord],
    path: &Path,
    ctx: &Ctx<Result<Comparison, String>>,
) -> Result<Comparison, String> {
    let second = read_on_worker(path, ctx)?;
    let paired = PairedTables::pair(first, &second)
        .map_err(|e| format!("cannot compare with {}: {e}", path.display()))?;
    ctx.progress(0.5, "bootstrapping every cell's difference".to_owned());
    let n = paired.len();
    // Both detectors' scores of every face, in every column of cells.
    let resamples = resamples_within_budget(2 * n * paired.datasets.len());
    let cells = paired_cells(&paired, resamples, CI_LEVEL, CI_SEED);
    let cross_auc = paired_cross_auc_difference(&paired, resamples, CI_LEVEL, CI_SEED)
        .map_err(|e| format!("cannot compare with {}: {e}", path.display()))?;
    Ok(Comparison {
        second: path.display().to_string(),
        paired: n,
        only_first: paired.only_first,
        only_second: paired.only_second,
        datasets: paired.datasets,
        cells,
        cross_auc,
    })
}

/// How many bootstrap resamples the intervals of a table get: as many as
/// [`CI_DRAW_BUDGET`] allows over all cells, within
/// [`CI_MIN_RESAMPLES`]..=[`CI_MAX_RESAMPLES`].
fn ci_resamples(records: &[ScoreRecord]) -> usize {
    let datasets: std::collections::HashSet<&str> =
        records.iter().map(|r| r.dataset.as_str()).collect();
    resamples_within_budget(records.len() * datasets.len())
}

/// Resamples for intervals that draw `draws` scores per resample in all.
fn resamples_within_budget(draws: usize) -> usize {
    (CI_DRAW_BUDGET / draws.max(1)).clamp(CI_MIN_RESAMPLES, CI_MAX_RESAMPLES)
}

/// The result of a job that may fail, once it has finished (the job is
/// then dropped): its value, or `None` with its error in `errors` (a
/// cancel says nothing).
fn finished<T: Send + 'static>(
    job: &mut Option<Job<Result<T, String>>>,
    what: &str,
    errors: &mut Vec<String>,
) -> Option<T> {
    let result = job.as_mut()?.poll()?;
    *job = None;
    match result {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            if e != "cancelled" {
                errors.push(e);
            }
            None
        }
        Err(()) => {
            errors.push(format!("the {what} worker stopped unexpectedly"));
            None
        }
    }
}

/// A running job's row, whose button cancels it.
fn job_row<T: Send + 'static>(ui: &mut Ui, job: &Job<T>, cancel: &str) {
    if job.progress_row(ui, cancel, 100.0) {
        job.cancel();
    }
}

/// The header row of a matrix grid: the corner, then the columns' names.
fn matrix_header(ui: &mut Ui, names: &[String]) {
    ui.label("real \\ fake");
    for name in names {
        ui.strong(name);
    }
    ui.end_row();
}

/// A difference's colour: green when its interval is above 0, red when
/// below, grey when it holds 0.
fn difference_color(d: &PairedDifference) -> Color32 {
    if d.low > 0.0 {
        Color32::from_rgb(110, 190, 120)
    } else if d.high < 0.0 {
        Color32::from_rgb(215, 110, 100)
    } else {
        Color32::from_gray(170)
    }
}

/// The interval of cell (`real`, `fake`), if it has one.
fn cell_ci(eval: &Evaluation, real: usize, fake: usize) -> Option<&AucInterval> {
    eval.cross_auc_ci.get(real)?.get(fake)?.as_ref()
}

/// An interval as `low–high`, or `-`.
fn fmt_ci(ci: Option<&AucInterval>) -> String {
    ci.map_or_else(|| "-".to_owned(), |c| format!("{:.3}–{:.3}", c.low, c.high))
}

/// Thins a ROC curve to at most [`ROC_POINTS`] points, keeping both ends.
fn roc_points(roc: &RocCurve) -> Vec<[f64; 2]> {
    let n = roc.fpr.len();
    let step = n.div_ceil(ROC_POINTS).max(1);
    let mut pts: Vec<[f64; 2]> = (0..n)
        .step_by(step)
        .map(|k| [roc.fpr[k], roc.tpr[k]])
        .collect();
    if !(n - 1).is_multiple_of(step) {
        pts.push([roc.fpr[n - 1], roc.tpr[n - 1]]);
    }
    pts
}

/// Reads a score table on a job's worker, saying so in its progress; a
/// cancel that came meanwhile is the error `cancelled`.
fn read_on_worker<T>(path: &Path, ctx: &Ctx<T>) -> Result<Vec<ScoreRecord>, String> {
    ctx.progress(0.1, format!("reading {}", path.display()));
    let records = read_scores(path).map_err(|e| e.to_string())?;
    if ctx.cancelled() {
        return Err("cancelled".into());
    }
    Ok(records)
}

/// Reads and evaluates a score table (runs on a worker thread).
///
/// # Errors
/// A message naming the file when it cannot be read or evaluated.
pub fn load_scores(
    path: &Path,
    video_agg: Option<VideoAgg>,
    ctx: &Ctx<Result<Loaded, String>>,
) -> Result<Loaded, String> {
    let records = read_on_worker(path, ctx)?;
    ctx.progress(0.5, format!("evaluating {} scores", records.len()));
    evaluate(Arc::new(records), path.display().to_string(), video_agg)
}

/// Evaluates a score table and prepares its plots (on a worker thread).
/// `source` says where the scores came from.
///
/// # Errors
/// A message naming `source` when the table cannot be evaluated.
pub fn evaluate(
    records: Arc<Vec<ScoreRecord>>,
    source: String,
    video_agg: Option<VideoAgg>,
) -> Result<Loaded, String> {
    let options = EvaluationOptions {
        video_agg,
        calibration_bins: Some(10),
        bootstrap: Some((ci_resamples(&records), CI_LEVEL, CI_SEED)),
        ..EvaluationOptions::default()
    };
    let eval = Evaluation::from_records(&records, &options)
        .map_err(|e| format!("cannot evaluate {source}: {e}"))?;
    let range = score_range(eval.domains.iter().flat_map(|d| [&d.real, &d.fake]));
    let hists = eval
        .domains
        .iter()
        .map(|d| {
            (
                Histogram::new(&d.real, range.0, range.1),
                Histogram::new(&d.fake, range.0, range.1),
            )
        })
        .collect();
    let rocs = eval
        .domains
        .iter()
        .map(|d| {
            roc_curve(&d.real, &d.fake, true)
                .ok()
                .map(|r| roc_points(&r))
        })
        .collect();
    Ok(Loaded {
        source,
        eval,
        range,
        hists,
        rocs,
        records,
    })
}

/// The selected matrix cell, with its plots.
pub struct CellDetail {
    /// Row: the dataset of the real faces.
    pub real: usize,
    /// Column: the dataset of the fake faces.
    pub fake: usize,
    /// Histograms of the two sides.
    pub hists: (Histogram, Histogram),
    /// The cell's ROC, if defined.
    pub roc: Option<Vec<[f64; 2]>>,
}

/// How the transfer table chooses its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RuleChoice {
    /// At each source's EER.
    Eer,
    /// At a target false-positive rate on the source's reals.
    Fpr(f64),
}

impl RuleChoice {
    fn rule(self) -> ThresholdRule {
        match self {
            Self::Eer => ThresholdRule::Eer,
            Self::Fpr(x) => ThresholdRule::Fpr(x),
        }
    }
}

/// What the view asks the app to do (the app owns dialogs and exports).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Pick a score file with a dialog.
    OpenScoresDialog,
    /// Pick a dataset folder with a dialog.
    AddRootDialog,
    /// Save the matrix (CSV or JSON by the chosen extension).
    ExportMatrix,
    /// Save a PNG of the plots on screen.
    ExportPlotsPng,
    /// Score the discovered datasets with the model in use.
    ScoreDatasets,
    /// Save the last scoring run's score table (CSV or JSON).
    SaveScoresDialog,
    /// Pick another detector's score table to compare with the loaded one.
    CompareDialog,
    /// Add the bundled sample faces as datasets and score them.
    ScoreSamples,
}

/// The model the view scores with: its folder, and whether it is the
/// bundled one (else the user's choice).
#[derive(Debug, Clone, Copy)]
pub struct ModelInUse<'a> {
    /// The model folder.
    pub dir: &'a Path,
    /// The bundled model (not one the user chose).
    pub bundled: bool,
}

/// State of the datasets view.
pub struct DatasetsView {
    /// The loaded evaluation.
    pub loaded: Option<Arc<Loaded>>,
    /// The selected cell.
    pub detail: Option<CellDetail>,
    /// Dataset roots added by the user.
    pub roots: Vec<PathBuf>,
    /// The bundled sample faces' manifest, if found (tests may change it).
    pub samples: Option<PathBuf>,
    /// Score the datasets with the model in use as soon as the running
    /// discovery finds them (the sample faces' one click).
    pub score_when_found: bool,
    /// What discovery found under them.
    pub discovery: Option<Arc<Discovery>>,
    /// Transfer rule in use, and its table.
    pub rule: RuleChoice,
    transfer: Option<(RuleChoice, Vec<TransferCell>)>,
    /// Where the plots were drawn last frame (for PNG export).
    pub plots_rect: Option<egui::Rect>,
    /// A running score-table load.
    pub load_job: Option<Job<Result<Loaded, String>>>,
    /// A running discovery.
    pub discover_job: Option<Job<Discovery>>,
    /// A running scoring of the discovered datasets.
    pub score_job: Option<Job<ScoreOutcome>>,
    /// The last finished scoring run (its table can be saved).
    pub scored: Option<ScoredRun>,
    /// What the last scoring run that did not finish said (cancelled,
    /// failed).
    pub score_note: Option<String>,
    /// Where scores are cached (see [`default_cache_root`]).
    pub cache_root: PathBuf,
    /// The loaded table compared with another one, if asked.
    pub comparison: Option<Comparison>,
    /// A running comparison.
    pub compare_job: Option<Job<Result<Comparison, String>>>,
    /// A table to compare with the next score table that loads (`sfam
    /// --open A.csv --compare B.csv`).
    pub compare_after_load: Option<PathBuf>,
}

impl Default for DatasetsView {
    fn default() -> Self {
        Self {
            loaded: None,
            detail: None,
            roots: Vec::new(),
            samples: super::inspect::bundled_samples(),
            score_when_found: false,
            discovery: None,
            rule: RuleChoice::Eer,
            transfer: None,
            plots_rect: None,
            load_job: None,
            discover_job: None,
            score_job: None,
            scored: None,
            score_note: None,
            cache_root: default_cache_root(),
            comparison: None,
            compare_job: None,
            compare_after_load: None,
        }
    }
}

impl DatasetsView {
    /// Starts loading a score table in the background (replacing a
    /// running load).
    pub fn open_scores(
        &mut self,
        path: PathBuf,
        video_agg: Option<VideoAgg>,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        if let Some(job) = &self.load_job {
            job.cancel();
        }
        let title = format!("loading {}", path.display());
        self.load_job = Some(Job::spawn("score-table", title, repaint, move |ctx| {
            load_scores(&path, video_agg, ctx)
        })?);
        Ok(())
    }

    /// Starts comparing the loaded table with the score table at `path` in
    /// the background (replacing a running comparison).
    ///
    /// # Errors
    /// No table is loaded, or the worker cannot start.
    pub fn compare_with(
        &mut self,
        path: PathBuf,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        let Some(loaded) = &self.loaded else {
            return Err("load a score table first, then compare another with it".into());
        };
        if let Some(job) = &self.compare_job {
            job.cancel();
        }
        let first = Arc::clone(&loaded.records);
        let title = format!("comparing with {}", path.display());
        self.compare_job = Some(Job::spawn("compare", title, repaint, move |ctx| {
            compare_tables(&first, &path, ctx)
        })?);
        Ok(())
    }

    /// Starts discovering datasets under the roots in the background.
    pub fn add_root(
        &mut self,
        root: PathBuf,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        let roots = self.roots.clone();
        self.discover_job = Some(Job::spawn(
            "discover",
            "finding datasets",
            repaint,
            move |_| discover(&roots, &DiscoverOptions::default()),
        )?);
        Ok(())
    }

    /// Starts scoring the discovered datasets with the model folder
    /// `model` in the background (model loading included); a running
    /// scoring is cancelled first.
    pub fn start_scoring(
        &mut self,
        model: PathBuf,
        video_agg: Option<VideoAgg>,
        skip_trained: bool,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        let Some(found) = self.discovery.clone() else {
            return Err("no dataset folders to score; add one first".into());
        };
        if let Some(job) = &self.score_job {
            job.cancel();
        }
        self.score_note = None;
        let cache_root = self.cache_root.clone();
        let title = format!("scoring with {}", model.display());
        self.score_job = Some(Job::spawn("score-datasets", title, repaint, move |ctx| {
            score_datasets(&found, &model, &cache_root, video_agg, skip_trained, ctx)
        })?);
        Ok(())
    }

    /// Drains the jobs; returns errors to show (once). `repaint` wakes the
    /// UI for a comparison that starts when a load finishes.
    pub fn poll(&mut self, repaint: Option<egui::Context>) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(loaded) = finished(&mut self.load_job, "score-table", &mut errors) {
            self.loaded = Some(Arc::new(loaded));
            self.detail = None;
            self.transfer = None;
            self.comparison = None;
            if let Some(path) = self.compare_after_load.take()
                && let Err(e) = self.compare_with(path, repaint)
            {
                errors.push(e);
            }
        }
        if let Some(c) = finished(&mut self.compare_job, "comparison", &mut errors) {
            self.comparison = Some(c);
        }
        if let Some(job) = &mut self.discover_job {
            match job.poll() {
                None => {}
                Some(Ok(found)) => {
                    errors.extend(found.errors.iter().map(ToString::to_string));
                    self.discovery = Some(Arc::new(found));
                    self.discover_job = None;
                }
                Some(Err(())) => {
                    errors.push("the discovery worker stopped unexpectedly".into());
                    self.discover_job = None;
                }
            }
        }
        if let Some(job) = &mut self.score_job {
            match job.poll() {
                None => {}
                Some(Ok(ScoreOutcome::Done(loaded, run))) => {
                    errors.extend(errors_message(&run));
                    self.loaded = Some(Arc::new(*loaded));
                    self.detail = None;
                    self.transfer = None;
                    self.scored = Some(run);
                    self.score_job = None;
                }
                Some(Ok(ScoreOutcome::Cancelled(p))) => {
                    self.score_note = Some(format!(
                        "Scoring cancelled after {} of {} images; the {} scored are cached, \
                         so scoring again resumes there.",
                        p.done,
                        p.total,
                        p.done - p.failed
                    ));
                    self.score_job = None;
                }
                Some(Ok(ScoreOutcome::Failed(e))) => {
                    self.score_note = Some("Scoring failed (see the error below).".into());
                    errors.push(e);
                    self.score_job = None;
                }
                Some(Err(())) => {
                    errors.push("the scoring worker stopped unexpectedly".into());
                    self.score_job = None;
                }
            }
        }
        errors
    }

    /// Selects a matrix cell and computes its plots.
    pub fn select_cell(&mut self, real: usize, fake: usize) {
        let Some(l) = &self.loaded else { return };
        let (Some(r), Some(f)) = (l.eval.domains.get(real), l.eval.domains.get(fake)) else {
            return;
        };
        self.detail = Some(CellDetail {
            real,
            fake,
            hists: (
                Histogram::new(&r.real, l.range.0, l.range.1),
                Histogram::new(&f.fake, l.range.0, l.range.1),
            ),
            roc: roc_curve(&r.real, &f.fake, true)
                .ok()
                .map(|c| roc_points(&c)),
        });
    }

    fn transfer_cells(&mut self) -> Option<&[TransferCell]> {
        let l = self.loaded.as_ref()?;
        if self.transfer.as_ref().is_none_or(|(r, _)| *r != self.rule) {
            self.transfer = Some((self.rule, transfer_table(&l.eval.domains, self.rule.rule())));
        }
        self.transfer.as_ref().map(|(_, t)| t.as_slice())
    }

    /// Draws the view; returns what the user asked for.
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        threshold: &mut f64,
        skip_trained: &mut bool,
        model: Option<ModelInUse<'_>>,
    ) -> Vec<Request> {
        let mut requests = Vec::new();
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open score file...").clicked() {
                requests.push(Request::OpenScoresDialog);
            }
            if ui.button("Add dataset folder...").clicked() {
                requests.push(Request::AddRootDialog);
            }
            let has = self.loaded.is_some();
            if ui
                .add_enabled(has, egui::Button::new("Export matrix..."))
                .clicked()
            {
                requests.push(Request::ExportMatrix);
            }
            if ui
                .add_enabled(has, egui::Button::new("Export plots (PNG)..."))
                .clicked()
            {
                requests.push(Request::ExportPlotsPng);
            }
            if ui
                .add_enabled(has, egui::Button::new("Compare with..."))
                .on_hover_text("another detector's score table on the same files, paired by path: every cell's AUC difference with a paired 95% bootstrap interval")
                .clicked()
            {
                requests.push(Request::CompareDialog);
            }
            ui.label(RichText::new("or drop a .csv/.json score file or a folder here").weak());
        });
        if let Some(job) = &self.load_job {
            job_row(ui, job, "Cancel");
        }
        if let Some(job) = &self.compare_job {
            job_row(ui, job, "Cancel");
        }
        self.discovery_ui(ui, model, skip_trained, &mut requests);
        ui.separator();
        let Some(loaded) = self.loaded.clone() else {
            ui.label("No scores yet. Open a score table (CSV `path,dataset,label,score[,video]` or JSON) written by `sfam score` or by any other detector.");
            if self.samples.is_some() && self.roots.is_empty() {
                ui.horizontal_wrapped(|ui| {
                    if ui
                        .add_enabled(
                            model.is_some() && self.score_job.is_none(),
                            egui::Button::new("Score the sample faces"),
                        )
                        .on_hover_text(
                            "the 20 photos bundled in assets/samples, as three small datasets \
                             (CIPLAB, DFDC, FFHQ / StyleGAN2; their labels in samples.csv), \
                             scored with the model in use",
                        )
                        .clicked()
                    {
                        requests.push(Request::ScoreSamples);
                    }
                    ui.label(
                        RichText::new(
                            "a first look, not a measurement: 3 or 4 faces per class, and most \
                             of them trained the bundled model (samples.csv says which)",
                        )
                        .weak(),
                    );
                });
            }
            return requests;
        };
        egui::ScrollArea::vertical().show(ui, |ui| {
            self.comparison_ui(ui);
            self.loaded_ui(ui, &loaded, threshold);
        });
        requests
    }

    /// The comparison with another table, if there is one: a grid of
    /// differences, coloured where the interval excludes 0.
    fn comparison_ui(&mut self, ui: &mut Ui) {
        let Some(c) = &self.comparison else { return };
        let mut close = false;
        ui.horizontal_wrapped(|ui| {
            ui.strong(format!(
                "Compared with {}: its AUC minus this table's, on the {} faces both scored",
                c.second, c.paired
            ));
            ui.label(format!(
                "({} only in this table, {} only in that one)",
                c.only_first, c.only_second
            ));
            close = ui.button("Close comparison").clicked();
        });
        ui.label(
            RichText::new(
                "green: that table is better beyond the faces' sampling (95% paired bootstrap interval above 0); red: worse; grey: the interval holds 0. Hover a cell for both AUCs.",
            )
            .weak(),
        );
        if let Some(d) = &c.cross_auc {
            ui.label(
                RichText::new(format!(
                    "Cross-AUC (mean off-diagonal): {:.4} here, {:.4} there: {:+.4} (95% paired interval {:+.4} .. {:+.4})",
                    d.auc_first, d.auc_second, d.difference, d.low, d.high
                ))
                .color(difference_color(d)),
            );
        }
        egui::Grid::new("comparison").show(ui, |ui| {
            matrix_header(ui, &c.datasets);
            for (i, row) in c.cells.iter().enumerate() {
                ui.strong(&c.datasets[i]);
                for cell in row {
                    let (text, fill, hover) = match cell {
                        Some(d) => (
                            format!("{:+.3}", d.difference),
                            difference_color(d),
                            format!(
                                "AUC {:.4} here, {:.4} there: {:+.4}\n95% paired interval {:+.4} .. {:+.4} ({} resamples)\nthat table not better in {:.1}% of resamples",
                                d.auc_first,
                                d.auc_second,
                                d.difference,
                                d.low,
                                d.high,
                                d.resamples,
                                100.0 * d.share_not_better
                            ),
                        ),
                        None => (
                            "n/a".to_owned(),
                            Color32::from_gray(90),
                            "undefined: a class is empty among the shared faces".to_owned(),
                        ),
                    };
                    ui.add(
                        egui::Button::new(RichText::new(text).color(Color32::BLACK).monospace())
                            .fill(fill)
                            .min_size(egui::vec2(64.0, 24.0)),
                    )
                    .on_hover_text(hover);
                }
                ui.end_row();
            }
        });
        ui.separator();
        if close {
            self.comparison = None;
        }
    }

    fn discovery_ui(
        &self,
        ui: &mut Ui,
        model: Option<ModelInUse<'_>>,
        skip_trained: &mut bool,
        requests: &mut Vec<Request>,
    ) {
        if self.discover_job.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("finding datasets...");
            });
        }
        let Some(found) = &self.discovery else { return };
        ui.collapsing(
            format!("Dataset folders ({} datasets)", found.datasets.len()),
            |ui| {
                egui::Grid::new("discovered").striped(true).show(ui, |ui| {
                    for h in ["dataset", "real", "fake", "source"] {
                        ui.strong(h);
                    }
                    ui.end_row();
                    for d in &found.datasets {
                        use sfam_studio::data::Label;
                        ui.label(&d.name);
                        ui.label(d.count(Label::Real).to_string());
                        ui.label(d.count(Label::Fake).to_string());
                        ui.label(d.source.display().to_string());
                        ui.end_row();
                    }
                });
                if !found.skipped.is_empty() {
                    ui.label(format!("{} non-image files skipped", found.skipped.len()));
                }
            },
        );
        self.scoring_ui(ui, model, skip_trained, requests);
    }

    /// The "Score with model" row, the running job's progress and the last
    /// run's summary.
    fn scoring_ui(
        &self,
        ui: &mut Ui,
        model: Option<ModelInUse<'_>>,
        skip_trained: &mut bool,
        requests: &mut Vec<Request>,
    ) {
        let busy = self.score_job.is_some() || self.discover_job.is_some();
        ui.horizontal_wrapped(|ui| {
            if ui
                .add_enabled(model.is_some() && !busy, egui::Button::new("Score with model"))
                .on_hover_text("score every image of the datasets above with the SFAM model (cached scores are reused)")
                .clicked()
            {
                requests.push(Request::ScoreDatasets);
            }
            ui.checkbox(skip_trained, "leave out the model's training images")
                .on_hover_text(
                    "images whose bytes are in the model folder's training_images.txt are \
                     not scored, so that the evaluation is a test of the model \
                     (sfam score --skip-training-images)",
                );
            match model {
                Some(m) => ui.label(format!(
                    "model: {} ({})",
                    m.dir.display(),
                    if m.bundled { "bundled" } else { "chosen in Inspect" }
                )),
                None => ui.label(
                    RichText::new("No model: choose a model folder in the Inspect view.").weak(),
                ),
            };
            if ui
                .add_enabled(self.scored.is_some(), egui::Button::new("Save scores..."))
                .clicked()
            {
                requests.push(Request::SaveScoresDialog);
            }
        });
        if let Some(job) = &self.score_job {
            job_row(ui, job, "Cancel scoring");
        } else if let Some(note) = &self.score_note {
            ui.label(note);
        } else if let Some(run) = &self.scored {
            let p = &run.progress;
            ui.label(format!(
                "Scored {} of {} images: {} computed, {} from cache, {} failed; {:.1} faces/s.",
                run.records.len(),
                p.total,
                p.computed,
                p.cached,
                p.failed,
                p.faces_per_sec()
            ));
            if run.cache_write_failures > 0 {
                ui.label(format!(
                    "{} scores could not be written to the cache (they will be computed again next time).",
                    run.cache_write_failures
                ));
            }
            match run.left_out {
                Some(0) | None => {}
                Some(n) => {
                    ui.label(format!("{n} training images of the model left out."));
                }
            }
            if run.left_out.is_none() && *skip_trained {
                ui.label(
                    RichText::new(
                        "(This model does not list its training images: none could be left out.)",
                    )
                    .weak(),
                );
            }
            if p.trained_on > 0 {
                let per: Vec<String> = run
                    .trained_by_dataset
                    .iter()
                    .map(|(d, n)| format!("{d} {n}"))
                    .collect();
                ui.colored_label(
                    ui.visuals().warn_fg_color,
                    format!(
                        "{} of these images trained this model (the same bytes are in its \
                         training_images.txt): their scores are no test of it ({}).",
                        p.trained_on,
                        per.join(", ")
                    ),
                );
            }
            super::model_note_label(ui, &run.model_note);
        }
        let cache = self
            .scored
            .as_ref()
            .map_or_else(|| self.cache_root.clone(), |r| r.cache_dir.clone());
        ui.label(RichText::new(format!("score cache: {}", cache.display())).weak());
    }

    #[allow(clippy::too_many_lines)] // one linear page of plots
    fn loaded_ui(&mut self, ui: &mut Ui, l: &Loaded, threshold: &mut f64) {
        let c = &l.eval.cross_auc;
        ui.heading(format!(
            "{} - {} datasets, {} scores",
            l.source,
            c.datasets.len(),
            l.eval.n_records
        ));
        ui.horizontal(|ui| {
            let (lo, hi) = l.range;
            ui.add(
                egui::Slider::new(threshold, lo..=hi)
                    .max_decimals(4)
                    .text("threshold (score >= threshold: fake)"),
            );
        });

        let top = ui.min_rect().bottom();
        ui.columns(2, |cols| {
            cols[0].strong("Cross-AUC (rows: real faces of; columns: fake faces of)");
            self.matrix_ui(&mut cols[0], l);
            let s = &c.summary;
            cols[0].label(format!(
                "mean off-diagonal {}   mean diagonal {}   gap {}",
                fmt(s.mean_off_diagonal),
                fmt(s.mean_diagonal),
                fmt(s.gap)
            ));
            if let Some(w) = &s.worst {
                cols[0].label(format!(
                    "worst cell {:.4}: real faces of {}, fake faces of {}",
                    w.auc, c.datasets[w.real], c.datasets[w.fake]
                ));
            }
            cols[1].strong("ROC curves (each dataset: its reals against its fakes)");
            Plot::new("roc_all")
                .legend(Legend::default())
                .height(260.0)
                .view_aspect(1.3)
                .default_x_bounds(-0.02, 1.02)
                .default_y_bounds(-0.02, 1.02)
                .x_axis_label("false-positive rate")
                .y_axis_label("true-positive rate")
                .show(&mut cols[1], |p| {
                    for (d, roc) in c.datasets.iter().zip(&l.rocs) {
                        if let Some(pts) = roc {
                            p.line(roc_line(d.clone(), pts));
                        }
                    }
                });
        });

        if let Some(d) = &self.detail {
            ui.separator();
            let (r, f) = (&c.datasets[d.real], &c.datasets[d.fake]);
            let ci = cell_ci(&l.eval, d.real, d.fake);
            ui.strong(format!(
                "Cell [{r}][{f}]: real faces of {r} against fake faces of {f} - AUC {}{}",
                fmt(c.matrix[d.real][d.fake].value()),
                ci.map_or_else(String::new, |c| format!(
                    " ({:.0}% CI {}, {} bootstrap resamples)",
                    c.level * 100.0,
                    fmt_ci(Some(c)),
                    c.resamples
                ))
            ));
            ui.columns(2, |cols| {
                hist_plot(
                    &mut cols[0],
                    "cell_hist",
                    &format!("real · {r}"),
                    &format!("fake · {f}"),
                    &d.hists,
                    *threshold,
                );
                Plot::new("cell_roc")
                    .height(200.0)
                    .default_x_bounds(-0.02, 1.02)
                    .default_y_bounds(-0.02, 1.02)
                    .x_axis_label("false-positive rate")
                    .y_axis_label("true-positive rate")
                    .show(&mut cols[1], |p| {
                        if let Some(pts) = &d.roc {
                            p.line(roc_line("ROC".into(), pts));
                        }
                    });
            });
        }

        ui.separator();
        ui.strong("Per dataset: score histograms (fraction of each class), real and fake overlaid");
        let n = c.datasets.len();
        egui::Grid::new("per_dataset").striped(true).show(ui, |ui| {
            for h in [
                "dataset",
                "real",
                "fake",
                "AUC",
                "AUC 95% CI",
                "EER",
                "AP",
                "ECE",
                "TPR @ thr",
                "FPR @ thr",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (k, d) in l.eval.per_dataset.iter().enumerate() {
                let dom = &l.eval.domains[k];
                let rates = rates_at(*threshold, &dom.real, &dom.fake);
                ui.label(&d.name);
                ui.label(d.n_real.to_string());
                ui.label(d.n_fake.to_string());
                ui.label(fmt(d.auc));
                let ci = d.auc_ci.as_ref();
                ui.label(fmt_ci(ci)).on_hover_text(ci.map_or_else(
                    || "undefined: a class is empty".to_owned(),
                    |c| format!(
                        "percentile bootstrap, reals and fakes resampled apart, {} resamples, seed {} (`sfam cross-auc --bootstrap {}` gives the same)",
                        c.resamples, c.seed, c.resamples
                    ),
                ));
                ui.label(fmt(d.eer.map(|e| e.eer)));
                ui.label(fmt(d.ap));
                ui.label(fmt(d.calibration.as_ref().map(|x| x.ece)));
                ui.label(fmt(rates.tpr));
                ui.label(fmt(rates.fpr));
                ui.end_row();
            }
        });
        let per_row = 3;
        for chunk in (0..n).collect::<Vec<_>>().chunks(per_row) {
            ui.columns(per_row, |cols| {
                for (col, &k) in cols.iter_mut().zip(chunk) {
                    col.label(&c.datasets[k]);
                    hist_plot(
                        col,
                        &format!("hist_{k}"),
                        "real",
                        "fake",
                        &l.hists[k],
                        *threshold,
                    );
                }
            });
        }

        ui.separator();
        ui.horizontal(|ui| {
            ui.strong("Threshold transfer");
            ui.radio_value(&mut self.rule, RuleChoice::Eer, "at the source's EER");
            let mut fpr = match self.rule {
                RuleChoice::Fpr(x) => x,
                RuleChoice::Eer => 0.05,
            };
            let fpr_on = matches!(self.rule, RuleChoice::Fpr(_));
            if ui.radio(fpr_on, "at a target FPR on the source").clicked() {
                self.rule = RuleChoice::Fpr(fpr);
            }
            if fpr_on
                && ui
                    .add(
                        egui::Slider::new(&mut fpr, 0.0..=0.5)
                            .max_decimals(3)
                            .text("target FPR"),
                    )
                    .changed()
            {
                self.rule = RuleChoice::Fpr(fpr);
            }
        });
        let names = c.datasets.clone();
        if let Some(cells) = self.transfer_cells() {
            egui::Grid::new("transfer").striped(true).show(ui, |ui| {
                for h in [
                    "source -> target",
                    "threshold",
                    "TPR",
                    "FPR",
                    "accuracy",
                    "balanced acc.",
                ] {
                    ui.strong(h);
                }
                ui.end_row();
                for t in cells {
                    ui.label(format!("{} -> {}", names[t.source], names[t.target]));
                    match &t.transfer {
                        Some(x) => {
                            ui.label(format!("{:.4}", x.target.threshold));
                            ui.label(fmt(x.target.tpr));
                            ui.label(fmt(x.target.fpr));
                            ui.label(fmt(x.target.accuracy));
                            ui.label(fmt(x.target.balanced_accuracy));
                        }
                        None => {
                            ui.label(t.undefined.clone().unwrap_or_default());
                        }
                    }
                    ui.end_row();
                }
            });
        }
        let bottom = ui.min_rect().bottom();
        self.plots_rect = Some(egui::Rect::from_x_y_ranges(
            ui.min_rect().x_range(),
            top..=bottom,
        ));
    }

    fn matrix_ui(&mut self, ui: &mut Ui, l: &Loaded) {
        let c = &l.eval.cross_auc;
        let mut clicked = None;
        egui::Grid::new("cross_auc_grid").spacing([2.0, 2.0]).show(ui, |ui| {
            matrix_header(ui, &c.datasets);
            for (i, row) in c.matrix.iter().enumerate() {
                ui.strong(&c.datasets[i]);
                for (j, cell) in row.iter().enumerate() {
                    let (text, fill) = match cell.value() {
                        Some(v) => (format!("{v:.3}"), auc_color(v)),
                        None => ("n/a".to_owned(), Color32::from_gray(90)),
                    };
                    let selected = self.detail.as_ref().is_some_and(|d| (d.real, d.fake) == (i, j));
                    let button = egui::Button::new(RichText::new(text).color(Color32::BLACK).monospace())
                        .fill(fill)
                        .selected(selected)
                        .min_size(egui::vec2(56.0, 24.0));
                    let dom = (&l.eval.domains[i], &l.eval.domains[j]);
                    let hover = match c.undefined_reason(i, j) {
                        Some(reason) => format!("undefined: {reason}"),
                        None => format!(
                            "{} real faces of {} against {} fake faces of {}\n95% CI of the AUC {}\nclick: their score distributions and ROC",
                            dom.0.real.len(),
                            c.datasets[i],
                            dom.1.fake.len(),
                            c.datasets[j],
                            fmt_ci(cell_ci(&l.eval, i, j)),
                        ),
                    };
                    if ui.add(button).on_hover_text(hover).clicked() {
                        clicked = Some((i, j));
                    }
                }
                ui.end_row();
            }
        });
        if let Some((i, j)) = clicked {
            self.select_cell(i, j);
        }
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"))
}

/// An ROC curve as the exact staircase of its points: `egui_plot` would
/// otherwise draw points that share a pixel column as a filled band, which
/// turns the vertical steps of a small dataset's curve into a thick smear.
fn roc_line(name: String, pts: &[[f64; 2]]) -> Line<'static> {
    Line::new(name, PlotPoints::from(pts.to_vec())).allow_band(false)
}

/// Headroom above the tallest bar of a histogram plot, as a share of its
/// height: the legend sits in the top right corner, where the fakes' bars
/// of a good detector stand.
const HIST_HEADROOM: f64 = 0.8;

fn hist_plot(
    ui: &mut Ui,
    id: &str,
    real_name: &str,
    fake_name: &str,
    h: &(Histogram, Histogram),
    threshold: f64,
) {
    let tallest = h.0.tallest().max(h.1.tallest());
    Plot::new(id.to_owned())
        .legend(Legend::default())
        .height(160.0)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(tallest * (1.0 + HIST_HEADROOM))
        .show(ui, |p| {
            p.bar_chart(
                BarChart::new(real_name, h.0.bars(-0.25)).color(Color32::from_rgb(60, 140, 220)),
            );
            p.bar_chart(
                BarChart::new(fake_name, h.1.bars(0.25)).color(Color32::from_rgb(230, 110, 60)),
            );
            p.vline(VLine::new("threshold", threshold).color(Color32::from_gray(200)));
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfam_studio::data::Label;

    fn records(datasets: usize, per_dataset: usize) -> Vec<ScoreRecord> {
        (0..datasets * per_dataset)
            .map(|k| ScoreRecord {
                path: format!("{k}.jpg"),
                dataset: format!("d{}", k % datasets),
                label: if k % 2 == 0 { Label::Real } else { Label::Fake },
                score: 0.5,
                video: None,
            })
            .collect()
    }

    #[test]
    fn interval_resamples_shrink_with_the_table_within_their_bounds() {
        assert_eq!(ci_resamples(&records(3, 1000)), CI_MAX_RESAMPLES);
        // 1e6 scores in 4 datasets: 4e6 draws a resample, 50 in the budget.
        assert_eq!(ci_resamples(&records(4, 250_000)), CI_MIN_RESAMPLES);
        assert_eq!(
            ci_resamples(&records(2, 250_000)),
            CI_DRAW_BUDGET / 1_000_000
        );
        assert_eq!(ci_resamples(&[]), CI_MAX_RESAMPLES);
    }
}
