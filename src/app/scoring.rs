//! Scoring discovered dataset folders from the Datasets view: the scoring
//! engine on a [`Job`]'s worker thread (model loading included), its
//! progress as a line of text, per-user score cache, and the result as the
//! view's evaluation. Nothing here draws.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use sfam_studio::data::datasets::Discovery;
use sfam_studio::data::scores::ScoreRecord;
use sfam_studio::engine::{
    Engine, EngineError, EngineOptions, Event, Item, Progress, count_by_dataset,
    without_training_images,
};
use sfam_studio::metrics::VideoAgg;

use super::datasets::{Loaded, evaluate};
use super::jobs::Ctx;

/// Per-file errors kept word for word (the rest are counted).
pub const ERRORS_KEPT: usize = 5;

/// The folder under which the app caches scores: the user's cache folder
/// (the `dirs` crate: `$XDG_CACHE_HOME` or `~/.cache` on Linux,
/// `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows) +
/// `sfam-studio/scores`, else the system's temporary folder +
/// `sfam-studio-cache`. Inside it the engine keeps one folder per model,
/// preprocessing version and detector settings.
#[must_use]
pub fn default_cache_root() -> PathBuf {
    dirs::cache_dir().filter(|p| p.is_absolute()).map_or_else(
        || std::env::temp_dir().join("sfam-studio-cache"),
        |b| b.join("sfam-studio").join("scores"),
    )
}

/// A finished scoring run (its evaluation travels beside it).
pub struct ScoredRun {
    /// The score table (for "Save scores...").
    pub records: Arc<Vec<ScoreRecord>>,
    /// The final counters.
    pub progress: Progress,
    /// Images that could not be scored.
    pub error_count: usize,
    /// The first [`ERRORS_KEPT`] of their errors, each naming its file.
    pub first_errors: Vec<String>,
    /// The cache folder used.
    pub cache_dir: PathBuf,
    /// Cache entries that could not be written.
    pub cache_write_failures: usize,
    /// The model's training images left out before scoring (`None`: not
    /// asked, or the model does not list them).
    pub left_out: Option<usize>,
    /// The scored images that trained the model, per dataset (name,
    /// count; datasets with none left out), in name order.
    pub trained_by_dataset: Vec<(String, usize)>,
    /// What the model says it was trained on
    /// (`HeadConfig::training_note`).
    pub model_note: String,
}

/// How a scoring job ended.
pub enum ScoreOutcome {
    /// Every image was scored (or failed on its own): the evaluation of
    /// the scores, and the run.
    Done(Box<Loaded>, ScoredRun),
    /// The user cancelled: the counters so far (what was scored is cached).
    Cancelled(Progress),
    /// The run could not proceed (model, cache, evaluation), in words.
    Failed(String),
}

/// The progress line: images done, rate, and where the scores came from.
#[must_use]
pub fn progress_text(p: &Progress) -> String {
    format!(
        "{}/{} images, {:.1} faces/s, {} from cache, {} computed, {} failed",
        p.done,
        p.total,
        p.faces_per_sec(),
        p.cached,
        p.computed,
        p.failed
    )
}

