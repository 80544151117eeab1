//! The analysts' view: photos -> their faces -> for the selected face the
//! SFAM score as a verdict at the threshold in use, the aligned face under
//! an alignment heatmap (any prompt, or one typed with a CLIP model) or
//! the region masks, the region mixture of experts' routing and each
//! region's contribution to the score; exports of the annotated face (PNG)
//! and of the face's full result (JSON).
//!
//! Model loading, face detection + scoring (one worker for a whole list of
//! photos, results streamed back one photo at a time), photo decoding and
//! typed prompts each run in a [`Job`] on a named worker thread; the view
//! only drains their channels.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use candle_core::{Device, Tensor};
use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions, Ui};
use image::RgbImage;
use sfam_studio::data::datasets::find_images;
use sfam_studio::data::image::{decode_rgb, load_rgb, read_image_bytes};
use sfam_studio::engine::table::verdict;
use sfam_studio::engine::{FaceScore, ImageScore};
use sfam_studio::face::{AlignedFace, Face, FaceDetector, FaceOptions, REGIONS};
use sfam_studio::model::clip::{ClipModel, Towers};
use sfam_studio::model::heads::SuggestedThreshold;
use sfam_studio::model::sfam::HEAD_CONFIG_FILE;
use sfam_studio::model::{ClipTokenizer, Precision, SfamModel, SfamOutput};

use super::jobs::{Ctx, Job};
use super::overlay;

/// Where the bundled model lives, relative to the project (or the
/// folder the app is started from).
pub const BUNDLED_MODEL: &str = "models/default";

/// The bundled sample faces' labels, a dataset manifest
/// (`path,label,dataset`) in their folder: 20 photos copied from the three
/// domains of `../shared/data` (`assets/samples/PROVENANCE.md`).
pub const SAMPLES_MANIFEST: &str = "assets/samples/samples.csv";

/// Longest side of the photo shown (larger photos are shrunk for display;
/// boxes stay in the photo's own pixels).
const PHOTO_MAX_SIDE: u32 = 1280;
/// Longest side of a thumbnail.
const THUMB_MAX_SIDE: u32 = 96;
/// Errors reported one by one per batch of photos; the rest are counted.
const ERRORS_PER_BATCH: usize = 5;

/// Colour of a routing weight of 1 (0: the background).
const ROUTING_COLOR: Color32 = Color32::from_rgb(70, 190, 150);
/// Colour of "real" (as in the Datasets view's histograms).
pub const REAL_COLOR: Color32 = Color32::from_rgb(60, 140, 220);
/// Colour of "fake".
pub const FAKE_COLOR: Color32 = Color32::from_rgb(230, 110, 60);

/// The bundled model folder, if it holds a trained head: `models/default`
/// under the current folder, beside the executable or up to three folders
/// above it (`target/release/sfam` in a checkout), or in the source tree
/// the binary was built from.
#[must_use]
pub fn bundled_model_dir() -> Option<PathBuf> {
    bundled_path(BUNDLED_MODEL, |d| d.join(HEAD_CONFIG_FILE).is_file())
}

/// The bundled sample faces' manifest ([`SAMPLES_MANIFEST`]), found where
/// [`bundled_model_dir`] looks; its folder holds the photos.
#[must_use]
pub fn bundled_samples() -> Option<PathBuf> {
    bundled_path(SAMPLES_MANIFEST, Path::is_file).map(|p| std::path::absolute(&p).unwrap_or(p))
}

/// A bundled file or folder (`rel` to the project root) found where
/// [`bundled_model_dir`] looks, the first that passes `ok`.
pub fn bundled_path(rel: &str, ok: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from(rel)];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(4).map(|a| a.join(rel)));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    candidates.into_iter().find(|d| ok(d))
}

/// A CLIP text tower with its tokenizer: what typing a prompt needs.
pub struct TextEncoder {
    clip: ClipModel,
    tokenizer: ClipTokenizer,
}

impl TextEncoder {
    /// The text tower of the model folder `dir`, if it has one whose
    /// embeddings have the head's dimension `dim`.
    ///
    /// # Errors
    /// Why typing prompts is unavailable.
    pub fn load(dir: &Path, dim: usize) -> Result<Self, String> {
        let clip = ClipModel::load(dir, Towers::Text, &Device::Cpu).map_err(|e| e.to_string())?;
        let tower = clip.text().ok_or("no text tower")?;
        if tower.projection_dim() != dim {
            return Err(format!(
                "its text embeddings have dimension {}, the head's prompts {dim}",
                tower.projection_dim()
            ));
        }
        let tokenizer = ClipTokenizer::new().map_err(|e| e.to_string())?;
        Ok(Self { clip, tokenizer })
    }

    /// The (not normalised) embedding `[1, D]` of a text.
    ///
    /// # Errors
    /// A message when the text cannot be tokenized or encoded.
    pub fn embed(&self, text: &str) -> Result<Tensor, String> {
        let tower = self.clip.text().ok_or("no text tower")?;
        let ids = self.tokenizer.tokenize(text).map_err(|e| e.to_string())?;
        tower
            .forward(std::slice::from_ref(&ids))
            .map_err(|e| e.to_string())
    }
}

/// A loaded model with everything the view runs: the face pipeline and,
/// for CLIP models, the text encoder.
pub struct LoadedModel {
    /// The model folder.
    pub dir: PathBuf,
    /// Backbone + heads.
    pub model: SfamModel,
    /// MTCNN + alignment (the bundled weights).
    pub detector: FaceDetector,
    /// The text encoder, or why typed prompts are unavailable.
    pub text: Result<TextEncoder, String>,
}

impl LoadedModel {
    /// Loads the face detector, the model folder and (if there is one) its
    /// text encoder.
    ///
    /// # Errors
    /// A message naming the file that is missing or wrong.
    pub fn load(dir: &Path, ctx: &Ctx<Result<Self, String>>) -> Result<Self, String> {
        ctx.progress(0.05, "face detector");
        let detector = FaceDetector::load_default().map_err(|e| e.to_string())?;
        ctx.progress(0.2, format!("model {}", dir.display()));
        let mut model = SfamModel::load(dir, &Device::Cpu)
            .map_err(|e| format!("cannot load the model folder: {e}"))?;
        // bf16 products for a CLIP backbone where the CPU has them (as
        // `sfam score` and `sfam inspect` do by default).
        model
            .set_precision(Precision::Auto)
            .map_err(|e| format!("cannot load the model folder: {e}"))?;
        // The region masks come from the face pipeline's nine regions: a
        // head with other regions cannot be inspected here.
        model
            .template_masks()
            .map_err(|e| format!("cannot use this model here: {e}: {}", dir.display()))?;
        if ctx.cancelled() {
            return Err("cancelled".into());
        }
        ctx.progress(0.8, "text encoder");
        let text = TextEncoder::load(dir, model.head().config().dim);
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            detector,
            text,
        })
    }
}

/// One face of a photo with the model's output.
pub struct FaceResult {
    /// Box, detector score and landmarks in the photo.
    pub face: Face,
    /// The face aligned to the template.
    pub aligned: AlignedFace,
    /// Everything the model says about it.
    pub output: SfamOutput,
    /// Heatmaps of typed prompts: (text, map over the patch grid).
    pub typed: Vec<(String, Vec<f32>)>,
}

/// A photo's faces and results.
pub struct ImageResult {
    /// Width and height of the photo (upright).
    pub size: (u32, u32),
    /// Its faces, largest first.
    pub faces: Vec<FaceResult>,
    /// No face was detected; the whole photo was used as a tight face crop.
    pub precropped: bool,
    /// A small copy for the thumbnail strip.
    pub thumb: RgbImage,
    /// One of the model's training images (its bytes are in the model
    /// folder's `training_images.txt`).
    pub trained_on: bool,
}

impl ImageResult {
    /// The highest face score (the most suspicious face).
    #[must_use]
    pub fn max_score(&self) -> Option<f32> {
        self.faces
            .iter()
            .map(|f| f.output.score)
            .max_by(f32::total_cmp)
    }
}

/// Where a photo stands.
pub enum EntryState {
    /// Waiting for the model or its turn.
    Pending,
    /// Inspected.
    Done(ImageResult),
    /// Could not be inspected (the message was shown once).
    Failed(String),
    /// The user cancelled before its turn.
    Cancelled,
}

/// A photo in the strip.
pub struct ImageEntry {
    /// Its file.
    pub path: PathBuf,
    /// Its state.
    pub state: EntryState,
    thumb_tex: Option<TextureHandle>,
}

