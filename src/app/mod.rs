//! The desktop app (eframe, wgpu renderer): the only module that knows
//! egui. Three views: Inspect (analysts: one photo, its faces and why),
//! Datasets (researchers: score distributions and the Cross-AUC matrix)
//! and Train (researchers: a detector trained on their own data, its
//! curves per epoch). Everything slow runs in [`jobs`] on named worker
//! threads.

mod datasets;
mod inspect;
mod jobs;
mod overlay;
mod plots;
mod scoring;
#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests;
mod training;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use egui::{RichText, Ui};
use serde::{Deserialize, Serialize};
use sfam_studio::data::atomic::write_atomic;
use sfam_studio::data::datasets::{FolderKind, folder_kind};
use sfam_studio::data::scores::{ScoreFormat, write_scores};
use sfam_studio::engine::table::write_face_table;
use sfam_studio::metrics::{VideoAgg, evaluation_json, matrix_csv};

pub use datasets::{DatasetsView, ModelInUse, Request};
pub use inspect::{InspectView, SAMPLES_MANIFEST};
pub use training::{TrainForm, TrainView};

/// Settings kept between runs (eframe storage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The view shown.
    pub view: View,
    /// Recently opened score files, newest first.
    pub recent_scores: Vec<PathBuf>,
    /// Recently added dataset folders, newest first.
    pub recent_roots: Vec<PathBuf>,
    /// The decision threshold drawn on histograms and used for rates.
    pub threshold: f64,
    /// Aggregate frame scores per video when loading score tables.
    pub video_agg: Option<VideoAgg>,
    /// The model folder chosen by the user (`None`: the bundled one).
    pub model_dir: Option<PathBuf>,
    /// The Inspect view's decision threshold on the model's score.
    pub inspect_threshold: f64,
    /// The Inspect view's threshold follows the one the model in use
    /// suggests (`sfam scan`'s default too), until the user sets another.
    pub inspect_threshold_auto: bool,
    /// Photos without a detected face are used whole as tight face crops.
    pub tight_crops: bool,
    /// Scoring datasets leaves out the model's own training images.
    pub skip_training_images: bool,
    /// The Train view's run settings.
    pub train: TrainForm,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            view: View::Datasets,
            recent_scores: Vec::new(),
            recent_roots: Vec::new(),
            threshold: 0.5,
            video_agg: None,
            model_dir: None,
            inspect_threshold: 0.5,
            inspect_threshold_auto: true,
            tight_crops: true,
            skip_training_images: false,
            train: TrainForm::default(),
        }
    }
}

/// The views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// One photo: faces, scores, explanations.
    Inspect,
    /// Many datasets: distributions and Cross-AUC.
    Datasets,
    /// Training a detector on datasets.
    Train,
}

const SETTINGS_KEY: &str = "sfam-studio-settings";
const RECENT_MAX: usize = 10;

