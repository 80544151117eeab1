//! The engine's stages: a producer thread that prepares images in chunks
//! on a worker pool, the model on the calling thread, a cache writer
//! thread; bounded channels between them.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::cache::{Cache, CacheKey, ContentHash, Lookup, ModelId};
use super::{
    EngineError, EngineOptions, Event, FACE_OPTIONS, FaceScore, FileError, ImageScore, Item,
    ItemError, Outcome, PREPROCESS_VERSION, Report, Source,
};
use crate::data::image::{decode_rgb, read_image_bytes};
use crate::data::scores::ScoreRecord;
use crate::face::{Face, FaceDetector, ImageFacesError};
use crate::model::{Precision, SfamModel};

/// At most this many cache write failures are kept in words.
const MAX_CACHE_ERRORS_KEPT: usize = 10;

/// A face ready for the model.
struct PreparedFace {
    face: Face,
    /// `[1, 3, S, S]`, on the model's device.
    pixels: Tensor,
    /// `[R, N]`, on the model's device.
    masks: Tensor,
}

/// An image after the workers.
enum Prepared {
    /// Found in the cache.
    Cached {
        index: usize,
        score: ImageScore,
        trained_on: bool,
    },
    /// Faces to score.
    Faces {
        index: usize,
        hash: ContentHash,
        /// One of the model's training images (by content).
        trained_on: bool,
        size: [u32; 2],
        faces_found: usize,
        precropped: bool,
        faces: Vec<PreparedFace>,
        /// Why the cache entry was not used, when it was corrupt.
        corrupt: Option<String>,
    },
    /// A per-file error.
    Failed { index: usize, error: ItemError },
}

impl Prepared {
    fn face_count(&self) -> usize {
        match self {
            Self::Faces { faces, .. } => faces.len(),
            _ => 0,
        }
    }
}

