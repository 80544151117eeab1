//! The scoring engine (issue 5): dataset images (or an analyst's
//! unlabelled photos) in, one SFAM score per image out, with progress,
//! cancellation, a disk cache and per-file errors; [`table`] writes the
//! per-face table of unlabelled photos.
//!
//! Discover ([`Item::from_discovery`]) → read and hash → cache lookup →
//! decode → detect and align → preprocess (a pool of named worker threads,
//! rayon) → batches → model (the calling thread) → scores. Stages are
//! joined by bounded channels, so memory stays bounded however large the
//! dataset: at most a few batches of prepared faces are in flight, and
//! what is kept per image is one small [`ScoreRecord`]. While the model
//! runs one batch, the workers prepare the next ones.
//!
//! Faces: every image is searched with [`FaceOptions::tight_crops`] on: a
//! photo's faces are detected and aligned; an image in which no face is
//! detected is taken whole as a tight face crop (like DFDC's) and flagged
//! [`ImageScore::precropped`]. Up to [`EngineOptions::max_faces`] faces
//! per image are scored, largest first; the image's score — the one in
//! the score table — is that of the first (largest) face.
//!
//! Errors: a file that cannot be read, decoded or searched is an
//! [`ItemError`] naming it, reported in [`Report::errors`] and through
//! [`Event::Image`]; the run goes on. [`EngineError`] is for what stops
//! the run itself (cancellation, a model that fails).
//!
//! Cache: see [`cache`]. A score depends on the image's bytes, the model
//! ([`ModelId`]), [`PREPROCESS_VERSION`] and the detector settings.
//!
//! Nothing here knows about a terminal or a window: progress and results
//! come as [`Event`]s to a callback on the calling thread, which the CLI
//! turns into a progress bar and the desktop app into channel messages.

pub mod cache;
mod pipeline;
pub mod table;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cache::{Cache, CacheKey, ContentHash, Lookup, ModelId};
pub use pipeline::Engine;

use crate::data::Label;
use crate::data::datasets::Discovery;
use crate::data::scores::ScoreRecord;
use crate::face::{Face, FaceError, FaceOptions, ImageFacesError};
use crate::model::training_images::TrainingImages;
use crate::model::{ModelError, SfamOutput};

/// Version of everything between an image file and the model's input:
/// decoding, face detection, alignment, region masks and preprocessing.
/// Bump it when any of them changes what the model sees: cached scores of
/// other versions are then not used.
pub const PREPROCESS_VERSION: u32 = 2;

/// The folder where `sfam score` keeps its cache, beside the output:
/// `<out>` + this suffix (e.g. `s.csv.cache/`).
pub const CACHE_SUFFIX: &str = ".cache";

/// One image to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The image file.
    pub path: PathBuf,
    /// The dataset (domain) it belongs to; may be empty for unlabelled
    /// photos.
    pub dataset: String,
    /// Ground truth; `None` for photos without one (an analyst's), which
    /// are scored like the others but get no [`Report::records`] row.
    pub label: Option<Label>,
    /// Source video, when known.
    pub video: Option<String>,
}

impl Item {
    /// Every image of a discovery, datasets in order, each sorted by path.
    #[must_use]
    pub fn from_discovery(discovery: &Discovery) -> Vec<Self> {
        discovery
            .datasets
            .iter()
            .flat_map(|d| {
                d.items.iter().map(|i| Self {
                    path: i.path.clone(),
                    dataset: d.name.clone(),
                    label: Some(i.label),
                    video: i.video.clone(),
                })
            })
            .collect()
    }
}

/// How the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Faces per model call (at least 1). A call may take a few more when
    /// an image's faces would otherwise be split, or fewer at the end.
    pub batch_size: usize,
    /// Faces scored per image, largest first (at least 1).
    pub max_faces: usize,
    /// Worker threads that read, decode and detect; 0 = one per CPU.
    pub workers: usize,
    /// Precision of the backbone's matrix products ([`Engine::load`]
    /// applies it; a model given to [`Engine::new`] keeps its own).
    pub precision: crate::model::Precision,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_faces: 1,
            workers: 0,
            precision: crate::model::Precision::Auto,
        }
    }
}

/// The face options the engine always uses (see the module docs).
pub const FACE_OPTIONS: FaceOptions = FaceOptions { tight_crops: true };

