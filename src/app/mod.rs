//! The desktop app (eframe, wgpu renderer): the only module that knows
//! egui. Two views: Inspect (analysts: one photo, its faces and why) and
//! Datasets (researchers: score distributions and the Cross-AUC matrix).
//! Everything slow runs in [`jobs`] on named worker threads.

mod datasets;
mod jobs;
mod plots;
#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use egui::{RichText, Ui};
use serde::{Deserialize, Serialize};
use sfam_studio::data::atomic::write_atomic;
use sfam_studio::metrics::{VideoAgg, evaluation_json, matrix_csv};

pub use datasets::{DatasetsView, Request};

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
        }
    }
}

/// The two views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// One photo: faces, scores, explanations.
    Inspect,
    /// Many datasets: distributions and Cross-AUC.
    Datasets,
}

const SETTINGS_KEY: &str = "sfam-studio-settings";
const RECENT_MAX: usize = 10;

/// Results of file dialogs and exports, which run off the UI thread.
enum Event {
    Picked(DialogKind, Option<PathBuf>),
    Saved(Result<PathBuf, String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogKind {
    OpenScores,
    AddRoot,
    ExportMatrix,
    ExportPng,
}

/// The application.
pub struct SfamApp {
    /// Persisted settings.
    pub settings: Settings,
    /// The datasets view.
    pub datasets: DatasetsView,
    /// Errors shown to the user (each once, until dismissed).
    pub errors: Vec<String>,
    /// The last informational message (e.g. "saved ...").
    pub status: Option<String>,
    events_tx: SyncSender<Event>,
    events_rx: Receiver<Event>,
    dialog_open: bool,
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
            errors: Vec::new(),
            status: None,
            events_tx,
            events_rx,
            dialog_open: false,
            repaint,
        }
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

    /// Adds a dataset folder (discovered in the background).
    pub fn add_root(&mut self, path: PathBuf) {
        remember(&mut self.settings.recent_roots, &path);
        if let Err(e) = self.datasets.add_root(path, self.repaint.clone()) {
            self.errors.push(e);
        }
        self.settings.view = View::Datasets;
    }

    /// Drains worker messages (no UI; called every frame and while hidden).
    pub fn poll(&mut self) {
        let errors = self.datasets.poll();
        self.errors.extend(errors);
        while let Ok(event) = self.events_rx.try_recv() {
            match event {
                Event::Picked(kind, path) => {
                    self.dialog_open = false;
                    let Some(path) = path else { continue };
                    match kind {
                        DialogKind::OpenScores => self.open_scores(path),
                        DialogKind::AddRoot => self.add_root(path),
                        DialogKind::ExportMatrix => self.export_matrix(&path),
                        DialogKind::ExportPng => self.export_png(path),
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
                let path = match kind {
                    DialogKind::OpenScores => {
                        d.add_filter("score table", &["csv", "json"]).pick_file()
                    }
                    DialogKind::AddRoot => d.pick_folder(),
                    DialogKind::ExportMatrix => d
                        .add_filter("CSV", &["csv"])
                        .add_filter("JSON", &["json"])
                        .set_file_name("cross_auc.csv")
                        .save_file(),
                    DialogKind::ExportPng => d
                        .add_filter("PNG", &["png"])
                        .set_file_name("plots.png")
                        .save_file(),
                };
                let _ = tx.send(Event::Picked(kind, path));
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
            serde_json::to_string_pretty(&evaluation_json(&l.eval, &l.source.display().to_string()))
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

    /// The whole UI.
    pub fn show(&mut self, ui: &mut Ui) {
        self.handle_drops(ui);
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("SFAM Studio");
                ui.separator();
                ui.selectable_value(&mut self.settings.view, View::Inspect, "Inspect");
                ui.selectable_value(&mut self.settings.view, View::Datasets, "Datasets");
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
            });
        });
        if !self.errors.is_empty() || self.status.is_some() {
            egui::Panel::bottom("messages").show(ui, |ui| self.messages_ui(ui));
        }
        egui::CentralPanel::default().show(ui, |ui| match self.settings.view {
            View::Datasets => {
                let requests = self.datasets.ui(ui, &mut self.settings.threshold);
                for r in requests {
                    match r {
                        Request::OpenScoresDialog => self.dialog(DialogKind::OpenScores),
                        Request::AddRootDialog => self.dialog(DialogKind::AddRoot),
                        Request::ExportMatrix => self.dialog(DialogKind::ExportMatrix),
                        Request::ExportPlotsPng => self.dialog(DialogKind::ExportPng),
                    }
                }
            }
            View::Inspect => inspect_ui(ui),
        });
    }

    fn messages_ui(&mut self, ui: &mut Ui) {
        let mut dismiss = None;
        for (k, e) in self.errors.iter().enumerate() {
            ui.horizontal(|ui| {
                ui.colored_label(ui.visuals().error_fg_color, format!("Error: {e}"));
                if ui.small_button("dismiss").clicked() {
                    dismiss = Some(k);
                }
            });
        }
        if let Some(k) = dismiss {
            self.errors.remove(k);
        }
        if let Some(s) = &self.status {
            ui.label(RichText::new(s).weak());
        }
    }

    /// Opens a path given on the command line or dropped on the window:
    /// score tables open, folders are added as dataset roots.
    pub fn open_path(&mut self, p: PathBuf) {
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv" | "json") => self.open_scores(p),
            _ if p.is_dir() => self.add_root(p),
            _ => self.errors.push(format!(
                "cannot open this here (expected a .csv/.json score table or a dataset folder): {}",
                p.display()
            )),
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
        for p in dropped {
            self.open_path(p);
        }
    }
}

fn inspect_ui(ui: &mut Ui) {
    ui.heading("Inspect a photo");
    ui.label(
        "Face inspection needs the SFAM model and the face pipeline, which are not part of this build yet. \
         The Datasets view works on score tables of any detector.",
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
    path: &std::path::Path,
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
///
/// # Errors
/// When no window can be opened (no display, no GPU adapter at all).
pub fn run(open: Vec<PathBuf>) -> anyhow::Result<()> {
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
            let settings: Settings = cc
                .storage
                .and_then(|s| eframe::get_value(s, SETTINGS_KEY))
                .unwrap_or_default();
            let mut app = SfamApp::new(settings, Some(cc.egui_ctx.clone()));
            for path in open {
                app.open_path(path);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the app window: {e}"))
}