/// Scores every image of `discovery` with the model folder `model_dir`
/// (loaded here, on the worker), using the cache under `cache_root`, then
/// evaluates the scores. Runs on a worker thread.
pub fn score_datasets(
    discovery: &Discovery,
    model_dir: &Path,
    cache_root: &Path,
    video_agg: Option<VideoAgg>,
    skip_trained: bool,
    ctx: &Ctx<ScoreOutcome>,
) -> ScoreOutcome {
    let items = Item::from_discovery(discovery);
    if items.is_empty() {
        return ScoreOutcome::Failed("no images in the discovered datasets".into());
    }
    ctx.progress(0.0, format!("loading model {}", model_dir.display()));
    let engine = match Engine::load(model_dir, &Device::Cpu, EngineOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            return ScoreOutcome::Failed(format!(
                "cannot load the model for scoring ({e}): {}",
                model_dir.display()
            ));
        }
    };
    let (items, left_out) = match engine.model().training_images() {
        Some(list) if skip_trained => {
            ctx.progress(
                0.0,
                format!("looking for training images among {}", items.len()),
            );
            let (kept, n) = without_training_images(items, list);
            if kept.is_empty() {
                return ScoreOutcome::Failed(
                    "every image is a training image of this model: nothing left to test it on"
                        .into(),
                );
            }
            (kept, Some(n))
        }
        _ => (items, None),
    };
    if ctx.cancelled() {
        return ScoreOutcome::Cancelled(Progress {
            total: items.len(),
            ..Progress::default()
        });
    }
    let cache = match engine.open_cache(cache_root) {
        Ok(c) => c,
        Err(e) => return ScoreOutcome::Failed(e.to_string()),
    };
    ctx.progress(0.0, format!("0/{} images", items.len()));
    let mut last = Progress {
        total: items.len(),
        ..Progress::default()
    };
    let result = engine.score(&items, Some(&cache), ctx.cancel_flag(), |event| {
        if let Event::Progress(p) = event {
            last = p;
            #[allow(clippy::cast_precision_loss)]
            let fraction = p.done as f32 / p.total.max(1) as f32;
            ctx.progress(fraction, progress_text(&p));
        }
    });
    let report = match result {
        Ok(r) => r,
        Err(EngineError::Cancelled) => return ScoreOutcome::Cancelled(last),
        Err(e) => return ScoreOutcome::Failed(format!("scoring stopped: {e}")),
    };
    ctx.progress(1.0, format!("evaluating {} scores", report.records.len()));
    let names: Vec<&str> = discovery.datasets.iter().map(|d| d.name.as_str()).collect();
    let source = format!("{} scored with {}", names.join(", "), model_dir.display());
    let first_errors = report
        .errors
        .iter()
        .take(ERRORS_KEPT)
        .map(|e| e.error.to_string())
        .collect();
    let trained_by_dataset = count_by_dataset(&items, &report.trained_on);
    let records = Arc::new(report.records);
    let loaded = match evaluate(Arc::clone(&records), source, video_agg) {
        Ok(l) => l,
        Err(e) => {
            return ScoreOutcome::Failed(if report.errors.is_empty() {
                e
            } else {
                format!("{e} ({} images could not be scored)", report.errors.len())
            });
        }
    };
    ScoreOutcome::Done(
        Box::new(loaded),
        ScoredRun {
            error_count: report.errors.len(),
            first_errors,
            progress: report.progress,
            cache_dir: cache.dir().to_path_buf(),
            cache_write_failures: report.cache_write_failures,
            left_out,
            trained_by_dataset,
            model_note: engine.model().head().config().training_note(),
            records,
        },
    )
}

/// The per-file errors of a run as one message (count, then the first few).
#[must_use]
pub fn errors_message(run: &ScoredRun) -> Option<String> {
    if run.error_count == 0 {
        return None;
    }
    let mut s = format!(
        "{} image(s) could not be scored: {}",
        run.error_count,
        run.first_errors.join("; ")
    );
    if run.error_count > run.first_errors.len() {
        let _ = write!(s, "; and {} more", run.error_count - run.first_errors.len());
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_root_is_absolute_and_named_for_the_app() {
        let root = default_cache_root();
        assert!(root.is_absolute(), "{}", root.display());
        assert!(root.to_string_lossy().contains("sfam-studio"));
    }

    #[test]
    fn progress_reads_as_counts_and_rate() {
        let p = Progress {
            total: 10,
            done: 4,
            computed: 1,
            cached: 3,
            faces: 2,
            elapsed_secs: 2.0,
            ..Progress::default()
        };
        assert_eq!(
            progress_text(&p),
            "4/10 images, 1.0 faces/s, 3 from cache, 1 computed, 0 failed"
        );
    }
}