/// Why the run as a whole stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller asked to stop. Nothing half-done was written: cache
    /// entries already made are whole.
    #[error("cancelled")]
    Cancelled,
    /// The model could not be loaded or failed while running.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The face detector could not be loaded.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// A model file could not be read while computing its identity.
    #[error("cannot read model file ({source}): {}", path.display())]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The cache folder could not be created.
    #[error("cannot create the score cache ({source}): {}", path.display())]
    Cache {
        /// The folder or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Invalid [`EngineOptions`].
    #[error("invalid engine options: {0}")]
    Options(String),
    /// A worker thread could not be started or stopped unexpectedly (a
    /// bug or an exhausted system).
    #[error("engine worker failed: {0}")]
    Worker(String),
}

/// Why one image has no score. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// Unreadable or undecodable file, no face, or failed detection.
    #[error(transparent)]
    Faces(#[from] ImageFacesError),
    /// The face could not be turned into model input, or preparing the
    /// image failed unexpectedly (a panic in a decoder, caught).
    #[error("cannot prepare the image for the model ({message}): {}", path.display())]
    Prepare {
        /// The image.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The model's score is not a number (a broken model, not the image's
    /// fault; the score is not cached).
    #[error("the model gave a non-finite score: {}", path.display())]
    NonFinite {
        /// The image.
        path: PathBuf,
    },
}

/// A per-file error, with where the file is in the input.
#[derive(Debug)]
pub struct FileError {
    /// Index of the item in the input.
    pub index: usize,
    /// The file.
    pub path: PathBuf,
    /// What went wrong (its text names the file too).
    pub error: ItemError,
}

/// One scored face: where it is, and the model's output that explains the
/// score (the `--details` record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceScore {
    /// `[x1, y1, x2, y2]` in the image's pixels (after EXIF orientation).
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The detector's face probability; 0 for a precropped image.
    pub detector_score: f32,
    /// The 5 landmarks in the image's pixels.
    pub landmarks: [[f32; 2]; 5],
    /// Probability that the face is fake.
    pub score: f32,
    /// `global_logit + Σ region_contributions`.
    pub logit: f32,
    /// The global token's part of the logit.
    pub global_logit: f32,
    /// Region names, in the order of the lists below.
    pub regions: Vec<String>,
    /// Per-region logits.
    pub region_logits: Vec<f32>,
    /// Region attention (sums to 1).
    pub region_attention: Vec<f32>,
    /// Each region's part of the logit.
    pub region_contributions: Vec<f32>,
    /// Routing weights, regions × experts.
    pub routing: Vec<Vec<f32>>,
}

impl FaceScore {
    /// The record of a face and the model's output for it.
    #[must_use]
    pub fn new(face: &Face, out: &SfamOutput) -> Self {
        Self {
            bbox: face.bbox,
            detector_score: face.score,
            landmarks: face.landmarks,
            score: out.score,
            logit: out.logit,
            global_logit: out.global_logit,
            regions: out.regions.clone(),
            region_logits: out.region_logits.clone(),
            region_attention: out.region_attention.clone(),
            region_contributions: out.region_contributions.clone(),
            routing: out.routing.clone(),
        }
    }
}

/// Everything the engine says about one scored image (what the cache
/// stores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// The image's score: that of its first (largest) face.
    pub score: f32,
    /// Width and height (upright).
    pub size: [u32; 2],
    /// Faces the detector found (0 when precropped); may exceed
    /// `faces.len()`, which is capped by [`EngineOptions::max_faces`].
    pub faces_found: usize,
    /// No face was detected: the whole image was used as a tight crop.
    pub precropped: bool,
    /// The scored faces, largest first.
    pub faces: Vec<FaceScore>,
}

impl ImageScore {
    /// Checks the invariants (at least one face, the image's score is the
    /// first face's, finite). Used on cache entries.
    ///
    /// # Errors
    /// What does not hold, in words.
    pub fn check(&self) -> Result<(), &'static str> {
        let first = self.faces.first().ok_or("no face")?;
        if !self.score.is_finite() || self.faces.iter().any(|f| !f.score.is_finite()) {
            return Err("non-finite score");
        }
        if first.score.to_bits() != self.score.to_bits() {
            return Err("image score is not its first face's");
        }
        Ok(())
    }
}

/// Where a score came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Computed by the model in this run.
    Computed,
    /// Read from the cache.
    Cached,
    /// Computed again because the cache entry was corrupt (why, naming the
    /// entry file).
    Recomputed(String),
}

