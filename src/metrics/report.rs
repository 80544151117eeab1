//! A whole evaluation of a score table: per-dataset figures, the Cross-AUC
//! matrix and the threshold-transfer table, as the CLI and the app show it.

use rayon::prelude::*;
use serde::Serialize;

use super::{
    AucInterval, Calibration, CrossAuc, DomainScores, Eer, ThresholdRule, Transfer, Undefined,
    VideoAgg, aggregate_videos, auc_sorted, average_precision, bootstrap_auc, calibration, eer,
    transfer,
};
use crate::data::Label;
use crate::data::scores::ScoreRecord;

/// What to compute beside the Cross-AUC matrix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvaluationOptions {
    /// Aggregate frame scores per video first (`None`: every record is one face).
    pub video_agg: Option<VideoAgg>,
    /// Threshold-transfer table with this rule (`None`: no table).
    pub transfer: Option<ThresholdRule>,
    /// Bootstrap intervals of each dataset's AUC and of every cell of the
    /// Cross-AUC matrix: `(resamples, level, seed)`.
    pub bootstrap: Option<(usize, f64, u64)>,
    /// Calibration with this many bins (only for scores in `[0, 1]`).
    pub calibration_bins: Option<usize>,
}

/// Figures of one dataset on its own (its reals against its fakes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetReport {
    /// Dataset name.
    pub name: String,
    /// Number of real faces (or videos, when aggregated).
    pub n_real: usize,
    /// Number of fake faces (or videos, when aggregated).
    pub n_fake: usize,
    /// ROC AUC; `None` with `undefined` saying why.
    pub auc: Option<f64>,
    /// Equal error rate and its threshold.
    pub eer: Option<Eer>,
    /// Average precision (fake = positive).
    pub ap: Option<f64>,
    /// Bootstrap interval of the AUC, when asked for.
    pub auc_ci: Option<AucInterval>,
    /// Calibration, when asked for and the scores are probabilities.
    pub calibration: Option<Calibration>,
    /// Why the figures above are missing, if they are.
    pub undefined: Option<String>,
}

/// One cell of the threshold-transfer table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferCell {
    /// Index of the dataset the threshold was chosen on.
    pub source: usize,
    /// Index of the dataset it was applied to.
    pub target: usize,
    /// The result; `None` when the source cannot give a threshold.
    pub transfer: Option<Transfer>,
    /// Why `transfer` is `None`.
    pub undefined: Option<String>,
}

/// Everything computed from one score table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// How frames were aggregated per video, if they were.
    pub video_agg: Option<VideoAgg>,
    /// Records (faces, or videos after aggregation) evaluated.
    pub n_records: usize,
    /// Per-dataset figures, in matrix order.
    pub per_dataset: Vec<DatasetReport>,
    /// The Cross-AUC matrix.
    pub cross_auc: CrossAuc,
    /// The rule of the threshold-transfer table, if one was asked for.
    pub transfer_rule: Option<ThresholdRule>,
    /// Threshold transfer, `source × target`, row-major; empty unless asked for.
    pub transfer: Vec<TransferCell>,
    /// Bootstrap interval of every cell's AUC, in matrix order (rows: reals
    /// of; `None` where the cell is undefined; the diagonal is each
    /// dataset's `auc_ci`); empty unless asked for.
    pub cross_auc_ci: Vec<Vec<Option<AucInterval>>>,
    /// The sorted scores behind the figures, for plots.
    #[serde(skip)]
    pub domains: Vec<DomainScores>,
}

/// Groups records by dataset, in order of first appearance.
///
/// # Errors
/// [`Undefined::NaN`] if a score is NaN (score files never hold one).
pub fn group_by_dataset(records: &[ScoreRecord]) -> Result<Vec<DomainScores>, Undefined> {
    let mut names: Vec<&str> = Vec::new();
    let mut parts: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in records {
        let i = *index.entry(r.dataset.as_str()).or_insert_with(|| {
            names.push(&r.dataset);
            parts.push((Vec::new(), Vec::new()));
            names.len() - 1
        });
        match r.label {
            Label::Real => parts[i].0.push(r.score),
            Label::Fake => parts[i].1.push(r.score),
        }
    }
    names
        .into_par_iter()
        .zip(parts)
        .map(|(name, (real, fake))| DomainScores::new(name.to_owned(), real, fake))
        .collect()
}