/// What the batch worker sends per photo.
struct Processed {
    /// Position in the batch's target list.
    k: usize,
    result: Result<ImageResult, String>,
    /// A display copy of the photo (kept only if it is selected).
    photo: Option<RgbImage>,
}

/// A running batch: one worker inspecting a list of photos in order.
struct Batch {
    job: Job<()>,
    items: Receiver<Processed>,
    /// Entry index of each photo of the batch.
    targets: Vec<usize>,
    errors: usize,
}

/// A typed prompt's heatmap, computed on a worker.
pub struct TypedMap {
    image: usize,
    face: usize,
    text: String,
    map: Vec<f32>,
}

/// The model: what is loaded, loading or wrong.
pub enum ModelState {
    /// Nothing asked for yet.
    Idle,
    /// No model folder chosen and no bundled model.
    NoBundled,
    /// Loading this folder.
    Loading(PathBuf, Job<Result<LoadedModel, String>>),
    /// Ready.
    Ready(Arc<LoadedModel>),
    /// This folder failed to load (the message was shown once).
    Failed(PathBuf, String),
}

/// What is drawn over the aligned face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overlay {
    /// One alignment heatmap.
    Heatmap,
    /// The region masks.
    Regions,
    /// The face alone.
    None,
}

/// What the view asks the app to do (the app owns dialogs and exports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Pick photos with a dialog.
    OpenImagesDialog,
    /// Pick a folder of photos with a dialog.
    OpenFolderDialog,
    /// Pick a model folder with a dialog.
    ChooseModelDialog,
    /// Go back to the bundled model.
    UseBundledModel,
    /// Save the annotated face as PNG.
    ExportFacePng,
    /// Save the face's full result as JSON.
    ExportFaceJson,
    /// Save every inspected face as a table (CSV or JSON).
    ExportFaceTable,
    /// Open the bundled sample faces.
    OpenSamples,
}

/// Everything that decides the face picture (recomputed when it changes).
#[derive(Debug, Clone, Copy, PartialEq)]
struct FaceKey {
    image: usize,
    face: usize,
    overlay: Overlay,
    prompt: usize,
    opacity: f32,
    stretch: bool,
    typed: usize,
}

/// State of the Inspect view.
pub struct InspectView {
    /// The bundled model folder, when it exists (tests may change it).
    pub bundled: Option<PathBuf>,
    /// The bundled sample faces' manifest (see [`bundled_samples`]).
    pub samples: Option<PathBuf>,
    /// The model.
    pub model: ModelState,
    /// The photos, in the order opened.
    pub entries: Vec<ImageEntry>,
    /// The selected photo.
    pub selected: Option<usize>,
    /// The selected face of the selected photo.
    pub face: usize,
    /// The overlay on the aligned face.
    pub overlay: Overlay,
    /// The heatmap's prompt: the model's prompts, then the face's typed ones.
    pub prompt: usize,
    /// Heatmap / region opacity.
    pub opacity: f32,
    /// Colour the heatmap over its own range (else over 0..1).
    pub stretch: bool,
    /// The prompt being typed.
    pub typed_text: String,
    /// The strip shows the photos most suspicious first (highest face
    /// score; photos not inspected yet last), else in the order opened.
    pub most_suspicious_first: bool,
    list_job: Option<Job<Result<Vec<PathBuf>, String>>>,
    batch: Option<Batch>,
    photo_job: Option<(usize, Job<Result<RgbImage, String>>)>,
    /// A running typed-prompt computation.
    pub prompt_job: Option<Job<Result<TypedMap, String>>>,
    photo: Option<(usize, RgbImage)>,
    photo_tex: Option<(usize, TextureHandle)>,
    face_tex: Option<(FaceKey, TextureHandle)>,
    legend_tex: Option<TextureHandle>,
    /// Where the photo was drawn (for clicks on faces).
    photo_rect: Option<egui::Rect>,
}

impl Default for InspectView {
    fn default() -> Self {
        Self {
            bundled: bundled_model_dir(),
            samples: bundled_samples(),
            model: ModelState::Idle,
            entries: Vec::new(),
            selected: None,
            face: 0,
            overlay: Overlay::Heatmap,
            prompt: 1,
            opacity: 0.55,
            stretch: true,
            typed_text: String::new(),
            most_suspicious_first: false,
            list_job: None,
            batch: None,
            photo_job: None,
            prompt_job: None,
            photo: None,
            photo_tex: None,
            face_tex: None,
            legend_tex: None,
            photo_rect: None,
        }
    }
}

/// Reads a photo, finds its faces and scores them (runs on the worker);
/// with `photo`, also makes the display copy of the photo.
fn process_one(m: &LoadedModel, path: &Path, tight_crops: bool, photo: bool) -> Processed {
    let read = read_image_bytes(path).and_then(|bytes| {
        let trained_on = m
            .model
            .training_images()
            .is_some_and(|t| t.contains_bytes(&bytes));
        decode_rgb(&bytes, path).map(|img| (img, trained_on))
    });
    let (img, trained_on) = match read {
        Ok(read) => read,
        Err(e) => {
            return Processed {
                k: 0,
                result: Err(e.to_string()),
                photo: None,
            };
        }
    };
    let found = m
        .detector
        .faces_in_rgb(&img, path, FaceOptions { tight_crops });
    let result = match found.error {
        Some(e) => Err(e.to_string()),
        None => score_faces(&m.model, found.faces, found.aligned)
            .map_err(|e| format!("{e}: {}", path.display()))
            .map(|faces| ImageResult {
                size: img.dimensions(),
                faces,
                precropped: found.precropped,
                thumb: overlay::shrink(&img, THUMB_MAX_SIDE),
                trained_on,
            }),
    };
    Processed {
        k: 0,
        result,
        photo: photo.then(|| overlay::shrink(&img, PHOTO_MAX_SIDE)),
    }
}

/// Runs the model on aligned faces, with region masks from each face's own
/// aligned landmarks.
fn score_faces(
    model: &SfamModel,
    faces: Vec<Face>,
    aligned: Vec<AlignedFace>,
) -> Result<Vec<FaceResult>, String> {
    if faces.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<&AlignedFace> = aligned.iter().collect();
    let outputs = model
        .inspect_faces(&refs)
        .map_err(|e| format!("the model failed ({e})"))?;
    Ok(faces
        .into_iter()
        .zip(aligned)
        .zip(outputs)
        .map(|((face, aligned), output)| FaceResult {
            face,
            aligned,
            output,
            typed: Vec::new(),
        })
        .collect())
}

/// The alignment map of `text` for one face: the model's prompts plus the
/// typed one, the map of the typed one (runs on a worker).
fn typed_map(m: &LoadedModel, aligned: &AlignedFace, text: &str) -> Result<Vec<f32>, String> {
    let encoder = m.text.as_ref().map_err(Clone::clone)?;
    let embed = encoder.embed(text)?;
    let err = |e: &dyn std::fmt::Display| format!("cannot compute the heatmap ({e})");
    let mut head = m.model.head().clone();
    let mut texts = head.config().prompts.clone();
    texts.push(text.to_owned());
    let current = head.prompt_embeds().map_err(|e| err(&e))?;
    let embeds = Tensor::cat(&[&current, &embed], 0).map_err(|e| err(&e))?;
    head.set_prompts(texts, &embeds).map_err(|e| err(&e))?;
    let pixels = m
        .model
        .pixels(std::slice::from_ref(&aligned.image))
        .map_err(|e| err(&e))?;
    let masks = m
        .model
        .region_masks(&aligned.landmarks_aligned)
        .map_err(|e| err(&e))?;
    let tokens = m.model.backbone().encode(&pixels).map_err(|e| err(&e))?;
    let out = head
        .forward(&tokens.global, &tokens.patches, &masks)
        .map_err(|e| err(&e))?;
    let outputs = SfamOutput::from_head(&out, &masks, &head).map_err(|e| err(&e))?;
    outputs
        .into_iter()
        .next()
        .and_then(|o| o.alignment_maps.last().cloned())
        .ok_or_else(|| "the model returned no heatmap".to_owned())
}

/// Image files of a folder and its subfolders, sorted (runs on a worker):
/// `find_images`'s walk. An unreadable subfolder does not stop it; a
/// folder without any image is an error naming it (with what went wrong
/// on the way).
fn list_images(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let found = find_images(std::slice::from_ref(&dir.to_path_buf()));
    if found.images.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(if why.is_empty() {
            format!("no image files in {}", dir.display())
        } else {
            why.join("; ")
        });
    }
    Ok(found.images)
}