/// What happened to one image.
#[derive(Debug)]
pub enum Outcome {
    /// It has a score.
    Scored {
        /// The score and its details.
        score: ImageScore,
        /// Computed, cached or recomputed.
        source: Source,
    },
    /// It has none.
    Failed(ItemError),
}

/// Counters of a run, sent after every image and returned at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Images in the run.
    pub total: usize,
    /// Images finished (scored, cached or failed).
    pub done: usize,
    /// Scored by the model in this run (including recomputed ones).
    pub computed: usize,
    /// Taken from the cache.
    pub cached: usize,
    /// Corrupt cache entries found and recomputed (also in `computed`).
    pub recomputed: usize,
    /// Per-file errors.
    pub failed: usize,
    /// Scored images that are training images of the model.
    pub trained_on: usize,
    /// Faces run through the model in this run.
    pub faces: usize,
    /// Seconds since the run started.
    pub elapsed_secs: f64,
    /// Seconds spent inside model calls (batching tensors + forward).
    pub model_secs: f64,
}

impl Progress {
    /// Faces run through the model per second of the whole run.
    #[must_use]
    pub fn faces_per_sec(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let faces = self.faces as f64;
        if self.elapsed_secs > 0.0 {
            faces / self.elapsed_secs
        } else {
            0.0
        }
    }

    /// Share of the run's wall time the model was working, 0–1.
    #[must_use]
    pub fn model_busy(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            (self.model_secs / self.elapsed_secs).min(1.0)
        } else {
            0.0
        }
    }
}

/// What the engine tells its caller while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// One image finished; images come in input order.
    Image {
        /// Index in the input.
        index: usize,
        /// The input item.
        item: &'a Item,
        /// Its score or error.
        outcome: &'a Outcome,
        /// Scored, and one of the model's training images (its bytes are
        /// in the model folder's `training_images.txt`): its score is no
        /// test of the model.
        trained_on: bool,
    },
    /// The counters, after each image.
    Progress(Progress),
}

/// `items` without those whose file's bytes are in `list` (a model's
/// training images), and how many were left out; the files are read and
/// hashed in parallel. A file that cannot be read stays: scoring reports
/// it.
#[must_use]
pub fn without_training_images(items: Vec<Item>, list: &TrainingImages) -> (Vec<Item>, usize) {
    use rayon::prelude::*;
    let trained: Vec<bool> = items
        .par_iter()
        .map(|item| std::fs::read(&item.path).is_ok_and(|bytes| list.contains_bytes(&bytes)))
        .collect();
    let total = items.len();
    let kept: Vec<Item> = items
        .into_iter()
        .zip(trained)
        .filter_map(|(item, t)| (!t).then_some(item))
        .collect();
    let left_out = total - kept.len();
    (kept, left_out)
}

/// How many of `indices` (into `items`, e.g. [`Report::trained_on`]) each
/// dataset has, in name order; indices out of range are skipped.
#[must_use]
pub fn count_by_dataset(items: &[Item], indices: &[usize]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for item in indices.iter().filter_map(|&i| items.get(i)) {
        *counts.entry(item.dataset.as_str()).or_default() += 1;
    }
    counts.into_iter().map(|(d, n)| (d.to_owned(), n)).collect()
}

/// The result of a whole run.
#[derive(Debug, Default)]
pub struct Report {
    /// One record per scored image with a label, in input order: the
    /// score table.
    pub records: Vec<ScoreRecord>,
    /// One entry per failed image, in input order.
    pub errors: Vec<FileError>,
    /// The scored images that are training images of the model (input
    /// indices, in order; see [`Event::Image`]).
    pub trained_on: Vec<usize>,
    /// The final counters.
    pub progress: Progress,
    /// Cache entries that could not be written (the scores are still in
    /// the report; they will be computed again next time).
    pub cache_write_failures: usize,
    /// The first few of those failures, in words.
    pub cache_write_errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_dataset_in_name_order_skipping_bad_indices() {
        let item = |d: &str| Item {
            path: PathBuf::from("x.jpg"),
            dataset: d.to_owned(),
            label: None,
            video: None,
        };
        let items = [item("b"), item("a"), item("b"), item("c")];
        assert_eq!(
            count_by_dataset(&items, &[0, 1, 2, 9]),
            [("a".to_owned(), 1), ("b".to_owned(), 2)]
        );
        assert!(count_by_dataset(&items, &[]).is_empty());
    }
}