impl Evaluation {
    /// Evaluates a score table.
    ///
    /// # Errors
    /// [`Undefined::NaN`] if a score is NaN, or a bad option
    /// ([`Undefined::BadArgument`]: zero bootstrap resamples, a confidence
    /// level outside `(0, 1)`, zero calibration bins, a target FPR outside
    /// `[0, 1]`). Missing classes are never errors: they make the figures
    /// that need them undefined.
    pub fn from_records(
        records: &[ScoreRecord],
        options: &EvaluationOptions,
    ) -> Result<Self, Undefined> {
        check_options(options)?;
        let aggregated;
        let records = match options.video_agg {
            Some(agg) => {
                aggregated = aggregate_videos(records, agg);
                &aggregated
            }
            None => records,
        };
        let domains = group_by_dataset(records)?;
        let cross_auc_ci = match options.bootstrap {
            Some((n, level, seed)) => cell_intervals(&domains, n, level, seed),
            None => Vec::new(),
        };
        let per_dataset = domains
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let ci = cross_auc_ci.get(k).and_then(|row| row[k]);
                dataset_report(d, ci, options)
            })
            .collect::<Result<_, _>>()?;
        let transfer = match options.transfer {
            None => Vec::new(),
            Some(rule) => transfer_table(&domains, rule),
        };
        Ok(Self {
            video_agg: options.video_agg,
            n_records: records.len(),
            per_dataset,
            cross_auc: CrossAuc::compute(&domains),
            transfer_rule: options.transfer,
            transfer,
            cross_auc_ci,
            domains,
        })
    }
}

