//! Metrics on detector scores: AUC, ROC, EER, AP, thresholds and their
//! transfer across datasets, calibration, bootstrap intervals, video-level
//! aggregation, the Cross-AUC matrix, and two detectors compared on the
//! same faces.
//!
//! Conventions everywhere: the positive class is **fake**; a score is
//! "higher = more likely fake"; a face is flagged fake when
//! `score >= threshold` (scikit-learn's `roc_curve` convention). A figure
//! that cannot be computed (a class is missing, scores are not
//! probabilities …) is an [`Undefined`] with its reason, never NaN.

mod auc;
mod bootstrap;
mod calibration;
mod cross_auc;
mod export;
mod paired;
mod report;
mod threshold;
mod video;

pub use auc::{RocCurve, SortedScores, auc, auc_sorted, average_precision, roc_curve};
pub use bootstrap::{AucInterval, bootstrap_auc};
pub use calibration::{Calibration, ReliabilityBin, calibration};
pub use cross_auc::{Cell, CrossAuc, CrossAucSummary, DomainScores, PairMean, WorstCell};
pub use export::{evaluation_json, matrix_csv};
pub use paired::{
    PairError, PairedDifference, PairedTables, paired_auc_difference, paired_cells,
    paired_cross_auc_difference,
};
pub use report::{
    DatasetReport, Evaluation, EvaluationOptions, TransferCell, group_by_dataset, transfer_table,
};
pub use threshold::{Eer, Rates, ThresholdRule, Transfer, eer, rates_at, threshold_for, transfer};
pub use video::{VideoAgg, aggregate_videos};

/// Why a metric has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Undefined {
    /// There are no real (negative) scores.
    #[error("no real faces")]
    NoReal,
    /// There are no fake (positive) scores.
    #[error("no fake faces")]
    NoFake,
    /// Neither class has scores.
    #[error("no real and no fake faces")]
    NoScores,
    /// A score is NaN.
    #[error("a score is NaN")]
    NaN,
    /// Calibration needs probabilities; a score lies outside `[0, 1]`.
    #[error("scores are not probabilities (a score lies outside [0, 1])")]
    NotProbabilities,
    /// An argument is out of its range (message says which).
    #[error("{0}")]
    BadArgument(String),
}

impl Undefined {
    /// The reason for a pair of score sets with `n_real` and `n_fake` items.
    #[must_use]
    pub fn for_counts(n_real: usize, n_fake: usize) -> Option<Self> {
        match (n_real, n_fake) {
            (0, 0) => Some(Self::NoScores),
            (0, _) => Some(Self::NoReal),
            (_, 0) => Some(Self::NoFake),
            _ => None,
        }
    }
}