/// Results of file dialogs and exports, which run off the UI thread.
enum Event {
    Picked(DialogKind, Vec<PathBuf>),
    Saved(Result<PathBuf, String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogKind {
    OpenScores,
    /// A second score table to compare with the loaded one.
    CompareScores,
    AddRoot,
    ExportMatrix,
    ExportPng,
    OpenImages,
    OpenImageFolder,
    ChooseModel,
    ExportFacePng,
    ExportFaceJson,
    ExportFaceTable,
    SaveScores,
    /// A data folder for training.
    TrainData,
    /// A training run's output folder.
    TrainOut,
    /// The CLIP model folder to train on.
    TrainClip,
    /// A training run folder to follow.
    FollowRun,
    /// A training run folder to compare with the one shown.
    CompareRun,
}

/// The application.
pub struct SfamApp {
    /// Persisted settings.
    pub settings: Settings,
    /// The datasets view.
    pub datasets: DatasetsView,
    /// The inspect view.
    pub inspect: InspectView,
    /// The train view.
    pub training: TrainView,
    /// Errors shown to the user (each once, until dismissed).
    pub errors: Vec<String>,
    /// The last informational message (e.g. "saved ...").
    pub status: Option<String>,
    events_tx: SyncSender<Event>,
    events_rx: Receiver<Event>,
    dialog_open: bool,
    /// The window was asked to close while a run trains: the user is asked.
    pub quit_asked: bool,
    /// The user chose to stop the run and quit.
    quit_confirmed: bool,
    repaint: Option<egui::Context>,
}

impl SfamApp {
    /// A new app with these settings; `repaint` wakes the UI from workers
    /// (`None` in tests, which step the UI themselves).
    pub fn new(settings: Settings, repaint: Option<egui::Context>) -> Self {
        let (events_tx, events_rx) = sync_channel(16);
        Self {
            settings,
            datasets: DatasetsView::default(),
            inspect: InspectView::default(),
            training: TrainView::default(),
            errors: Vec::new(),
            status: None,
            events_tx,
            events_rx,
            dialog_open: false,
            quit_asked: false,
            quit_confirmed: false,
            repaint,
        }
    }

    /// The app as it starts: the stored settings (`None` on a first
    /// start), then the model folder and the paths of the command line. A
    /// first start without paths opens the bundled sample faces in Inspect,
    /// so the model is seen at work at once.
    pub fn starting(
        stored: Option<Settings>,
        open: Vec<PathBuf>,
        model: Option<PathBuf>,
        compare: Option<PathBuf>,
        repaint: Option<egui::Context>,
    ) -> Self {
        let first_start = stored.is_none();
        let mut app = Self::new(stored.unwrap_or_default(), repaint);
        if let Some(dir) = model {
            app.choose_model(Some(dir));
        }
        if first_start && open.is_empty() && app.inspect.samples.is_some() {
            app.open_samples();
        }
        app.open_paths(open);
        app.datasets.compare_after_load = compare;
        app
    }

    /// Opens a score table (in the background).
    pub fn open_scores(&mut self, path: PathBuf) {
        remember(&mut self.settings.recent_scores, &path);
        if let Err(e) =
            self.datasets
                .open_scores(path, self.settings.video_agg, self.repaint.clone())
        {
            self.errors.push(e);
        }
        self.settings.view = View::Datasets;
    }

    /// Compares the loaded score table with another one (in the
    /// background).
    pub fn compare_scores(&mut self, path: PathBuf) {
        if let Err(e) = self.datasets.compare_with(path, self.repaint.clone()) {
            self.errors.push(e);
        }
    }

    /// Adds a dataset folder (discovered in the background).
    pub fn add_root(&mut self, path: PathBuf) {
        remember(&mut self.settings.recent_roots, &path);
        if let Err(e) = self.datasets.add_root(path, self.repaint.clone()) {
            self.errors.push(e);
        }
        self.settings.view = View::Datasets;
    }

    /// Opens photos in the Inspect view (inspected in the background,
    /// with the model in use).
    pub fn open_images(&mut self, paths: Vec<PathBuf>) {
        self.settings.view = View::Inspect;
        self.inspect
            .ensure_model(self.settings.model_dir.as_ref(), self.repaint.clone());
        self.inspect.open_images(paths);
    }

    /// Opens every photo of a folder (and its subfolders) in the Inspect
    /// view.
    pub fn open_image_folder(&mut self, dir: PathBuf) {
        self.settings.view = View::Inspect;
        self.inspect
            .ensure_model(self.settings.model_dir.as_ref(), self.repaint.clone());
        if let Err(e) = self.inspect.open_folder(dir, self.repaint.clone()) {
            self.errors.push(e);
        }
    }

    /// Uses this model folder (remembered in the settings); `None`: the
    /// bundled one. Photos already open are inspected again.
    pub fn choose_model(&mut self, dir: Option<PathBuf>) {
        self.settings.model_dir = dir;
        self.inspect
            .ensure_model(self.settings.model_dir.as_ref(), self.repaint.clone());
    }

    /// The model folder in use (Inspect's and the Datasets view's): the
    /// chosen one, else the bundled one; and whether it is the bundled one.
    fn model_in_use(&self) -> Option<(PathBuf, bool)> {
        match &self.settings.model_dir {
            Some(d) => Some((d.clone(), false)),
            None => self.inspect.bundled.clone().map(|d| (d, true)),
        }
    }

    /// Scores the discovered datasets with the model in use (in the
    /// background).
    pub fn score_datasets(&mut self) {
        let Some((dir, _)) = self.model_in_use() else {
            self.errors
                .push("no model to score with: choose a model folder in the Inspect view".into());
            return;
        };
        if let Err(e) = self.datasets.start_scoring(
            dir,
            self.settings.video_agg,
            self.settings.skip_training_images,
            self.repaint.clone(),
        ) {
            self.errors.push(e);
        }
    }

    /// Opens the bundled sample faces in the Inspect view (what the app
    /// shows on its first start).
    pub fn open_samples(&mut self) {
        match self.inspect.samples.as_ref().and_then(|m| m.parent()) {
            Some(dir) => self.open_image_folder(dir.to_path_buf()),
            None => self.samples_missing(),
        }
    }

    /// Says that the bundled sample faces are not where the app looks.
    fn samples_missing(&mut self) {
        self.errors.push(format!(
            "the sample faces were not found ({SAMPLES_MANIFEST})"
        ));
    }

    /// Adds the bundled sample faces to the Datasets view as three small
    /// datasets (their manifest) and scores them with the model in use as
    /// soon as they are found.
    pub fn score_samples(&mut self) {
        let Some(manifest) = self.datasets.samples.clone() else {
            self.samples_missing();
            return;
        };
        if self.model_in_use().is_none() {
            self.errors
                .push("no model to score with: choose a model folder in the Inspect view".into());
            return;
        }
        self.add_root(manifest);
        self.datasets.score_when_found = self.datasets.discover_job.is_some();
    }

    /// Adds a data folder to the Train view's run.
    pub fn add_train_root(&mut self, path: PathBuf) {
        let roots = &mut self.settings.train.roots;
        if !roots.contains(&path) {
            roots.push(path);
        }
        self.settings.view = View::Train;
    }

    /// Shows a training run folder's curves in the Train view, read again
    /// as it grows.
    pub fn follow_run(&mut self, dir: PathBuf) {
        self.settings.view = View::Train;
        if self.training.training() {
            self.errors
                .push("a run is training here; stop it before following another".into());
            return;
        }
        self.training.follow(dir, self.repaint.clone());
    }

    /// Starts (or resumes) the Train view's run.
    pub fn start_training(&mut self) {
        if let Err(e) = self
            .training
            .start(&self.settings.train, self.repaint.clone())
        {
            self.errors.push(e);
        }
    }

    /// Writes the last scoring run's score table (CSV, or JSON for a
    /// `.json` name) atomically, on a worker thread.
    pub fn save_scores(&mut self, path: PathBuf) {
        let Some(records) = self.datasets.scored.as_ref().map(|r| r.records.clone()) else {
            self.errors.push("no scores to save yet".into());
            return;
        };
        let Some(format) = self.table_format(&path, "a score table") else {
            return;
        };
        self.in_background(path, move |p| {
            write_scores(p, &records, format).map_err(|e| e.to_string())
        });
    }

    /// Drains worker messages (no UI; called every frame and while hidden).
    pub fn poll(&mut self) {
        let errors = self.datasets.poll(self.repaint.clone());
        self.errors.extend(errors);
        if self.datasets.score_when_found && self.datasets.discover_job.is_none() {
            self.datasets.score_when_found = false;
            if self.datasets.discovery.is_some() {
                self.score_datasets();
            }
        }
        let errors = self
            .inspect
            .poll(self.settings.tight_crops, self.repaint.as_ref());
        self.errors.extend(errors);
        let errors = self.training.poll(self.repaint.as_ref());
        self.errors.extend(errors);
        while let Ok(event) = self.events_rx.try_recv() {
            match event {
                Event::Picked(kind, paths) => {
                    self.dialog_open = false;
                    if kind == DialogKind::OpenImages {
                        if !paths.is_empty() {
                            self.open_images(paths);
                        }
                        continue;
                    }
                    let Some(path) = paths.into_iter().next() else {
                        continue;
                    };
                    match kind {
                        DialogKind::OpenScores => self.open_scores(path),
                        DialogKind::CompareScores => self.compare_scores(path),
                        DialogKind::AddRoot => self.add_root(path),
                        DialogKind::ExportMatrix => self.export_matrix(&path),
                        DialogKind::ExportPng => self.export_png(path),
                        DialogKind::OpenImages => {}
                        DialogKind::OpenImageFolder => self.open_image_folder(path),
                        DialogKind::ChooseModel => self.choose_model(Some(path)),
                        DialogKind::ExportFacePng => self.export_face_png(path),
                        DialogKind::ExportFaceJson => self.export_face_json(path),
                        DialogKind::ExportFaceTable => self.export_face_table(path),
                        DialogKind::SaveScores => self.save_scores(path),
                        DialogKind::TrainData => self.add_train_root(path),
                        DialogKind::TrainOut => self.settings.train.out = Some(path),
                        DialogKind::TrainClip => self.settings.train.clip = Some(path),
                        DialogKind::FollowRun => self.follow_run(path),
                        DialogKind::CompareRun => {
                            if let Err(e) = self.training.compare_with(path, self.repaint.clone()) {
                                self.errors.push(e);
                            }
                        }
                    }
                }
                Event::Saved(Ok(path)) => self.status = Some(format!("saved {}", path.display())),
                Event::Saved(Err(e)) => self.errors.push(e),
            }
        }
    }

    /// Shows a native file dialog on a worker thread (rfd's dialogs block
    /// their thread; the UI goes on).
    fn dialog(&mut self, kind: DialogKind) {
        if self.dialog_open {
            return;
        }
        let tx = self.events_tx.clone();
        let repaint = self.repaint.clone();
        let spawned = std::thread::Builder::new()
            .name("sfam-file-dialog".into())
            .spawn(move || {
                let d = rfd::FileDialog::new();
                let paths = match kind {
                    DialogKind::OpenScores | DialogKind::CompareScores => d
                        .add_filter("score table", &["csv", "json"])
                        .pick_file()
                        .into_iter()
                        .collect(),
                    DialogKind::AddRoot
                    | DialogKind::OpenImageFolder
                    | DialogKind::ChooseModel
                    | DialogKind::TrainData
                    | DialogKind::TrainOut
                    | DialogKind::TrainClip
                    | DialogKind::FollowRun
                    | DialogKind::CompareRun => d.pick_folder().into_iter().collect(),
                    DialogKind::ExportMatrix => d
                        .add_filter("CSV", &["csv"])
                        .add_filter("JSON", &["json"])
                        .set_file_name("cross_auc.csv")
                        .save_file()
                        .into_iter()
                        .collect(),
                    DialogKind::ExportPng => d
                        .add_filter("PNG", &["png"])
                        .set_file_name("plots.png")
                        .save_file()
                        .into_iter()
                        .collect(),
                    DialogKind::OpenImages => d
                        .add_filter("images", sfam_studio::data::IMAGE_EXTENSIONS)
                        .pick_files()
                        .unwrap_or_default(),
                    DialogKind::ExportFacePng => d
                        .add_filter("PNG", &["png"])
                        .set_file_name("face.png")
                        .save_file()
                        .into_iter()
                        .collect(),
                    DialogKind::ExportFaceJson => d
                        .add_filter("JSON", &["json"])
                        .set_file_name("face.json")
                        .save_file()
                        .into_iter()
                        .collect(),
                    DialogKind::ExportFaceTable => d
                        .add_filter("CSV", &["csv"])
                        .add_filter("JSON", &["json"])
                        .set_file_name("faces.csv")
                        .save_file()
                        .into_iter()
                        .collect(),
                    DialogKind::SaveScores => d
                        .add_filter("CSV", &["csv"])
                        .add_filter("JSON", &["json"])
                        .set_file_name("scores.csv")
                        .save_file()
                        .into_iter()
                        .collect(),
                };
                let _ = tx.send(Event::Picked(kind, paths));
                if let Some(c) = repaint {
                    c.request_repaint();
                }
            });
        match spawned {
            Ok(_) => self.dialog_open = true,
            Err(e) => self.errors.push(format!("cannot open a file dialog: {e}")),
        }
    }

    /// Writes the matrix (CSV, or the whole evaluation as JSON for a
    /// `.json` name), atomically.
    pub fn export_matrix(&mut self, path: &std::path::Path) {
        let Some(l) = &self.datasets.loaded else {
            return;
        };
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let text = if json {
            serde_json::to_string_pretty(&evaluation_json(&l.eval, &l.source))
                .map_err(|e| e.to_string())
        } else {
            matrix_csv(&l.eval.cross_auc).map_err(|e| e.to_string())
        };
        let result = text.and_then(|t| {
            write_atomic(path, |w| w.write_all(t.as_bytes()))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        });
        match result {
            Ok(()) => self.status = Some(format!("saved {}", path.display())),
            Err(e) => self.errors.push(e),
        }
    }

    /// Writes the annotated face (the picture on screen, landmarks marked)
    /// as PNG, on a worker thread.
    pub fn export_face_png(&mut self, path: PathBuf) {
        let Some(img) = self.inspect.annotated_face() else {
            self.errors.push("no face selected to export".into());
            return;
        };
        self.write_in_background(path, move || overlay::png_bytes(&img));
    }

    /// Writes the selected face's full result as JSON, on a worker thread.
    pub fn export_face_json(&mut self, path: PathBuf) {
        let Some(v) = self.inspect.face_json(self.settings.inspect_threshold) else {
            self.errors.push("no face selected to export".into());
            return;
        };
        self.write_in_background(path, move || {
            let mut text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            text.push('\n');
            Ok(text.into_bytes())
        });
    }

    /// Writes every inspected face as a table (CSV, or JSON for a `.json`
    /// name; `sfam scan`'s) atomically, on a worker thread.
    pub fn export_face_table(&mut self, path: PathBuf) {
        let photos = self.inspect.face_table();
        if photos.is_empty() {
            self.errors.push("no inspected faces to export yet".into());
            return;
        }
        let Some(format) = self.table_format(&path, "a face table") else {
            return;
        };
        let threshold = self.settings.inspect_threshold;
        self.in_background(path, move |p| {
            write_atomic(p, |w| {
                write_face_table(
                    w,
                    photos
                        .iter()
                        .map(|(path, image, trained)| (path.as_path(), image, *trained)),
                    threshold,
                    format,
                )
            })
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
        });
    }

    /// The format a table's name asks for (`.csv` or `.json`); otherwise
    /// an error saying what `what` must end in.
    fn table_format(&mut self, path: &Path, what: &str) -> Option<ScoreFormat> {
        let format = ScoreFormat::from_path(path);
        if format.is_none() {
            self.errors.push(format!(
                "{what} must end in .csv or .json: {}",
                path.display()
            ));
        }
        format
    }

    /// Makes the bytes and writes them atomically on a named thread; the
    /// outcome comes back as [`Event::Saved`].
    fn write_in_background(
        &mut self,
        path: PathBuf,
        bytes: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
    ) {
        self.in_background(path, move |path| {
            bytes().and_then(|b| {
                write_atomic(path, |w| w.write_all(&b))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            })
        });
    }

    /// Runs `write` (which writes `path`) on a named thread; the outcome
    /// comes back as [`Event::Saved`].
    fn in_background(
        &mut self,
        path: PathBuf,
        write: impl FnOnce(&Path) -> Result<(), String> + Send + 'static,
    ) {
        let tx = self.events_tx.clone();
        let repaint = self.repaint.clone();
        let spawned = std::thread::Builder::new()
            .name("sfam-export".into())
            .spawn(move || {
                let result = write(&path);
                let _ = tx.send(Event::Saved(result.map(|()| path)));
                if let Some(c) = repaint {
                    c.request_repaint();
                }
            });
        if let Err(e) = spawned {
            self.errors.push(format!("cannot start the export: {e}"));
        }
    }

    /// Takes a screenshot of the next frame, crops it to the plots and
    /// writes a PNG (on the screenshot callback's thread).
    fn export_png(&mut self, path: PathBuf) {
        let (Some(ctx), Some(rect)) = (self.repaint.clone(), self.datasets.plots_rect) else {
            self.errors.push("no plots on screen to export".into());
            return;
        };
        let tx = self.events_tx.clone();
        let ppp = ctx.pixels_per_point();
        let wake = ctx.clone();
        ctx.request_screenshot(move |img| {
            let result = save_region_png(&img, rect, ppp, &path).map(|()| path);
            let _ = tx.send(Event::Saved(result));
            wake.request_repaint();
        });
    }

    /// Asks before the window closes on a training run; what the user
    /// said is carried out here.
    fn quit_guard(&mut self, ui: &Ui) {
        let ctx = ui.ctx().clone();
        let close = ctx.input(|i| i.viewport().close_requested());
        if close && self.training.training() && !self.quit_confirmed {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.quit_asked = true;
        }
        if !self.quit_asked {
            return;
        }
        if !self.training.training() {
            // It ended meanwhile: nothing to ask.
            self.quit_asked = false;
            return;
        }
        let done = self
            .training
            .shown
            .as_ref()
            .and_then(|s| s.log.last())
            .map_or(0, |l| l.epoch);
        egui::Modal::new(egui::Id::unique("quit_while_training")).show(&ctx, |ui| {
            ui.heading("A run is training");
            ui.label(format!(
                "Quitting stops it. The checkpoint of its last finished epoch ({done}) stays: \
                 starting it again with the same settings and output folder resumes from there."
            ));
            ui.horizontal(|ui| {
                if ui.button("Keep training").clicked() {
                    self.quit_asked = false;
                }
                if ui.button("Stop and quit").clicked() {
                    if let Some(job) = &self.training.job {
                        job.cancel();
                    }
                    self.quit_asked = false;
                    self.quit_confirmed = true;
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
        });
    }

    /// The title, the views' tabs and the Datasets view's menus.
    fn top_bar(&mut self, ui: &mut Ui) {
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("SFAM Studio");
                ui.separator();
                ui.selectable_value(&mut self.settings.view, View::Inspect, "Inspect");
                ui.selectable_value(&mut self.settings.view, View::Datasets, "Datasets");
                let train = if self.training.training() {
                    "Train (running)"
                } else {
                    "Train"
                };
                ui.selectable_value(&mut self.settings.view, View::Train, train);
                if self.settings.view == View::Datasets {
                    ui.separator();
                    ui.menu_button("Recent", |ui| {
                        let mut open = None;
                        for p in &self.settings.recent_scores {
                            if ui.button(p.display().to_string()).clicked() {
                                open = Some(p.clone());
                            }
                        }
                        if self.settings.recent_scores.is_empty() {
                            ui.label("no score files yet");
                        }
                        if let Some(p) = open {
                            self.open_scores(p);
                        }
                    });
                    ui.menu_button("Video aggregation", |ui| {
                        ui.radio_value(
                            &mut self.settings.video_agg,
                            None,
                            "none (every row is a face)",
                        );
                        ui.radio_value(
                            &mut self.settings.video_agg,
                            Some(VideoAgg::Mean),
                            "mean per video",
                        );
                        ui.radio_value(
                            &mut self.settings.video_agg,
                            Some(VideoAgg::Max),
                            "max per video",
                        );
                    });
                }
            });
        });
    }

    /// The whole UI.
    pub fn show(&mut self, ui: &mut Ui) {
        self.quit_guard(ui);
        self.handle_drops(ui);
        self.top_bar(ui);
        if !self.errors.is_empty() || self.status.is_some() {
            egui::Panel::bottom("messages").show(ui, |ui| self.messages_ui(ui));
        }
        egui::CentralPanel::default().show(ui, |ui| match self.settings.view {
            View::Datasets => {
                let model = self.model_in_use();
                let model = model.as_ref().map(|(dir, bundled)| ModelInUse {
                    dir,
                    bundled: *bundled,
                });
                let requests = self.datasets.ui(
                    ui,
                    &mut self.settings.threshold,
                    &mut self.settings.skip_training_images,
                    model,
                );
                for r in requests {
                    match r {
                        Request::OpenScoresDialog => self.dialog(DialogKind::OpenScores),
                        Request::CompareDialog => self.dialog(DialogKind::CompareScores),
                        Request::AddRootDialog => self.dialog(DialogKind::AddRoot),
                        Request::ExportMatrix => self.dialog(DialogKind::ExportMatrix),
                        Request::ExportPlotsPng => self.dialog(DialogKind::ExportPng),
                        Request::ScoreDatasets => self.score_datasets(),
                        Request::SaveScoresDialog => self.dialog(DialogKind::SaveScores),
                        Request::ScoreSamples => self.score_samples(),
                    }
                }
            }
            View::Inspect => {
                self.inspect
                    .ensure_model(self.settings.model_dir.as_ref(), self.repaint.clone());
                let requests = self.inspect.ui(
                    ui,
                    (
                        &mut self.settings.inspect_threshold,
                        &mut self.settings.inspect_threshold_auto,
                    ),
                    &mut self.settings.tight_crops,
                    self.settings.model_dir.as_ref(),
                    &mut self.errors,
                );
                for r in requests {
                    match r {
                        inspect::Request::OpenImagesDialog => self.dialog(DialogKind::OpenImages),
                        inspect::Request::OpenFolderDialog => {
                            self.dialog(DialogKind::OpenImageFolder);
                        }
                        inspect::Request::ChooseModelDialog => self.dialog(DialogKind::ChooseModel),
                        inspect::Request::UseBundledModel => self.choose_model(None),
                        inspect::Request::ExportFacePng => self.dialog(DialogKind::ExportFacePng),
                        inspect::Request::ExportFaceJson => self.dialog(DialogKind::ExportFaceJson),
                        inspect::Request::ExportFaceTable => {
                            self.dialog(DialogKind::ExportFaceTable);
                        }
                        inspect::Request::OpenSamples => self.open_samples(),
                    }
                }
            }
            View::Train => self.train_view(ui),
        });
    }

    /// The Train view, and what it asks for.
    fn train_view(&mut self, ui: &mut Ui) {
        let requests = self
            .training
            .ui(ui, &mut self.settings.train, &self.datasets.roots);
        for r in requests {
            match r {
                training::Request::AddDataDialog => self.dialog(DialogKind::TrainData),
                training::Request::ChooseOutDialog => self.dialog(DialogKind::TrainOut),
                training::Request::ChooseClipDialog => self.dialog(DialogKind::TrainClip),
                training::Request::FollowDialog => self.dialog(DialogKind::FollowRun),
                training::Request::CompareDialog => self.dialog(DialogKind::CompareRun),
                training::Request::Start => self.start_training(),
                training::Request::OpenScores(path) => self.open_scores(path),
                training::Request::UseModel(dir) => {
                    self.choose_model(Some(dir));
                    self.settings.view = View::Inspect;
                }
            }
        }
    }

    fn messages_ui(&mut self, ui: &mut Ui) {
        let mut dismiss = None;
        for (k, e) in self.errors.iter().enumerate() {
            // The button first and the message wrapped: a long message
            // (a run's file errors) stays readable and dismissable.
            ui.horizontal_top(|ui| {
                if ui.small_button("dismiss").clicked() {
                    dismiss = Some(k);
                }
                let color = ui.visuals().error_fg_color;
                ui.add(egui::Label::new(RichText::new(format!("Error: {e}")).color(color)).wrap());
            });
        }
        if let Some(k) = dismiss {
            self.errors.remove(k);
        }
        if let Some(s) = &self.status {
            ui.label(RichText::new(s).weak());
        }
    }

    /// Opens paths given on the command line or dropped on the window:
    /// photos open in Inspect, score tables in Datasets; a folder is a
    /// folder of photos in Inspect, a dataset folder in Datasets, a
    /// training run's folder in Train (more than one: compared with the
    /// first; in the Train view any other folder is data for the next
    /// run).
    pub fn open_paths(&mut self, paths: Vec<PathBuf>) {
        let mut images = Vec::new();
        let mut runs = 0;
        for p in paths {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            match ext.as_deref() {
                Some("csv" | "json") => self.open_scores(p),
                // A training run's folder, in any view, shows its curves;
                // another folder dropped on the Train view is data for it.
                // The first is followed, the others of the same batch
                // drawn beside it.
                _ if p.is_dir() && training::is_run_folder(&p) => {
                    if runs == 0 {
                        self.follow_run(p);
                    } else if let Err(e) = self.training.compare_with(p, self.repaint.clone()) {
                        self.errors.push(e);
                    }
                    runs += 1;
                }
                _ if p.is_dir() && self.settings.view == View::Train => self.add_train_root(p),
                // A dataset layout goes to Datasets and a folder of photos
                // to Inspect, whichever view is shown; an undecided folder
                // (photos only in subfolders, say) to the view shown.
                _ if p.is_dir() => match (folder_kind(&p), self.settings.view) {
                    (FolderKind::Datasets, _) | (FolderKind::Unknown, View::Datasets | View::Train) => {
                        self.add_root(p);
                    }
                    (FolderKind::Photos, _) | (FolderKind::Unknown, View::Inspect) => {
                        self.open_image_folder(p);
                    }
                },
                _ if sfam_studio::data::is_image_path(&p) => images.push(p),
                _ => self.errors.push(format!(
                    "cannot open this here (expected a photo, a .csv/.json score table or a folder): {}",
                    p.display()
                )),
            }
        }
        if !images.is_empty() {
            self.open_images(images);
        }
    }

    /// Files dropped on the window.
    fn handle_drops(&mut self, ui: &Ui) {
        let dropped: Vec<PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if !dropped.is_empty() {
            self.open_paths(dropped);
        }
    }
}

/// What the model says it was trained on (`HeadConfig::training_note`),
/// with the caveat about faces of other kinds: one weak, wrapped line.
fn model_note_label(ui: &mut Ui, note: &str) {
    ui.label(
        RichText::new(format!(
            "The model: {note}. {}",
            sfam_studio::model::UNSEEN_KINDS_CAVEAT
        ))
        .weak(),
    );
}

fn remember(list: &mut Vec<PathBuf>, path: &PathBuf) {
    list.retain(|p| p != path);
    list.insert(0, path.clone());
    list.truncate(RECENT_MAX);
}

/// Crops a screenshot to `rect` (points) and writes it as PNG.
fn save_region_png(
    img: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
    path: &Path,
) -> Result<(), String> {
    let region = img.region(&rect, Some(ppp));
    let [w, h] = region.size;
    let bytes: Vec<u8> = region
        .pixels
        .iter()
        .flat_map(egui::Color32::to_array)
        .collect();
    let (Ok(w), Ok(h)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err("screenshot too large".into());
    };
    let buffer = image::RgbaImage::from_raw(w, h, bytes).ok_or("screenshot has the wrong size")?;
    write_atomic(path, |out| {
        let mut cursor = std::io::Cursor::new(Vec::new());
        buffer
            .write_to(&mut cursor, image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        out.write_all(cursor.get_ref())
    })
    .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl eframe::App for SfamApp {
    fn logic(&mut self, _ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll();
    }

    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }
}

/// Opens the app window (wgpu renderer) and runs until it is closed.
/// `open`: paths to open at start; `model`: a model folder to use (and
/// remember) instead of the one in the settings.
///
/// # Errors
/// When no window can be opened (no display, no GPU adapter at all).
pub fn run(
    open: Vec<PathBuf>,
    model: Option<PathBuf>,
    compare: Option<PathBuf>,
) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: egui::ViewportBuilder::default()
            .with_title("SFAM Studio")
            .with_inner_size([1280.0, 860.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "SFAM Studio",
        options,
        Box::new(|cc| {
            let stored = cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY));
            let app = SfamApp::starting(stored, open, model, compare, Some(cc.egui_ctx.clone()));
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the app window: {e}"))
}