/// Percentile bootstrap intervals of every cell's AUC (reals of the row's
/// dataset against fakes of the column's, each class resampled apart),
/// the cells in parallel; `None` where a class is empty.
fn cell_intervals(
    domains: &[DomainScores],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Vec<Vec<Option<AucInterval>>> {
    domains
        .par_iter()
        .map(|r| {
            domains
                .par_iter()
                .map(|f| bootstrap_auc(&r.real, &f.fake, resamples, level, seed).ok())
                .collect()
        })
        .collect()
}

fn check_options(o: &EvaluationOptions) -> Result<(), Undefined> {
    let bad = |m: String| Err(Undefined::BadArgument(m));
    if let Some((n, level, _)) = o.bootstrap {
        super::bootstrap::check_arguments(n, level)?;
    }
    if o.calibration_bins == Some(0) {
        return bad("calibration needs at least one bin".into());
    }
    if let Some(ThresholdRule::Fpr(t)) = o.transfer
        && !(0.0..=1.0).contains(&t)
    {
        return bad(format!("target false-positive rate {t} is outside [0, 1]"));
    }
    Ok(())
}

/// One dataset's figures; `auc_ci` is its diagonal cell's interval.
fn dataset_report(
    d: &DomainScores,
    auc_ci: Option<AucInterval>,
    o: &EvaluationOptions,
) -> Result<DatasetReport, Undefined> {
    let (real, fake) = (&d.real, &d.fake);
    let auc = auc_sorted(real, fake);
    let undefined = auc.as_ref().err().map(|e| format!("{}: {e}", d.name));
    let calibration = match o.calibration_bins {
        Some(bins) => match calibration(real, fake, bins) {
            Ok(c) => Some(c),
            Err(Undefined::NotProbabilities | Undefined::NoScores) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    Ok(DatasetReport {
        name: d.name.clone(),
        n_real: real.len(),
        n_fake: fake.len(),
        auc: auc.ok(),
        eer: eer(real, fake).ok(),
        ap: average_precision(real, fake).ok(),
        auc_ci,
        calibration,
        undefined,
    })
}

/// The threshold-transfer table, `source × target`, row-major.
#[must_use]
pub fn transfer_table(domains: &[DomainScores], rule: ThresholdRule) -> Vec<TransferCell> {
    let mut out = Vec::with_capacity(domains.len() * domains.len());
    for (i, s) in domains.iter().enumerate() {
        for (j, t) in domains.iter().enumerate() {
            let result = transfer(rule, (&s.real, &s.fake), (&t.real, &t.fake));
            out.push(TransferCell {
                source: i,
                target: j,
                undefined: result.as_ref().err().map(|e| format!("{}: {e}", s.name)),
                transfer: result.ok(),
            });
        }
    }
    out
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;

    fn rec(dataset: &str, label: Label, score: f64, video: Option<&str>) -> ScoreRecord {
        ScoreRecord {
            path: format!("{dataset}/{label}/{score}.jpg"),
            dataset: dataset.into(),
            label,
            score,
            video: video.map(Into::into),
        }
    }

    #[test]
    fn evaluates_datasets_in_first_appearance_order() {
        let recs = vec![
            rec("zeta", Label::Real, 0.1, None),
            rec("alpha", Label::Fake, 0.9, None),
            rec("zeta", Label::Fake, 0.8, None),
            rec("alpha", Label::Real, 0.95, None),
        ];
        let opts = EvaluationOptions {
            transfer: Some(ThresholdRule::Eer),
            calibration_bins: Some(10),
            bootstrap: Some((50, 0.9, 3)),
            ..Default::default()
        };
        let e = Evaluation::from_records(&recs, &opts).unwrap();
        assert_eq!(e.cross_auc.datasets, vec!["zeta", "alpha"]);
        assert_eq!(e.per_dataset[0].auc, Some(1.0));
        assert_eq!(e.per_dataset[1].auc, Some(0.0));
        assert!(e.per_dataset[0].calibration.is_some());
        assert!(e.per_dataset[0].auc_ci.is_some());
        assert_eq!(e.transfer.len(), 4);
        // zeta's EER threshold (0.8) applied to alpha flags both faces.
        let t = e.transfer[1].transfer.unwrap();
        assert_eq!(t.target.tpr, Some(1.0));
        assert_eq!(t.target.fpr, Some(1.0));
    }

    #[test]
    fn fake_only_dataset_is_reported_not_failed() {
        let recs = vec![
            rec("a", Label::Real, 0.1, None),
            rec("a", Label::Fake, 0.7, None),
            rec("gen", Label::Fake, 0.05, None),
        ];
        let opts = EvaluationOptions {
            transfer: Some(ThresholdRule::Fpr(0.1)),
            calibration_bins: Some(5),
            bootstrap: Some((10, 0.95, 0)),
            ..Default::default()
        };
        let e = Evaluation::from_records(&recs, &opts).unwrap();
        let g = &e.per_dataset[1];
        assert_eq!((g.n_real, g.n_fake, g.auc), (0, 1, None));
        assert_eq!(g.undefined.as_deref(), Some("gen: no real faces"));
        assert_eq!(e.cross_auc.matrix[0][1].value(), Some(0.0));
        assert!(e.transfer[2].transfer.is_none()); // gen cannot choose a threshold
        assert!(e.transfer[1].transfer.is_some());
        // Intervals: a's own and a's reals against gen's fakes; gen has no
        // reals, so its row has none.
        let ci = &e.cross_auc_ci;
        assert_eq!(ci.len(), 2);
        assert_eq!(ci[0][0], e.per_dataset[0].auc_ci);
        assert!(ci[0][1].is_some());
        assert_eq!(ci[1], vec![None, None]);
        assert_eq!(g.auc_ci, None);
    }

    #[test]
    fn cell_intervals_are_the_bootstrap_of_each_cell() {
        let mut recs = Vec::new();
        for k in 0..40 {
            let x = f64::from(k) / 40.0;
            recs.push(rec("a", Label::Real, x, None));
            recs.push(rec("a", Label::Fake, x + 0.3, None));
            recs.push(rec("b", Label::Real, x + 0.1, None));
            recs.push(rec("b", Label::Fake, x * 0.5 + 0.5, None));
        }
        let opts = EvaluationOptions {
            bootstrap: Some((200, 0.9, 7)),
            ..Default::default()
        };
        let e = Evaluation::from_records(&recs, &opts).unwrap();
        for (i, row) in e.cross_auc_ci.iter().enumerate() {
            for (j, cell) in row.iter().enumerate() {
                let (r, f) = (&e.domains[i].real, &e.domains[j].fake);
                assert_eq!(*cell, Some(bootstrap_auc(r, f, 200, 0.9, 7).unwrap()));
                let c = cell.unwrap();
                let auc = e.cross_auc.matrix[i][j].value().unwrap();
                assert!(c.low <= auc && auc <= c.high && c.low < c.high, "{i},{j}");
            }
            assert_eq!(row[i], e.per_dataset[i].auc_ci);
        }
        let plain = Evaluation::from_records(&recs, &EvaluationOptions::default()).unwrap();
        assert!(plain.cross_auc_ci.is_empty());
        assert!(plain.per_dataset.iter().all(|d| d.auc_ci.is_none()));
    }

    #[test]
    fn video_aggregation_happens_before_metrics() {
        let recs = vec![
            rec("d", Label::Real, 0.1, Some("r1")),
            rec("d", Label::Real, 0.9, Some("r1")),
            rec("d", Label::Fake, 0.6, Some("f1")),
        ];
        let mean = EvaluationOptions {
            video_agg: Some(VideoAgg::Mean),
            ..Default::default()
        };
        let e = Evaluation::from_records(&recs, &mean).unwrap();
        assert_eq!((e.n_records, e.per_dataset[0].auc), (2, Some(1.0)));
        let max = EvaluationOptions {
            video_agg: Some(VideoAgg::Max),
            ..Default::default()
        };
        let e = Evaluation::from_records(&recs, &max).unwrap();
        assert_eq!(e.per_dataset[0].auc, Some(0.0));
        let frames = Evaluation::from_records(&recs, &EvaluationOptions::default()).unwrap();
        assert_eq!(frames.per_dataset[0].auc, Some(0.5));
    }

    #[test]
    fn bad_options_are_refused() {
        let recs = vec![rec("a", Label::Real, 0.1, None)];
        let o = EvaluationOptions {
            bootstrap: Some((0, 0.95, 0)),
            ..Default::default()
        };
        assert!(matches!(
            Evaluation::from_records(&recs, &o),
            Err(Undefined::BadArgument(_))
        ));
    }
}