fn region_label(name: &str) -> &str {
    REGIONS
        .iter()
        .find(|r| r.name() == name)
        .map_or(name, |r| r.label())
}

impl InspectView {
    /// The model folder in use: the chosen one, else the bundled one.
    fn wanted_dir(&self, chosen: Option<&PathBuf>) -> Option<PathBuf> {
        chosen.cloned().or_else(|| self.bundled.clone())
    }

    /// Starts loading the model folder in use unless it is loaded, loading
    /// or failed already. `chosen`: the user's folder (Settings).
    pub fn ensure_model(&mut self, chosen: Option<&PathBuf>, repaint: Option<egui::Context>) {
        let Some(dir) = self.wanted_dir(chosen) else {
            if !matches!(self.model, ModelState::NoBundled) {
                self.drop_model();
                self.model = ModelState::NoBundled;
            }
            return;
        };
        let current = match &self.model {
            ModelState::Loading(d, _) | ModelState::Failed(d, _) => Some(d),
            ModelState::Ready(m) => Some(&m.dir),
            ModelState::Idle | ModelState::NoBundled => None,
        };
        if current == Some(&dir) {
            return;
        }
        self.load_model(dir, repaint);
    }

    /// Loads a model folder (again), replacing the current model.
    pub fn load_model(&mut self, dir: PathBuf, repaint: Option<egui::Context>) {
        self.drop_model();
        let title = format!("loading model {}", dir.display());
        let d = dir.clone();
        self.model = match Job::spawn("model-load", title, repaint, move |ctx| {
            LoadedModel::load(&d, ctx)
        }) {
            Ok(job) => ModelState::Loading(dir, job),
            Err(e) => ModelState::Failed(dir, e),
        };
    }

    /// Forgets the model and every result computed with it (the photos
    /// stay, to be inspected again).
    fn drop_model(&mut self) {
        if let ModelState::Loading(_, job) = &self.model {
            job.cancel();
        }
        self.stop_batch(false);
        if let Some(j) = self.prompt_job.take() {
            j.cancel();
        }
        for e in &mut self.entries {
            if matches!(e.state, EntryState::Done(_)) {
                e.state = EntryState::Pending;
            }
        }
        self.face_tex = None;
        self.model = ModelState::Idle;
    }

    /// Stops the running batch; its photos not yet inspected are marked
    /// cancelled (`mark`) or stay pending.
    fn stop_batch(&mut self, mark: bool) {
        if let Some(b) = self.batch.take() {
            b.job.cancel();
            for &i in b.targets.iter().filter(|_| mark) {
                if let Some(e) = self.entries.get_mut(i)
                    && matches!(e.state, EntryState::Pending)
                {
                    e.state = EntryState::Cancelled;
                }
            }
        }
    }

    /// Cancels the running batch: photos not yet inspected stay in the
    /// strip, marked cancelled (a click queues one again).
    pub fn cancel_batch(&mut self) {
        self.stop_batch(true);
    }

    /// Adds photos to the strip (inspected as soon as the model is ready)
    /// and selects the first of them.
    pub fn open_images(&mut self, paths: Vec<PathBuf>) {
        let first = self.entries.len();
        for path in paths {
            self.entries.push(ImageEntry {
                path,
                state: EntryState::Pending,
                thumb_tex: None,
            });
        }
        if first < self.entries.len() {
            self.select(first);
        }
    }

    /// Lists a folder's photos (recursively) in the background, then adds
    /// them.
    ///
    /// # Errors
    /// When no worker thread can be started.
    pub fn open_folder(
        &mut self,
        dir: PathBuf,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        if let Some(j) = &self.list_job {
            j.cancel();
        }
        let title = format!("listing {}", dir.display());
        self.list_job = Some(Job::spawn("list-images", title, repaint, move |_| {
            list_images(&dir)
        })?);
        Ok(())
    }

    /// Selects a photo (its first face); queues it again if it was
    /// cancelled, and loads its picture if needed.
    pub fn select(&mut self, index: usize) {
        if index >= self.entries.len() {
            return;
        }
        if self.selected != Some(index) {
            self.face = 0;
        }
        self.selected = Some(index);
        if let Some(e) = self.entries.get_mut(index)
            && matches!(e.state, EntryState::Cancelled)
        {
            e.state = EntryState::Pending;
        }
    }

    /// The selected face's result, with its photo's entry index.
    #[must_use]
    pub fn selected_face(&self) -> Option<(usize, &ImageEntry, &FaceResult)> {
        let i = self.selected?;
        let e = self.entries.get(i)?;
        match &e.state {
            EntryState::Done(r) => r.faces.get(self.face).map(|f| (i, e, f)),
            _ => None,
        }
    }

    /// Whether photos are still waiting or being inspected.
    #[cfg(test)]
    #[must_use]
    pub fn busy(&self) -> bool {
        self.batch.is_some()
            || self.list_job.is_some()
            || matches!(self.model, ModelState::Loading(..))
            || (matches!(self.model, ModelState::Ready(_))
                && self
                    .entries
                    .iter()
                    .any(|e| matches!(e.state, EntryState::Pending)))
    }