/// Scores images with an SFAM model (see the module docs of
/// [`crate::engine`]).
pub struct Engine {
    model: Arc<SfamModel>,
    model_id: ModelId,
    detector: FaceDetector,
    options: EngineOptions,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model)
            .field("model_id", &self.model_id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine around a loaded model. `model_id` names the model in the
    /// cache ([`ModelId::of_dir`] for a model folder).
    ///
    /// # Errors
    /// [`EngineError::Options`] for a zero batch size or face count,
    /// [`EngineError::Model`] when the model's regions are not the face
    /// pipeline's (masks cannot be made), [`EngineError::Worker`] when the
    /// worker pool cannot start.
    pub fn new(
        model: Arc<SfamModel>,
        model_id: ModelId,
        detector: FaceDetector,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        if options.batch_size == 0 {
            return Err(EngineError::Options(
                "the batch size must be at least 1".into(),
            ));
        }
        if options.max_faces == 0 {
            return Err(EngineError::Options(
                "at least one face per image must be scored".into(),
            ));
        }
        // Region masks from landmarks need the pipeline's nine regions.
        model.template_masks()?;
        // bf16 scores differ slightly from float32 ones: their own cache.
        let model_id = match model.precision() {
            Precision::Bf16 => model_id.variant("bf16"),
            _ => model_id,
        };
        let workers = if options.workers == 0 {
            thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            options.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("sfam-engine-prepare-{i}"))
            .build()
            .map_err(|e| EngineError::Worker(e.to_string()))?;
        Ok(Self {
            model,
            model_id,
            detector,
            options,
            pool,
        })
    }

    /// Loads the model folder `dir` on `device` (identity from its files),
    /// with the bundled face detector.
    ///
    /// # Errors
    /// As [`ModelId::of_dir`], [`SfamModel::load`] and [`Engine::new`].
    pub fn load(dir: &Path, device: &Device, options: EngineOptions) -> Result<Self, EngineError> {
        let model_id = ModelId::of_dir(dir)?;
        let mut model = SfamModel::load(dir, device)?;
        model.set_precision(options.precision)?;
        let detector = FaceDetector::load_default()?;
        Self::new(Arc::new(model), model_id, detector, options)
    }

    /// The model.
    #[must_use]
    pub fn model(&self) -> &Arc<SfamModel> {
        &self.model
    }

    /// The model's identity.
    #[must_use]
    pub fn model_id(&self) -> &ModelId {
        &self.model_id
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> EngineOptions {
        self.options
    }

    /// Worker threads that prepare images.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// What this engine's scores depend on besides the images: the key of
    /// its cache folder.
    #[must_use]
    pub fn cache_key(&self) -> CacheKey {
        CacheKey {
            model: self.model_id.clone(),
            preprocess_version: PREPROCESS_VERSION,
            settings: format!(
                "detector {:?}; {:?}; max_faces {}",
                self.detector.config(),
                FACE_OPTIONS,
                self.options.max_faces
            ),
        }
    }

    /// Opens this engine's folder of the cache under `root`.
    ///
    /// # Errors
    /// As [`Cache::open`].
    pub fn open_cache(&self, root: &Path) -> Result<Cache, EngineError> {
        Cache::open(root, &self.cache_key())
    }

    /// Scores `items`: per image, the score of its largest face, or a
    /// per-file error. `on_event` is called on this thread, once per image
    /// in input order and with the counters after each. With a `cache`,
    /// images whose entry is there are not computed, and new scores are
    /// stored as they come. Setting `cancel` stops the run soon (within
    /// one batch) with [`EngineError::Cancelled`].
    ///
    /// # Errors
    /// [`EngineError::Cancelled`]; [`EngineError::Model`] when a model call
    /// fails; [`EngineError::Worker`] when a worker thread fails.
    pub fn score<F>(
        &self,
        items: &[Item],
        cache: Option<&Cache>,
        cancel: &AtomicBool,
        mut on_event: F,
    ) -> Result<Report, EngineError>
    where
        F: FnMut(Event<'_>),
    {
        let start = Instant::now();
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            // Channels live in this closure: on any early return they are
            // dropped before the scope waits for the threads, which then
            // see a closed channel and end.
            let capacity = (2 * self.options.batch_size).max(4);
            let (tx, rx) = sync_channel::<Prepared>(capacity);
            let (cache_tx, cache_rx) = sync_channel::<(ContentHash, ImageScore)>(64);
            let producer = thread::Builder::new()
                .name("sfam-engine-read".into())
                .spawn_scoped(s, || self.produce(items, cache, cancel, &stop, tx))
                .map_err(|e| EngineError::Worker(format!("cannot start a thread: {e}")))?;
            let writer = match cache {
                Some(cache) => Some(
                    thread::Builder::new()
                        .name("sfam-engine-cache".into())
                        .spawn_scoped(s, move || write_entries(cache, &cache_rx))
                        .map_err(|e| {
                            stop.store(true, Ordering::Relaxed);
                            EngineError::Worker(format!("cannot start a thread: {e}"))
                        })?,
                ),
                None => None,
            };
            let mut consumer = Consumer {
                engine: self,
                items,
                cache_tx: cache.map(|_| cache_tx),
                report: Report::default(),
                start,
            };
            consumer.report.progress.total = items.len();
            let result = consumer.run(rx, cancel, &mut on_event);
            stop.store(true, Ordering::Relaxed);
            let Consumer {
                cache_tx,
                mut report,
                ..
            } = consumer;
            drop(cache_tx);
            let producer_ok = producer.join().is_ok();
            if let Some(writer) = writer {
                let (failures, errors) = writer
                    .join()
                    .map_err(|_| EngineError::Worker("the cache writer stopped".into()))?;
                report.cache_write_failures = failures;
                report.cache_write_errors = errors;
            }
            result?;
            if !producer_ok {
                return Err(EngineError::Worker("the image reader stopped".into()));
            }
            if report.progress.done != items.len() {
                return Err(EngineError::Worker(format!(
                    "{} of {} images were not processed",
                    items.len() - report.progress.done,
                    items.len()
                )));
            }
            report.progress.elapsed_secs = start.elapsed().as_secs_f64();
            Ok(report)
        })
    }

    /// The producer: chunks of items prepared in parallel on the pool,
    /// sent in order. Stops when cancelled or when the consumer is gone.
    /// Takes `tx` by value: returning drops it, which ends the consumer's
    /// loop.
    #[allow(clippy::needless_pass_by_value)]
    fn produce(
        &self,
        items: &[Item],
        cache: Option<&Cache>,
        cancel: &AtomicBool,
        stop: &AtomicBool,
        tx: SyncSender<Prepared>,
    ) {
        let halted = || cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
        // Big enough to keep every worker busy and cover a batch; small
        // enough that little waits in memory.
        let chunk = (2 * self.options.batch_size).max(4 * self.pool.current_num_threads());
        for (c, slice) in items.chunks(chunk).enumerate() {
            if halted() {
                return;
            }
            let base = c * chunk;
            let prepared: Vec<Option<Prepared>> = self.pool.install(|| {
                slice
                    .par_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        (!halted()).then(|| self.prepare_guarded(base + i, item, cache))
                    })
                    .collect()
            });
            for p in prepared {
                let Some(p) = p else { return };
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    }

    /// [`Self::prepare`], with a panic in a decoder or the detector (a bug
    /// that a crafted file might trigger) turned into a per-file error
    /// instead of ending the run.
    fn prepare_guarded(&self, index: usize, item: &Item, cache: Option<&Cache>) -> Prepared {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.prepare(index, item, cache)
        }))
        .unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Prepared::Failed {
                index,
                error: ItemError::Prepare {
                    path: item.path.clone(),
                    message: format!("internal error: {message}"),
                },
            }
        })
    }

    /// Reads, hashes, looks up, decodes, detects, aligns and preprocesses
    /// one image.
    fn prepare(&self, index: usize, item: &Item, cache: Option<&Cache>) -> Prepared {
        let path = &item.path;
        let failed = |error: ItemError| Prepared::Failed { index, error };
        let bytes = match read_image_bytes(path) {
            Ok(b) => b,
            Err(e) => return failed(ImageFacesError::Image(e).into()),
        };
        let hash = ContentHash::of_bytes(&bytes);
        let trained_on = self
            .model
            .training_images()
            .is_some_and(|t| t.contains(hash.as_bytes()));
        let mut corrupt = None;
        if let Some(cache) = cache {
            match cache.get(&hash) {
                Lookup::Hit(score) => {
                    return Prepared::Cached {
                        index,
                        score,
                        trained_on,
                    };
                }
                Lookup::Miss => {}
                Lookup::Corrupt(why) => corrupt = Some(why),
            }
        }
        let img = match decode_rgb(&bytes, path) {
            Ok(img) => img,
            Err(e) => return failed(ImageFacesError::Image(e).into()),
        };
        drop(bytes);
        let found = self.detector.faces_in_rgb(&img, path, FACE_OPTIONS);
        if let Some(e) = found.error {
            return failed(e.into());
        }
        let mut faces = Vec::with_capacity(found.faces.len().min(self.options.max_faces));
        for (face, aligned) in found
            .faces
            .iter()
            .zip(&found.aligned)
            .take(self.options.max_faces)
        {
            let tensors = self
                .model
                .pixels(std::slice::from_ref(&aligned.image))
                .and_then(|px| Ok((px, self.model.region_masks(&aligned.landmarks_aligned)?)));
            match tensors {
                Ok((pixels, masks)) => faces.push(PreparedFace {
                    face: *face,
                    pixels,
                    masks,
                }),
                Err(e) => {
                    return failed(ItemError::Prepare {
                        path: path.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        if faces.is_empty() {
            return failed(ImageFacesError::NoFace { path: path.clone() }.into());
        }
        Prepared::Faces {
            index,
            hash,
            trained_on,
            size: [img.width(), img.height()],
            faces_found: if found.precropped {
                0
            } else {
                found.faces.len()
            },
            precropped: found.precropped,
            faces,
            corrupt,
        }
    }
}

/// The model stage, on the calling thread.
struct Consumer<'e> {
    engine: &'e Engine,
    items: &'e [Item],
    cache_tx: Option<SyncSender<(ContentHash, ImageScore)>>,
    report: Report,
    start: Instant,
}

impl Consumer<'_> {
    /// Receives prepared images in order, runs the model once enough faces
    /// wait, and finishes images in order. Takes `rx` by value: returning
    /// (on an error too) drops it, which stops the producer.
    #[allow(clippy::needless_pass_by_value)]
    fn run<F>(
        &mut self,
        rx: Receiver<Prepared>,
        cancel: &AtomicBool,
        on_event: &mut F,
    ) -> Result<(), EngineError>
    where
        F: FnMut(Event<'_>),
    {
        let batch = self.engine.options.batch_size;
        // Images waiting for the model, and finished ones behind them (kept
        // to finish images in order). Bounded: the batch runs, even
        // partly filled, once this many wait.
        let max_waiting = (4 * batch).max(32);
        let mut waiting: VecDeque<Prepared> = VecDeque::new();
        let mut faces_waiting = 0;
        for prepared in &rx {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            faces_waiting += prepared.face_count();
            waiting.push_back(prepared);
            if faces_waiting == 0 {
                // Nothing needs the model: finish at once.
                for p in waiting.drain(..) {
                    self.finish(p, &[], on_event);
                }
            } else if faces_waiting >= batch || waiting.len() >= max_waiting {
                self.run_batch(&mut waiting, on_event)?;
                faces_waiting = 0;
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        self.run_batch(&mut waiting, on_event)
    }

    /// Scores every face waiting, then finishes every waiting image.
    fn run_batch<F>(
        &mut self,
        waiting: &mut VecDeque<Prepared>,
        on_event: &mut F,
    ) -> Result<(), EngineError>
    where
        F: FnMut(Event<'_>),
    {
        let faces: Vec<&PreparedFace> = waiting
            .iter()
            .filter_map(|p| match p {
                Prepared::Faces { faces, .. } => Some(faces.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut outputs = Vec::new();
        if !faces.is_empty() {
            let t = Instant::now();
            let pixels: Vec<&Tensor> = faces.iter().map(|f| &f.pixels).collect();
            let masks: Vec<&Tensor> = faces.iter().map(|f| &f.masks).collect();
            let pixels = Tensor::cat(&pixels, 0).map_err(crate::model::ModelError::from)?;
            let masks = Tensor::stack(&masks, 0).map_err(crate::model::ModelError::from)?;
            outputs = self.engine.model.forward(&pixels, &masks)?;
            self.report.progress.model_secs += t.elapsed().as_secs_f64();
            self.report.progress.faces += faces.len();
            if outputs.len() != faces.len() {
                return Err(EngineError::Worker(format!(
                    "the model gave {} outputs for {} faces",
                    outputs.len(),
                    faces.len()
                )));
            }
        }
        let mut outputs = outputs.into_iter();
        for p in waiting.drain(..) {
            let n = p.face_count();
            let mine: Vec<_> = outputs.by_ref().take(n).collect();
            self.finish(p, &mine, on_event);
        }
        Ok(())
    }

    /// Turns a prepared image and its faces' outputs into an outcome,
    /// stores it, and tells the caller.
    fn finish<F>(
        &mut self,
        prepared: Prepared,
        outputs: &[crate::model::SfamOutput],
        on_event: &mut F,
    ) where
        F: FnMut(Event<'_>),
    {
        let progress = &mut self.report.progress;
        let (index, trained_on, outcome) = match prepared {
            Prepared::Cached {
                index,
                score,
                trained_on,
            } => {
                progress.cached += 1;
                (
                    index,
                    trained_on,
                    Outcome::Scored {
                        score,
                        source: Source::Cached,
                    },
                )
            }
            Prepared::Failed { index, error } => (index, false, Outcome::Failed(error)),
            Prepared::Faces {
                index,
                hash,
                trained_on,
                size,
                faces_found,
                precropped,
                faces,
                corrupt,
            } => {
                let faces: Vec<FaceScore> = faces
                    .iter()
                    .zip(outputs)
                    .map(|(f, out)| FaceScore::new(&f.face, out))
                    .collect();
                let score = ImageScore {
                    score: faces.first().map_or(f32::NAN, |f| f.score),
                    size,
                    faces_found,
                    precropped,
                    faces,
                };
                if score.check().is_ok() {
                    if let Some(tx) = &self.cache_tx {
                        // A gone writer only means no caching.
                        let _ = tx.send((hash, score.clone()));
                    }
                    progress.computed += 1;
                    let source = match corrupt {
                        Some(why) => {
                            progress.recomputed += 1;
                            Source::Recomputed(why)
                        }
                        None => Source::Computed,
                    };
                    (index, trained_on, Outcome::Scored { score, source })
                } else {
                    let path = self.items[index].path.clone();
                    (index, false, Outcome::Failed(ItemError::NonFinite { path }))
                }
            }
        };
        let item = &self.items[index];
        on_event(Event::Image {
            index,
            item,
            outcome: &outcome,
            trained_on,
        });
        let progress = &mut self.report.progress;
        progress.done += 1;
        if trained_on {
            progress.trained_on += 1;
            self.report.trained_on.push(index);
        }
        progress.elapsed_secs = self.start.elapsed().as_secs_f64();
        match outcome {
            Outcome::Scored { score, .. } => {
                if let Some(label) = item.label {
                    self.report.records.push(ScoreRecord {
                        path: item.path.display().to_string(),
                        dataset: item.dataset.clone(),
                        label,
                        score: f64::from(score.score),
                        video: item.video.clone(),
                    });
                }
            }
            Outcome::Failed(error) => {
                progress.failed += 1;
                self.report.errors.push(FileError {
                    index,
                    path: item.path.clone(),
                    error,
                });
            }
        }
        on_event(Event::Progress(self.report.progress));
    }
}

/// The cache writer: stores entries as they come; returns how many could
/// not be written and the first few reasons.
fn write_entries(cache: &Cache, rx: &Receiver<(ContentHash, ImageScore)>) -> (usize, Vec<String>) {
    let mut failures = 0;
    let mut errors = Vec::new();
    for (hash, score) in rx {
        if let Err(e) = cache.put(&hash, &score) {
            failures += 1;
            if errors.len() < MAX_CACHE_ERRORS_KEPT {
                errors.push(format!("{e}: {}", cache.entry_path(&hash).display()));
            }
        }
    }
    (failures, errors)
}