    /// Starts a batch on the pending photos when the model is ready and no
    /// batch runs.
    fn schedule(
        &mut self,
        tight_crops: bool,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        if self.batch.is_some() {
            return Ok(());
        }
        let ModelState::Ready(model) = &self.model else {
            return Ok(());
        };
        // The selected photo first, then the strip's order.
        let mut targets: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.state, EntryState::Pending))
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        if let Some(s) = self.selected
            && let Some(pos) = targets.iter().position(|&i| i == s)
        {
            let s = targets.remove(pos);
            targets.insert(0, s);
        }
        let paths: Vec<PathBuf> = targets
            .iter()
            .map(|&i| self.entries[i].path.clone())
            .collect();
        let model = Arc::clone(model);
        // Bounded: the worker waits when the UI is behind.
        let (tx, rx): (SyncSender<Processed>, _) = sync_channel(4);
        let n = paths.len();
        let title = if n == 1 {
            "inspecting 1 photo".to_owned()
        } else {
            format!("inspecting {n} photos")
        };
        let job = Job::spawn("inspect", title, repaint, move |ctx| {
            for (k, path) in paths.iter().enumerate() {
                if ctx.cancelled() {
                    return;
                }
                #[allow(clippy::cast_precision_loss)]
                let f = k as f32 / n as f32;
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |s| s.to_string_lossy().into_owned(),
                );
                ctx.progress(f, format!("{}/{n}: {name}", k + 1));
                // The first photo is the one selected (see above); the
                // others' pictures are read again if they are selected.
                let mut item = process_one(&model, path, tight_crops, k == 0);
                item.k = k;
                if tx.send(item).is_err() {
                    return;
                }
            }
        })?;
        self.batch = Some(Batch {
            job,
            items: rx,
            targets,
            errors: 0,
        });
        Ok(())
    }

    /// Drains the workers (no UI); returns errors to show once.
    pub fn poll(&mut self, tight_crops: bool, repaint: Option<&egui::Context>) -> Vec<String> {
        let mut errors = Vec::new();
        self.poll_model(&mut errors);
        self.poll_list(&mut errors);
        self.poll_batch(&mut errors);
        self.poll_photo(&mut errors);
        self.poll_prompt(&mut errors);
        if let Err(e) = self.schedule(tight_crops, repaint.cloned()) {
            errors.push(e);
        }
        if let Some(i) = self.selected {
            self.ensure_photo(i, repaint.cloned(), &mut errors);
        }
        errors
    }

    fn poll_model(&mut self, errors: &mut Vec<String>) {
        let ModelState::Loading(dir, job) = &mut self.model else {
            return;
        };
        match job.poll() {
            None => {}
            Some(Ok(Ok(m))) => self.model = ModelState::Ready(Arc::new(m)),
            Some(Ok(Err(e))) => {
                if e != "cancelled" {
                    errors.push(e.clone());
                }
                self.model = ModelState::Failed(dir.clone(), e);
            }
            Some(Err(())) => {
                let e = "the model-loading worker stopped unexpectedly".to_owned();
                errors.push(e.clone());
                self.model = ModelState::Failed(dir.clone(), e);
            }
        }
    }

    fn poll_list(&mut self, errors: &mut Vec<String>) {
        let Some(job) = &mut self.list_job else {
            return;
        };
        match job.poll() {
            None => {}
            Some(Ok(Ok(paths))) => {
                self.list_job = None;
                self.open_images(paths);
            }
            Some(Ok(Err(e))) => {
                self.list_job = None;
                errors.push(e);
            }
            Some(Err(())) => {
                self.list_job = None;
                errors.push("the folder-listing worker stopped unexpectedly".into());
            }
        }
    }

    fn poll_batch(&mut self, errors: &mut Vec<String>) {
        let Some(batch) = &mut self.batch else {
            return;
        };
        // Results first: they were all sent before the job's end.
        while let Ok(item) = batch.items.try_recv() {
            let Some(&i) = batch.targets.get(item.k) else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(i) else {
                continue;
            };
            entry.state = match item.result {
                Ok(r) => EntryState::Done(r),
                Err(e) => {
                    batch.errors += 1;
                    if batch.errors <= ERRORS_PER_BATCH {
                        errors.push(e.clone());
                    }
                    EntryState::Failed(e)
                }
            };
            if self.selected == Some(i)
                && let Some(p) = item.photo
            {
                self.photo = Some((i, p));
            }
        }
        let finished = match batch.job.poll() {
            None => false,
            Some(Ok(())) => true,
            Some(Err(())) => {
                errors.push("the inspection worker stopped unexpectedly".into());
                true
            }
        };
        if finished {
            let more = batch.errors.saturating_sub(ERRORS_PER_BATCH);
            if more > 0 {
                errors.push(format!(
                    "{more} more photos could not be inspected (see their thumbnails)"
                ));
            }
            self.stop_batch(true);
        }
    }

    fn poll_photo(&mut self, errors: &mut Vec<String>) {
        let Some((i, job)) = &mut self.photo_job else {
            return;
        };
        let i = *i;
        match job.poll() {
            None => {}
            Some(Ok(Ok(img))) => {
                self.photo = Some((i, img));
                self.photo_job = None;
            }
            Some(Ok(Err(e))) => {
                // The batch reports unreadable photos; only say it here
                // when the batch did not.
                if !matches!(
                    self.entries.get(i).map(|e| &e.state),
                    Some(EntryState::Failed(_))
                ) {
                    errors.push(e);
                }
                self.photo_job = None;
            }
            Some(Err(())) => {
                errors.push("the photo-loading worker stopped unexpectedly".into());
                self.photo_job = None;
            }
        }
    }

    fn poll_prompt(&mut self, errors: &mut Vec<String>) {
        let Some(job) = &mut self.prompt_job else {
            return;
        };
        match job.poll() {
            None => {}
            Some(Ok(Ok(t))) => {
                self.prompt_job = None;
                let selected = self.selected == Some(t.image) && self.face == t.face;
                if let Some(EntryState::Done(r)) =
                    self.entries.get_mut(t.image).map(|e| &mut e.state)
                    && let Some(f) = r.faces.get_mut(t.face)
                {
                    f.typed.push((t.text, t.map));
                    if selected {
                        self.prompt = f.output.prompts.len() + f.typed.len() - 1;
                        self.overlay = Overlay::Heatmap;
                    }
                }
            }
            Some(Ok(Err(e))) => {
                self.prompt_job = None;
                errors.push(e);
            }
            Some(Err(())) => {
                self.prompt_job = None;
                errors.push("the prompt worker stopped unexpectedly".into());
            }
        }
    }

    /// Loads the selected photo's picture when it is inspected and not in
    /// memory (only the selected photo's picture is kept).
    fn ensure_photo(&mut self, i: usize, repaint: Option<egui::Context>, errors: &mut Vec<String>) {
        let have = self.photo.as_ref().is_some_and(|(k, _)| *k == i)
            || self.photo_tex.as_ref().is_some_and(|(k, _)| *k == i);
        let loading = self.photo_job.as_ref().is_some_and(|(k, _)| *k == i);
        let inspected = self
            .entries
            .get(i)
            .is_some_and(|e| matches!(e.state, EntryState::Done(_)));
        if have || loading || !inspected {
            return;
        }
        let path = self.entries[i].path.clone();
        match Job::spawn("photo", "loading photo", repaint, move |_| {
            load_rgb(&path)
                .map(|img| overlay::shrink(&img, PHOTO_MAX_SIDE))
                .map_err(|e| e.to_string())
        }) {
            Ok(job) => self.photo_job = Some((i, job)),
            Err(e) => errors.push(e),
        }
    }

    /// Starts computing the heatmap of the typed prompt for the selected
    /// face.
    ///
    /// # Errors
    /// Why it cannot start (no model, no face, no text encoder, empty text).
    pub fn run_typed_prompt(&mut self, repaint: Option<egui::Context>) -> Result<(), String> {
        let text = self.typed_text.trim().to_owned();
        if text.is_empty() {
            return Err("type a prompt first".into());
        }
        let ModelState::Ready(model) = &self.model else {
            return Err("no model loaded".into());
        };
        if let Err(e) = &model.text {
            return Err(format!("this model cannot encode typed prompts: {e}"));
        }
        let model = Arc::clone(model);
        let Some((image, _, f)) = self.selected_face() else {
            return Err("select a face first".into());
        };
        let (face, aligned) = (self.face, f.aligned.clone());
        if let Some(j) = self.prompt_job.take() {
            j.cancel();
        }
        self.prompt_job = Some(Job::spawn(
            "prompt",
            format!("heatmap of \"{text}\""),
            repaint,
            move |_| {
                typed_map(&model, &aligned, &text).map(|map| TypedMap {
                    image,
                    face,
                    text,
                    map,
                })
            },
        )?);
        Ok(())
    }

    /// The prompts of the selected face: the model's, then the typed ones
    /// (marked).
    fn prompt_names(f: &FaceResult) -> Vec<String> {
        f.output
            .prompts
            .iter()
            .cloned()
            .chain(f.typed.iter().map(|(t, _)| format!("{t} (typed)")))
            .collect()
    }

    fn prompt_map(f: &FaceResult, k: usize) -> Option<&[f32]> {
        let p = f.output.alignment_maps.len();
        if k < p {
            f.output.alignment_maps.get(k).map(Vec::as_slice)
        } else {
            f.typed.get(k - p).map(|(_, m)| m.as_slice())
        }
    }

    /// The aligned face with the current overlay, as drawn.
    fn face_picture(&self, f: &FaceResult) -> ColorImage {
        let o = &f.output;
        match self.overlay {
            Overlay::Heatmap => match Self::prompt_map(f, self.prompt) {
                Some(map) => overlay::heatmap_overlay(
                    &f.aligned.image,
                    map,
                    o.grid,
                    overlay::map_range(map, self.stretch),
                    self.opacity,
                ),
                None => overlay::to_color_image(&f.aligned.image),
            },
            Overlay::Regions => {
                overlay::region_overlay(&f.aligned.image, &o.region_masks, o.grid, self.opacity)
            }
            Overlay::None => overlay::to_color_image(&f.aligned.image),
        }
    }

    /// The annotated face for export: the picture on screen with the
    /// aligned landmarks marked.
    #[must_use]
    pub fn annotated_face(&self) -> Option<ColorImage> {
        let (_, _, f) = self.selected_face()?;
        let mut img = self.face_picture(f);
        overlay::mark_points(&mut img, &f.aligned.landmarks_aligned, 1, Color32::WHITE);
        Some(img)
    }

    /// The threshold the loaded model suggests, if any.
    #[must_use]
    pub fn suggested_threshold(&self) -> Option<SuggestedThreshold> {
        match &self.model {
            ModelState::Ready(m) => m.model.head().config().threshold.clone(),
            _ => None,
        }
    }

    /// Every inspected photo with its faces as the engine reports them,
    /// and whether it is one of the model's training images (for the face
    /// table: `engine::table`), in the order opened.
    #[must_use]
    pub fn face_table(&self) -> Vec<(PathBuf, ImageScore, bool)> {
        self.entries
            .iter()
            .filter_map(|e| match &e.state {
                EntryState::Done(r) if !r.faces.is_empty() => {
                    let faces: Vec<FaceScore> = r
                        .faces
                        .iter()
                        .map(|f| FaceScore::new(&f.face, &f.output))
                        .collect();
                    Some((
                        e.path.clone(),
                        ImageScore {
                            score: faces[0].score,
                            size: [r.size.0, r.size.1],
                            faces_found: if r.precropped { 0 } else { faces.len() },
                            precropped: r.precropped,
                            faces,
                        },
                        r.trained_on,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// The strip's order: entry indices as opened, or by their highest
    /// face score (highest first; failed, pending and cancelled photos
    /// last, in the order opened).
    #[must_use]
    pub fn strip_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        if self.most_suspicious_first {
            let key = |i: usize| match &self.entries[i].state {
                EntryState::Done(r) => r.max_score(),
                _ => None,
            };
            // Stable: ties keep the order opened.
            order.sort_by(|&a, &b| match (key(a), key(b)) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
        }
        order
    }

    /// "N photos: … faces, … called fake at the threshold", for the row
    /// above the strip.
    fn tally(&self, threshold: f64) -> String {
        let (mut done, mut failed, mut face_count, mut called_fake) = (0, 0, 0, 0);
        let mut trained = 0;
        for e in &self.entries {
            match &e.state {
                EntryState::Done(r) => {
                    done += 1;
                    trained += usize::from(r.trained_on);
                    face_count += r.faces.len();
                    called_fake += r
                        .faces
                        .iter()
                        .filter(|f| verdict(f.output.score, threshold) == "fake")
                        .count();
                }
                EntryState::Failed(_) => failed += 1,
                EntryState::Pending | EntryState::Cancelled => {}
            }
        }
        let mut s = format!(
            "{} photos, {done} inspected: {face_count} faces, {called_fake} likely fake at {threshold:.3}",
            self.entries.len()
        );
        if failed > 0 {
            let _ = write!(s, ", {failed} could not be inspected");
        }
        if trained > 0 {
            let _ = write!(s, "; {trained} of the photos trained this model");
        }
        s
    }

    /// The selected face's full result as JSON: photo, box, landmarks,
    /// model (and what it was trained on), threshold, verdict, every model
    /// output, typed heatmaps.
    #[must_use]
    pub fn face_json(&self, threshold: f64) -> Option<serde_json::Value> {
        let (_, e, f) = self.selected_face()?;
        let (precropped, trained_on) = match &e.state {
            EntryState::Done(r) => (r.precropped, r.trained_on),
            _ => (false, false),
        };
        let (model, model_training) = match &self.model {
            ModelState::Ready(m) => (
                Some(m.dir.display().to_string()),
                m.model.head().config().training.clone(),
            ),
            _ => (None, None),
        };
        let mut v = serde_json::json!({
            "image": e.path.display().to_string(),
            "face": self.face,
            "box": f.face.bbox,
            "detector_score": f.face.score,
            "landmarks": f.face.landmarks,
            "precropped": precropped,
            "training_image": trained_on,
            "landmarks_aligned": f.aligned.landmarks_aligned,
            "model": model,
            "model_training": model_training,
            "threshold": threshold,
            "verdict": verdict(f.output.score, threshold),
        });
        let out = serde_json::to_value(&f.output).ok()?;
        if let (Some(obj), serde_json::Value::Object(o)) = (v.as_object_mut(), out) {
            obj.extend(o);
            obj.insert(
                "typed_prompts".into(),
                f.typed
                    .iter()
                    .map(|(t, m)| serde_json::json!({"text": t, "alignment_map": m}))
                    .collect(),
            );
        }
        Some(v)
    }

    /// The threshold slider, and the model's suggested threshold: in use
    /// (`auto`) until the slider sets another, one click back.
    fn threshold_ui(&self, ui: &mut Ui, threshold: &mut f64, auto: &mut bool) {
        let suggested = self.suggested_threshold();
        let before = *threshold;
        let moved = ui
            .add(
                egui::Slider::new(threshold, 0.0..=1.0)
                    .max_decimals(3)
                    .text("threshold (score >= threshold: fake)"),
            )
            .changed();
        // The slider rounds what it shows to its decimals: only a value
        // other than that is the user's.
        if moved && (*threshold - egui::emath::round_to_decimals(before, 3)).abs() > 1e-9 {
            *auto = false;
        }
        if *auto && let Some(s) = &suggested {
            *threshold = s.value;
        }
        if let Some(s) = &suggested {
            let following = *auto && (*threshold - s.value).abs() <= 1e-9;
            if ui
                .add_enabled(
                    !following,
                    egui::Button::new(format!("use the model's {:.3}", s.value)),
                )
                .on_hover_text(format!(
                    "The threshold this model suggests: {}. Chosen, it follows the \
                     model in use (sfam scan's default too).",
                    s.rule
                ))
                .on_disabled_hover_text(format!("in use, the model's: {}", s.rule))
                .clicked()
            {
                *threshold = s.value;
                *auto = true;
            }
        }
    }

    /// No photos yet: what to do, and the sample faces.
    fn empty_ui(&self, ui: &mut Ui, requests: &mut Vec<Request>) {
        ui.label(
            "No photos yet. Open photos or a folder of photos (or drop them here): \
             each face is found, aligned and scored by the model.",
        );
        if self.samples.is_some()
            && ui
                .button("Open the sample faces")
                .on_hover_text(
                    "the 20 photos bundled in assets/samples: real and fake faces \
                     of CIPLAB (edited eyes, nose, mouth), DFDC (face swaps) and \
                     FFHQ / StyleGAN2 (synthesised faces). 12 of them trained the \
                     bundled model (assets/samples/samples.csv says which): its \
                     scores on those are no test of it.",
                )
                .clicked()
        {
            requests.push(Request::OpenSamples);
        }
    }

    /// Draws the view; returns what the user asked for.
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        (threshold, auto): (&mut f64, &mut bool),
        tight_crops: &mut bool,
        chosen_model: Option<&PathBuf>,
        errors: &mut Vec<String>,
    ) -> Vec<Request> {
        let mut requests = Vec::new();
        self.toolbar_ui(ui, chosen_model, &mut requests);
        self.model_ui(ui, chosen_model, &mut requests);
        self.progress_ui(ui);
        ui.horizontal_wrapped(|ui| {
            self.threshold_ui(ui, threshold, auto);
            ui.separator();
            ui.checkbox(
                tight_crops,
                "no face detected: use the whole photo as a face crop",
            )
            .on_hover_text(
                "For tight face crops (like DFDC's), where the detector may find nothing. \
                     Applies to photos inspected from now on.",
            );
        });
        ui.separator();
        if self.entries.is_empty() {
            self.empty_ui(ui, &mut requests);
            return requests;
        }
        ui.horizontal_wrapped(|ui| {
            ui.label(self.tally(*threshold));
            ui.separator();
            ui.checkbox(&mut self.most_suspicious_first, "most suspicious first")
                .on_hover_text("Order the photos by their highest face score");
            let any = self
                .entries
                .iter()
                .any(|e| matches!(e.state, EntryState::Done(_)));
            if ui
                .add_enabled(any, egui::Button::new("Export table..."))
                .on_hover_text(
                    "Every inspected face as a row (CSV) or an object with the model's full \
                     output (JSON): score, verdict at the threshold, box, the largest regional \
                     part; the table `sfam scan` writes",
                )
                .clicked()
            {
                requests.push(Request::ExportFaceTable);
            }
        });
        self.strip_ui(ui, *threshold);
        ui.separator();
        // Three columns: the photo; the face with its verdict and overlay;
        // the charts. Each scrolls on its own.
        let avail = ui.available_size();
        let gap = ui.spacing().item_spacing.x;
        let widths = [
            (avail.x * 0.3 - gap).max(120.0),
            (avail.x * 0.3 - gap).max(120.0),
            (avail.x * 0.4 - gap).max(120.0),
        ];
        ui.horizontal_top(|ui| {
            for (k, width) in widths.into_iter().enumerate() {
                ui.allocate_ui_with_layout(
                    egui::vec2(width, avail.y),
                    egui::Layout::top_down(egui::Align::Min),
                    |ui| {
                        ui.set_width(width);
                        egui::ScrollArea::vertical()
                            .id_salt(("inspect_column", k))
                            .auto_shrink([false, false])
                            .show(ui, |ui| match k {
                                0 => self.photo_ui(ui, *threshold),
                                1 => self.face_ui(ui, *threshold, &mut requests, errors),
                                _ => self.charts_ui(ui),
                            });
                    },
                );
                if k < 2 {
                    ui.separator();
                }
            }
        });
        requests
    }

    fn toolbar_ui(&self, ui: &mut Ui, chosen: Option<&PathBuf>, requests: &mut Vec<Request>) {
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open photos...").clicked() {
                requests.push(Request::OpenImagesDialog);
            }
            if ui.button("Open folder...").clicked() {
                requests.push(Request::OpenFolderDialog);
            }
            ui.separator();
            if ui.button("Choose model folder...").clicked() {
                requests.push(Request::ChooseModelDialog);
            }
            if chosen.is_some()
                && ui
                    .add_enabled(
                        self.bundled.is_some(),
                        egui::Button::new("Use bundled model"),
                    )
                    .on_disabled_hover_text("there is no bundled model yet")
                    .clicked()
            {
                requests.push(Request::UseBundledModel);
            }
            ui.label(RichText::new("or drop photos or a folder here").weak());
        });
    }

    fn model_ui(&mut self, ui: &mut Ui, chosen: Option<&PathBuf>, requests: &mut Vec<Request>) {
        match &self.model {
            ModelState::Idle | ModelState::Loading(..) => {}
            ModelState::NoBundled => {
                ui.horizontal_wrapped(|ui| {
                    ui.colored_label(
                        ui.visuals().warn_fg_color,
                        format!(
                            "No bundled model yet ({BUNDLED_MODEL}/{HEAD_CONFIG_FILE} does not exist); \
                             choose a model folder."
                        ),
                    );
                    if ui.button("Pick a model folder...").clicked() {
                        requests.push(Request::ChooseModelDialog);
                    }
                });
            }
            ModelState::Failed(dir, e) => {
                let dir = dir.clone();
                let e = e.clone();
                ui.horizontal_wrapped(|ui| {
                    ui.colored_label(
                        ui.visuals().error_fg_color,
                        format!("Model not loaded: {}", dir.display()),
                    )
                    .on_hover_text(e);
                    if ui.button("Retry").clicked() {
                        self.load_model(dir.clone(), Some(ui.ctx().clone()));
                    }
                    if ui.button("Pick another model folder...").clicked() {
                        requests.push(Request::ChooseModelDialog);
                    }
                });
            }
            ModelState::Ready(m) => {
                let c = m.model.head().config();
                let source = if chosen.is_some() {
                    "chosen"
                } else {
                    "bundled"
                };
                let backbone = c.backbone.clone().unwrap_or_else(|| "CLIP".to_owned());
                let text = if m.text.is_ok() {
                    "CLIP text encoder: typed prompts available"
                } else {
                    "no text encoder"
                };
                ui.label(
                    RichText::new(format!(
                        "Model ({source}): {} - {backbone}, {}x{} patches, {} regions, {} experts (top {}), {} prompts; {text}",
                        m.dir.display(),
                        c.grid[0],
                        c.grid[1],
                        c.regions.len(),
                        c.num_experts,
                        c.top_k,
                        c.prompts.len(),
                    ))
                    .weak(),
                );
                super::model_note_label(ui, &c.training_note());
            }
        }
    }

    fn progress_ui(&mut self, ui: &mut Ui) {
        let mut cancel_model = false;
        let mut cancel_batch = false;
        if let ModelState::Loading(_, job) = &self.model {
            cancel_model = job.progress_row(ui, "Cancel", 160.0);
        }
        if let Some(job) = &self.list_job {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(&job.title);
            });
        }
        if let Some(b) = &self.batch {
            cancel_batch = b.job.progress_row(ui, "Cancel inspection", 160.0);
        }
        if let Some(job) = &self.prompt_job {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(&job.title);
            });
        }
        if cancel_model && let ModelState::Loading(dir, job) = &self.model {
            job.cancel();
            self.model = ModelState::Failed(dir.clone(), "cancelled".into());
        }
        if cancel_batch {
            self.cancel_batch();
        }
    }

    fn strip_ui(&mut self, ui: &mut Ui, threshold: f64) {
        let mut clicked = None;
        let side = 96.0;
        egui::ScrollArea::horizontal()
            .id_salt("thumbs")
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    for i in self.strip_order() {
                        let selected = self.selected == Some(i);
                        let e = &mut self.entries[i];
                        ui.vertical(|ui| {
                            ui.set_width(side + 8.0);
                            let (rect, resp) = ui.allocate_exact_size(
                                egui::vec2(side + 8.0, side + 8.0),
                                egui::Sense::click(),
                            );
                            let fill = if selected {
                                ui.visuals().selection.bg_fill
                            } else {
                                ui.visuals().faint_bg_color
                            };
                            ui.painter().rect_filled(rect, 4.0, fill);
                            let name = e.path.file_name().map_or_else(
                                || e.path.display().to_string(),
                                |s| s.to_string_lossy().into_owned(),
                            );
                            let (caption, color) = thumb_ui(ui, e, rect, side, threshold);
                            if resp.on_hover_text(e.path.display().to_string()).clicked() {
                                clicked = Some(i);
                            }
                            ui.label(RichText::new(caption).color(color).small());
                            ui.label(RichText::new(truncate(&name, 16)).small().weak());
                        });
                    }
                });
            });
        if let Some(i) = clicked {
            self.select(i);
        }
    }

    #[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one picture with its boxes
    fn photo_ui(&mut self, ui: &mut Ui, threshold: f64) {
        let Some(i) = self.selected else {
            ui.label("Select a photo above.");
            return;
        };
        let Some(entry) = self.entries.get(i) else {
            return;
        };
        ui.strong(entry.path.display().to_string());
        let result = match &entry.state {
            EntryState::Pending => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(match self.model {
                        ModelState::Ready(_) | ModelState::Loading(..) => {
                            "waiting to be inspected..."
                        }
                        _ => "waiting for a model",
                    });
                });
                return;
            }
            EntryState::Cancelled => {
                ui.label("not inspected (cancelled)");
                return;
            }
            EntryState::Failed(e) => {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    format!("Could not inspect: {e}"),
                );
                return;
            }
            EntryState::Done(r) => r,
        };
        if let Some((k, img)) = self.photo.take() {
            if k == i {
                let tex = ui.ctx().load_texture(
                    "inspect-photo",
                    overlay::to_color_image(&img),
                    TextureOptions::LINEAR,
                );
                self.photo_tex = Some((k, tex));
            } else {
                self.photo = Some((k, img));
            }
        }
        let n = result.faces.len();
        if self.face >= n {
            self.face = 0;
        }
        ui.label(if result.precropped {
            "No face detected: the whole photo was used as a tight face crop (landmarks assumed)."
                .to_owned()
        } else if n == 1 {
            "1 face".to_owned()
        } else {
            format!("{n} faces (click a box or a button to select)")
        });
        let (w, h) = result.size;
        #[allow(clippy::cast_precision_loss)]
        let (w, h) = (w as f32, h as f32);
        let avail = ui.available_width();
        let scale = (avail / w).min(520.0 / h).min(4.0);
        let size = egui::vec2(w * scale, h * scale);
        let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
        self.photo_rect = Some(rect);
        match &self.photo_tex {
            Some((k, tex)) if *k == i => {
                ui.painter().image(
                    tex.id(),
                    rect,
                    egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                    Color32::WHITE,
                );
            }
            _ => {
                ui.painter()
                    .rect_filled(rect, 0.0, ui.visuals().faint_bg_color);
                ui.put(rect, egui::Spinner::new());
            }
        }
        let to_screen = |p: [f32; 2]| rect.min + egui::vec2(p[0] * scale, p[1] * scale);
        let painter = ui.painter_at(rect);
        for (k, f) in result.faces.iter().enumerate() {
            let b = f.face.bbox;
            let r = egui::Rect::from_min_max(to_screen([b[0], b[1]]), to_screen([b[2], b[3]]));
            let color = if verdict(f.output.score, threshold) == "fake" {
                FAKE_COLOR
            } else {
                REAL_COLOR
            };
            let width = if k == self.face { 3.0 } else { 1.5 };
            painter.rect_stroke(r, 2.0, (width, color), egui::StrokeKind::Outside);
            // The face's number and score on a dark tag above its box
            // (inside it when the box touches the top).
            let galley = painter.layout_no_wrap(
                format!("{} {:.2}", k + 1, f.output.score),
                egui::FontId::proportional(13.0),
                color,
            );
            let above = r.left_top() - egui::vec2(-1.0, galley.size().y + 3.0);
            let at = if above.y >= rect.top() {
                above
            } else {
                r.left_top() + egui::vec2(3.0, 3.0)
            };
            painter.rect_filled(
                egui::Rect::from_min_size(at, galley.size()).expand(2.0),
                2.0,
                Color32::from_black_alpha(190),
            );
            painter.galley(at, galley, color);
            if k == self.face {
                for p in f.face.landmarks {
                    painter.circle_filled(to_screen(p), 2.5, Color32::from_rgb(80, 230, 80));
                }
            }
        }
        if resp.clicked()
            && let Some(pos) = resp.interact_pointer_pos()
        {
            let p = (pos - rect.min) / scale;
            let hit = result
                .faces
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    let b = f.face.bbox;
                    (b[0]..=b[2]).contains(&p.x) && (b[1]..=b[3]).contains(&p.y)
                })
                .min_by(|a, b| a.1.face.area().total_cmp(&b.1.face.area()))
                .map(|(k, _)| k);
            if let Some(k) = hit {
                self.face = k;
            }
        }
        if n > 1 {
            let mut pick = None;
            ui.horizontal_wrapped(|ui| {
                for (k, f) in result.faces.iter().enumerate() {
                    if ui
                        .selectable_label(
                            k == self.face,
                            format!("Face {}: {:.3}", k + 1, f.output.score),
                        )
                        .clicked()
                    {
                        pick = Some(k);
                    }
                }
            });
            if let Some(k) = pick {
                self.face = k;
            }
        }
    }

    #[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one linear page
    fn face_ui(
        &mut self,
        ui: &mut Ui,
        threshold: f64,
        requests: &mut Vec<Request>,
        errors: &mut Vec<String>,
    ) {
        let Some((i, _, f)) = self.selected_face() else {
            return;
        };
        let face_index = self.face;
        let output = f.output.clone();
        let names = Self::prompt_names(f);
        let typed = f.typed.len();
        let landmarks = f.aligned.landmarks_aligned;
        let trained_on = matches!(&self.entries[i].state, EntryState::Done(r) if r.trained_on);
        let o = &output;
        let fake = verdict(o.score, threshold) == "fake";
        let (word, color) = if fake {
            ("FAKE", FAKE_COLOR)
        } else {
            ("REAL", REAL_COLOR)
        };
        ui.horizontal(|ui| {
            ui.label(
                RichText::new(format!("Likely {word}"))
                    .size(26.0)
                    .strong()
                    .color(color),
            );
            ui.vertical(|ui| {
                let cmp = if fake { ">=" } else { "<" };
                ui.label(
                    RichText::new(format!(
                        "score {:.4} {cmp} threshold {threshold:.2}",
                        o.score
                    ))
                    .strong(),
                );
                ui.label(
                    RichText::new(format!(
                        "logit {:+.3} = global {:+.3} + regions {:+.3}",
                        o.logit,
                        o.global_logit,
                        o.logit - o.global_logit
                    ))
                    .weak(),
                );
            });
        });
        if trained_on {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                "A training image of this model (the same bytes are in its \
                 training_images.txt): this score is no test of the model.",
            );
        }
        ui.horizontal(|ui| {
            if ui.button("Export face (PNG)...").clicked() {
                requests.push(Request::ExportFacePng);
            }
            if ui.button("Export result (JSON)...").clicked() {
                requests.push(Request::ExportFaceJson);
            }
            ui.label(RichText::new(format!("face {} of photo {}", face_index + 1, i + 1)).weak());
        });
        ui.separator();

        // The aligned face and its overlay.
        if self.prompt >= names.len() {
            self.prompt = usize::from(names.len() > 1);
        }
        let key = FaceKey {
            image: i,
            face: face_index,
            overlay: self.overlay,
            prompt: self.prompt,
            opacity: self.opacity,
            stretch: self.stretch,
            typed,
        };
        if self.face_tex.as_ref().is_none_or(|(k, _)| *k != key)
            && let Some(picture) = self.selected_face().map(|(_, _, f)| self.face_picture(f))
        {
            let tex = ui
                .ctx()
                .load_texture("inspect-face", picture, TextureOptions::LINEAR);
            self.face_tex = Some((key, tex));
        }
        if self.legend_tex.is_none() {
            self.legend_tex = Some(ui.ctx().load_texture(
                "inspect-legend",
                overlay::legend_strip(256, 1),
                TextureOptions::LINEAR,
            ));
        }
        let map = self
            .selected_face()
            .and_then(|(_, _, f)| Self::prompt_map(f, self.prompt).map(<[f32]>::to_vec));
        let range = map.as_deref().map(|m| overlay::map_range(m, self.stretch));
        let regions: Vec<String> = o.regions.clone();
        ui.strong("Aligned face");
        {
            let side = ui.available_width().clamp(160.0, 320.0);
            let (rect, _) = ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
            if let Some((_, tex)) = &self.face_tex {
                ui.painter().image(
                    tex.id(),
                    rect,
                    egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                    Color32::WHITE,
                );
            }
            #[allow(clippy::cast_precision_loss)]
            let s = side / sfam_studio::face::ALIGNED_SIZE as f32;
            for p in landmarks {
                ui.painter().circle_filled(
                    rect.min + egui::vec2(p[0] * s, p[1] * s),
                    2.0,
                    Color32::WHITE,
                );
            }
            ui.vertical(|ui| {
                ui.horizontal(|ui| {
                    ui.radio_value(&mut self.overlay, Overlay::Heatmap, "heatmap");
                    ui.radio_value(&mut self.overlay, Overlay::Regions, "regions");
                    ui.radio_value(&mut self.overlay, Overlay::None, "none");
                });
                ui.add(
                    egui::Slider::new(&mut self.opacity, 0.0..=1.0)
                        .max_decimals(2)
                        .text("overlay opacity"),
                );
                match self.overlay {
                    Overlay::Heatmap => {
                        let current = names.get(self.prompt).cloned().unwrap_or_default();
                        let width = (ui.available_width() - 70.0).max(120.0);
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        let chars = (width / 7.5) as usize;
                        egui::ComboBox::new("prompt_select", "prompt")
                            .width(width)
                            .selected_text(truncate(&current, chars))
                            .show_ui(ui, |ui| {
                                for (k, name) in names.iter().enumerate() {
                                    ui.selectable_value(&mut self.prompt, k, name);
                                }
                            });
                        ui.checkbox(&mut self.stretch, "stretch colours to this map's range");
                        if let (Some(tex), Some((lo, hi))) = (&self.legend_tex, range) {
                            ui.label(
                                RichText::new(
                                    "share of each patch's alignment given to this prompt \
                                     (softmax over the prompts):",
                                )
                                .small(),
                            );
                            ui.horizontal(|ui| {
                                ui.label(format!("{lo:.3}"));
                                let (r, _) = ui.allocate_exact_size(
                                    egui::vec2(160.0, 14.0),
                                    egui::Sense::hover(),
                                );
                                ui.painter().image(
                                    tex.id(),
                                    r,
                                    egui::Rect::from_min_max(
                                        egui::pos2(0.0, 0.0),
                                        egui::pos2(1.0, 1.0),
                                    ),
                                    Color32::WHITE,
                                );
                                ui.label(format!("{hi:.3}"));
                            });
                            if let Some(m) = &map {
                                #[allow(clippy::cast_precision_loss)] // small counts
                                let (mean, uniform) = (
                                    m.iter().sum::<f32>() / m.len().max(1) as f32,
                                    1.0 / names.len().max(1) as f32,
                                );
                                ui.label(
                                    RichText::new(format!(
                                        "mean {mean:.3} (uniform would be {uniform:.3})"
                                    ))
                                    .small()
                                    .weak(),
                                );
                            }
                        }
                    }
                    Overlay::Regions => {
                        egui::Grid::new("region_legend").show(ui, |ui| {
                            for (r, name) in regions.iter().enumerate() {
                                let (rect, _) = ui.allocate_exact_size(
                                    egui::vec2(12.0, 12.0),
                                    egui::Sense::hover(),
                                );
                                ui.painter()
                                    .rect_filled(rect, 2.0, overlay::region_color(r));
                                ui.label(region_label(name));
                                if r % 2 == 1 {
                                    ui.end_row();
                                }
                            }
                        });
                    }
                    Overlay::None => {}
                }
            });
        }
        ui.separator();
        self.typed_prompt_ui(ui, errors);
    }

    /// The selected face's region contributions and routing.
    fn charts_ui(&self, ui: &mut Ui) {
        let Some((_, _, f)) = self.selected_face() else {
            return;
        };
        contributions_ui(ui, &f.output);
        ui.separator();
        routing_ui(ui, &f.output);
    }

    fn typed_prompt_ui(&mut self, ui: &mut Ui, errors: &mut Vec<String>) {
        let text_ok = match &self.model {
            ModelState::Ready(m) => m.text.as_ref().err().cloned(),
            _ => Some("no model loaded".into()),
        };
        ui.add_space(4.0);
        ui.strong("Your own prompt");
        match text_ok {
            None => {
                let mut go = false;
                ui.horizontal(|ui| {
                    let label = ui.label("Prompt:");
                    let width = (ui.available_width() - 110.0).max(100.0);
                    let r = ui
                        .add(
                            egui::TextEdit::singleline(&mut self.typed_text)
                                .hint_text("e.g. a face with blurry teeth")
                                .desired_width(width),
                        )
                        .labelled_by(label.id);
                    go |= r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                    go |= ui
                        .add_enabled(self.prompt_job.is_none(), egui::Button::new("Show heatmap"))
                        .clicked();
                });
                if go && let Err(e) = self.run_typed_prompt(Some(ui.ctx().clone())) {
                    errors.push(e);
                }
                ui.label(
                    RichText::new(
                        "Encoded by the model's CLIP text tower and added to its prompts; the \
                         heatmap is this prompt's share of each patch. The score above uses only \
                         the model's own prompts.",
                    )
                    .small()
                    .weak(),
                );
            }
            Some(why) => {
                ui.label(
                    RichText::new(
                        "Typing a prompt needs a CLIP text encoder, which this model does not have: \
                         its prompt vectors are free learned embeddings, named by the texts above.",
                    )
                    .weak(),
                )
                .on_hover_text(why);
            }
        }
    }
}

/// The thumbnail of an entry in `rect` (texture made on first use); its
/// caption and colour.
#[allow(clippy::many_single_char_names)]
fn thumb_ui(
    ui: &Ui,
    e: &mut ImageEntry,
    rect: egui::Rect,
    side: f32,
    threshold: f64,
) -> (String, Color32) {
    let weak = ui.visuals().weak_text_color();
    match &e.state {
        EntryState::Pending => {
            ui.painter().text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "...",
                egui::FontId::proportional(16.0),
                weak,
            );
            ("waiting".into(), weak)
        }
        EntryState::Cancelled => ("cancelled".into(), weak),
        EntryState::Failed(_) => {
            let c = ui.visuals().error_fg_color;
            ui.painter().text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "!",
                egui::FontId::proportional(28.0),
                c,
            );
            ("error".into(), c)
        }
        EntryState::Done(r) => {
            let tex = e.thumb_tex.get_or_insert_with(|| {
                ui.ctx().load_texture(
                    format!("thumb-{}", e.path.display()),
                    overlay::to_color_image(&r.thumb),
                    TextureOptions::LINEAR,
                )
            });
            let [w, h] = tex.size();
            #[allow(clippy::cast_precision_loss)]
            let s = side / (w.max(h).max(1) as f32);
            #[allow(clippy::cast_precision_loss)]
            let shown = egui::vec2(w as f32 * s, h as f32 * s);
            let img_rect = egui::Rect::from_center_size(rect.center(), shown);
            ui.painter().image(
                tex.id(),
                img_rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
            match r.max_score() {
                Some(s) => {
                    let fake = verdict(s, threshold) == "fake";
                    let faces = r.faces.len();
                    let mut text = if faces > 1 {
                        format!("{s:.3} ({faces} faces)")
                    } else {
                        format!("{s:.3}")
                    };
                    if r.trained_on {
                        text.push_str(" · trained");
                    }
                    (text, if fake { FAKE_COLOR } else { REAL_COLOR })
                }
                None => ("no face".into(), weak),
            }
        }
    }
}

/// Each region's part of the logit as a bar diverging from zero (towards
/// fake: right, orange; towards real: left, blue), with the global part.
fn contributions_ui(ui: &mut Ui, o: &SfamOutput) {
    ui.strong("Contribution of each region to the logit (attention x region logit)")
        .on_hover_text(
            "Where the model looked, not proof of where an edit is: on edited faces it was not \
             trained on, the bundled model's region logits tell an edited eye, nose or mouth \
             from an unedited one only weakly (docs/MODEL.md, \"Do the explanations point at \
             the edit?\").",
        );
    let max = o
        .region_contributions
        .iter()
        .chain(std::iter::once(&o.global_logit))
        .fold(0.0_f32, |m, v| m.max(v.abs()))
        .max(1e-6);
    let bar_width = (ui.available_width() - 340.0).clamp(80.0, 260.0);
    egui::Grid::new("contributions")
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "part",
                "towards real | towards fake",
                "value",
                "attention",
                "region logit",
            ] {
                ui.label(RichText::new(h).small().weak());
            }
            ui.end_row();
            let row = |ui: &mut Ui, name: &str, v: f32, extra: Option<(f32, f32)>| {
                ui.label(name);
                let (rect, _) =
                    ui.allocate_exact_size(egui::vec2(bar_width, 14.0), egui::Sense::hover());
                let mid = rect.center().x;
                ui.painter().line_segment(
                    [egui::pos2(mid, rect.top()), egui::pos2(mid, rect.bottom())],
                    (1.0, ui.visuals().weak_text_color()),
                );
                let len = v / max * (bar_width / 2.0);
                let bar = egui::Rect::from_x_y_ranges(
                    mid.min(mid + len)..=mid.max(mid + len),
                    rect.top() + 2.0..=rect.bottom() - 2.0,
                );
                let color = if v >= 0.0 { FAKE_COLOR } else { REAL_COLOR };
                ui.painter().rect_filled(bar, 1.0, color);
                ui.monospace(format!("{v:+.4}"));
                if let Some((a, l)) = extra {
                    ui.monospace(format!("{a:.3}"));
                    ui.monospace(format!("{l:+.3}"));
                } else {
                    ui.label("");
                    ui.label("");
                }
                ui.end_row();
            };
            row(ui, "global (whole face)", o.global_logit, None);
            for (r, name) in o.regions.iter().enumerate() {
                let v = o.region_contributions.get(r).copied().unwrap_or(0.0);
                let a = o.region_attention.get(r).copied().unwrap_or(0.0);
                let l = o.region_logits.get(r).copied().unwrap_or(0.0);
                row(ui, region_label(name), v, Some((a, l)));
            }
        });
}

/// The routing weights (regions x experts) as a coloured table: the
/// weights used (top-k, renormalised); the router's full softmax on hover.
fn routing_ui(ui: &mut Ui, o: &SfamOutput) {
    ui.strong("Mixture-of-experts routing weights (regions x experts)");
    let experts = o.routing.first().map_or(0, Vec::len);
    egui::Grid::new("routing")
        .spacing([2.0, 2.0])
        .show(ui, |ui| {
            ui.label(RichText::new("region").small().weak());
            for e in 0..experts {
                ui.label(RichText::new(format!("expert {}", e + 1)).small().weak());
            }
            ui.end_row();
            for (r, name) in o.regions.iter().enumerate() {
                ui.label(region_label(name));
                for e in 0..experts {
                    let g = o
                        .routing
                        .get(r)
                        .and_then(|row| row.get(e))
                        .copied()
                        .unwrap_or(0.0);
                    let p = o
                        .router_probs
                        .get(r)
                        .and_then(|row| row.get(e))
                        .copied()
                        .unwrap_or(0.0);
                    let fill = overlay::blend(ui.visuals().faint_bg_color, ROUTING_COLOR, g);
                    let text = if g > 0.0 {
                        format!("{g:.2}")
                    } else {
                        "-".to_owned()
                    };
                    let text_color = if g > 0.5 {
                        Color32::BLACK
                    } else {
                        ui.visuals().text_color()
                    };
                    egui::Frame::new()
                        .fill(fill)
                        .inner_margin(egui::Margin::symmetric(6, 2))
                        .show(ui, |ui| {
                            ui.set_min_width(52.0);
                            ui.label(RichText::new(text).monospace().color(text_color))
                        })
                        .response
                        .on_hover_text(format!(
                            "{}: router probability {p:.3}; weight used {g:.3}",
                            region_label(name)
                        ));
                }
                ui.end_row();
            }
        });
    ui.label(
        RichText::new(
            "Each region is sent to its top experts; the weights of a row sum to 1. \
             Hover a cell for the router's full probability.",
        )
        .small()
        .weak(),
    );
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(3)).collect();
    t.push_str("...");
    t
}
