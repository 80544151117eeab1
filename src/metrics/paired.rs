//! Two detectors on the same faces: is one's AUC higher than the other's by
//! more than the faces' sampling explains? Score tables are paired by
//! path; every Cross-AUC cell's difference gets a paired bootstrap interval
//! (the same resampled faces scored by both detectors, so what the two
//! share — the faces' difficulty — cancels out).

use std::collections::{HashMap, HashSet};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::bootstrap::{check_arguments, quantile, resample_counts, weighted_auc};
use super::{SortedScores, Undefined, auc_sorted};
use crate::data::Label;
use crate::data::scores::ScoreRecord;

/// Why two score tables cannot be paired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// A path appears twice in one table.
    #[error("{path} appears twice in the {which} score table: pairing needs one score per path")]
    Duplicate {
        /// The path.
        path: String,
        /// `first` or `second`.
        which: &'static str,
    },
    /// The tables disagree on a face's dataset or label.
    #[error(
        "the two score tables disagree on {path}: {first} in the first, {second} in the second"
    )]
    Conflict {
        /// The path.
        path: String,
        /// Dataset and label in the first table.
        first: String,
        /// Dataset and label in the second table.
        second: String,
    },
    /// No path is in both tables.
    #[error(
        "no path is in both score tables ({first} and {second} rows): were they written for the same files, with the same paths?"
    )]
    NothingShared {
        /// Rows of the first table.
        first: usize,
        /// Rows of the second table.
        second: usize,
    },
}

/// The faces two score tables share, by dataset: each face's score from
/// both detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedTables {
    /// Dataset names in order of first appearance in the first table.
    pub datasets: Vec<String>,
    /// Per dataset, its real faces: (first score, second score).
    pub real: Vec<Vec<(f64, f64)>>,
    /// Per dataset, its fake faces: (first score, second score).
    pub fake: Vec<Vec<(f64, f64)>>,
    /// Rows of the first table whose path the second lacks.
    pub only_first: usize,
    /// Rows of the second table whose path the first lacks.
    pub only_second: usize,
}

impl PairedTables {
    /// Faces in both tables.
    #[must_use]
    pub fn len(&self) -> usize {
        self.real.iter().chain(&self.fake).map(Vec::len).sum()
    }

    /// No face in both tables (never so for a table [`Self::pair`] made).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pairs two score tables by path.
    ///
    /// # Errors
    /// A path twice in one table, a face whose dataset or label the tables
    /// disagree on, or no shared path at all.
    pub fn pair(first: &[ScoreRecord], second: &[ScoreRecord]) -> Result<Self, PairError> {
        let mut by_path: HashMap<&str, &ScoreRecord> = HashMap::with_capacity(second.len());
        for r in second {
            if by_path.insert(r.path.as_str(), r).is_some() {
                return Err(PairError::Duplicate {
                    path: r.path.clone(),
                    which: "second",
                });
            }
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(first.len());
        let mut out = Self {
            datasets: Vec::new(),
            real: Vec::new(),
            fake: Vec::new(),
            only_first: 0,
            only_second: 0,
        };
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut shared = 0;
        for a in first {
            if !seen.insert(a.path.as_str()) {
                return Err(PairError::Duplicate {
                    path: a.path.clone(),
                    which: "first",
                });
            }
            let Some(b) = by_path.get(a.path.as_str()) else {
                out.only_first += 1;
                continue;
            };
            if (a.dataset.as_str(), a.label) != (b.dataset.as_str(), b.label) {
                return Err(PairError::Conflict {
                    path: a.path.clone(),
                    first: format!("{} {}", a.dataset, a.label),
                    second: format!("{} {}", b.dataset, b.label),
                });
            }
            shared += 1;
            let k = *index.entry(a.dataset.as_str()).or_insert_with(|| {
                out.datasets.push(a.dataset.clone());
                out.real.push(Vec::new());
                out.fake.push(Vec::new());
                out.datasets.len() - 1
            });
            let side = match a.label {
                Label::Real => &mut out.real[k],
                Label::Fake => &mut out.fake[k],
            };
            side.push((a.score, b.score));
        }
        out.only_second = second.len() - shared;
        if shared == 0 {
            return Err(PairError::NothingShared {
                first: first.len(),
                second: second.len(),
            });
        }
        Ok(out)
    }
}

/// The second detector's AUC minus the first's on the same faces, with a
/// paired percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedDifference {
    /// AUC of the first detector.
    pub auc_first: f64,
    /// AUC of the second detector.
    pub auc_second: f64,
    /// `auc_second − auc_first`.
    pub difference: f64,
    /// Lower bound of the difference's interval.
    pub low: f64,
    /// Upper bound of the difference's interval.
    pub high: f64,
    /// Share of resamples in which the second detector's AUC is not above
    /// the first's (a one-sided bootstrap p-value for "the second is
    /// better").
    pub share_not_better: f64,
    /// Coverage of the interval, e.g. 0.95.
    pub level: f64,
    /// Number of bootstrap resamples.
    pub resamples: usize,
    /// Seed of the random generator (ChaCha8): same seed, same interval.
    pub seed: u64,
}

/// One class's faces sorted by each detector's score, with the face each
/// sorted position holds.
struct Sorted {
    first: Vec<f64>,
    first_face: Vec<usize>,
    second: Vec<f64>,
    second_face: Vec<usize>,
    /// Each detector's scores, for the AUCs themselves.
    first_scores: SortedScores,
    second_scores: SortedScores,
}

impl Sorted {
    /// # Errors
    /// [`Undefined::NaN`] if a score is NaN.
    fn new(pairs: &[(f64, f64)]) -> Result<Self, Undefined> {
        let scores =
            |pick: fn(&(f64, f64)) -> f64| SortedScores::new(pairs.iter().map(pick).collect());
        let (first_scores, second_scores) = (scores(|p| p.0)?, scores(|p| p.1)?);
        let by = |key: fn(&(f64, f64)) -> f64| {
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            order.sort_by(|&i, &j| key(&pairs[i]).total_cmp(&key(&pairs[j])));
            let values = order.iter().map(|&i| key(&pairs[i])).collect();
            (values, order)
        };
        let (first, first_face) = by(|p| p.0);
        let (second, second_face) = by(|p| p.1);
        Ok(Self {
            first,
            first_face,
            second,
            second_face,
            first_scores,
            second_scores,
        })
    }

    /// Resample counts per face, laid out in each detector's order.
    fn weights(&self, counts: &[u32], first: &mut [u32], second: &mut [u32]) {
        for (w, &face) in first.iter_mut().zip(&self.first_face) {
            *w = counts[face];
        }
        for (w, &face) in second.iter_mut().zip(&self.second_face) {
            *w = counts[face];
        }
    }
}

/// The AUC difference (second − first) of real faces `real` against fake
/// faces `fake`, each face scored by both detectors, and its paired
/// percentile bootstrap interval: reals and fakes resampled apart
/// (stratified), each resampled face scored by both, `resamples` times,
/// with a `ChaCha8` generator seeded by `seed`. `O(n)` per resample.
///
/// # Errors
/// [`Undefined`] when a class is empty or a score is NaN, `resamples` is
/// 0, or `level` is not in `(0, 1)`.
pub fn paired_auc_difference(
    real: &[(f64, f64)],
    fake: &[(f64, f64)],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<PairedDifference, Undefined> {
    sorted_difference(
        &Sorted::new(real)?,
        &Sorted::new(fake)?,
        resamples,
        level,
        seed,
    )
}

/// [`paired_auc_difference`] of classes already sorted.
fn sorted_difference(
    r: &Sorted,
    f: &Sorted,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<PairedDifference, Undefined> {
    let auc_first = auc_sorted(&r.first_scores, &f.first_scores)?;
    let auc_second = auc_sorted(&r.second_scores, &f.second_scores)?;
    check_arguments(resamples, level)?;
    let (nr, nf) = (r.first.len(), f.first.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut cr, mut cf) = (vec![0u32; nr], vec![0u32; nf]);
    let (mut wr1, mut wr2) = (vec![0u32; nr], vec![0u32; nr]);
    let (mut wf1, mut wf2) = (vec![0u32; nf], vec![0u32; nf]);
    let diffs: Vec<f64> = (0..resamples)
        .map(|_| {
            resample_counts(&mut rng, nr, &mut cr);
            resample_counts(&mut rng, nf, &mut cf);
            r.weights(&cr, &mut wr1, &mut wr2);
            f.weights(&cf, &mut wf1, &mut wf2);
            weighted_auc(&r.second, &wr2, &f.second, &wf2)
                - weighted_auc(&r.first, &wr1, &f.first, &wf1)
        })
        .collect();
    Ok(summarise((auc_first, auc_second), diffs, level, seed))
}

/// The Cross-AUC — the mean of the defined off-diagonal cells — of both
/// detectors, its difference (second − first) and a paired bootstrap
/// interval: each resample draws every dataset's real and fake faces anew
/// (stratified per dataset and class), and every cell of both detectors is
/// computed on that one draw. `None` when no off-diagonal cell is defined
/// (fewer than two datasets, or no dataset with reals beside one with
/// fakes).
///
/// # Errors
/// [`Undefined`] for a NaN score, zero `resamples`, or a `level` outside
/// `(0, 1)`.
pub fn paired_cross_auc_difference(
    t: &PairedTables,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<Option<PairedDifference>, Undefined> {
    check_arguments(resamples, level)?;
    let n_sets = t.datasets.len();
    let cells: Vec<(usize, usize)> = (0..n_sets)
        .flat_map(|i| (0..n_sets).map(move |j| (i, j)))
        .filter(|&(i, j)| i != j && !t.real[i].is_empty() && !t.fake[j].is_empty())
        .collect();
    if cells.is_empty() {
        return Ok(None);
    }
    let real: Vec<Sorted> = t
        .real
        .iter()
        .map(|v| Sorted::new(v))
        .collect::<Result<_, _>>()?;
    let fake: Vec<Sorted> = t
        .fake
        .iter()
        .map(|v| Sorted::new(v))
        .collect::<Result<_, _>>()?;
    // Per dataset and class: resample counts, laid out in each detector's order.
    let ones = |v: &[(f64, f64)]| vec![1u32; v.len()];
    let mean_of = |wr: &[(Vec<u32>, Vec<u32>)], wf: &[(Vec<u32>, Vec<u32>)]| {
        let (mut a, mut b) = (0.0, 0.0);
        for &(i, j) in &cells {
            a += weighted_auc(&real[i].first, &wr[i].0, &fake[j].first, &wf[j].0);
            b += weighted_auc(&real[i].second, &wr[i].1, &fake[j].second, &wf[j].1);
        }
        #[allow(clippy::cast_precision_loss)] // a handful of cells
        let n = cells.len() as f64;
        (a / n, b / n)
    };
    let unit = |v: &[Vec<(f64, f64)>]| -> Vec<(Vec<u32>, Vec<u32>)> {
        v.iter().map(|x| (ones(x), ones(x))).collect()
    };
    let (mut wr, mut wf) = (unit(&t.real), unit(&t.fake));
    let (auc_first, auc_second) = mean_of(&wr, &wf);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = Vec::new();
    let diffs: Vec<f64> = (0..resamples)
        .map(|_| {
            for (k, w) in wr.iter_mut().enumerate() {
                counts.resize(t.real[k].len(), 0);
                resample_counts(&mut rng, t.real[k].len(), &mut counts);
                real[k].weights(&counts, &mut w.0, &mut w.1);
            }
            for (k, w) in wf.iter_mut().enumerate() {
                counts.resize(t.fake[k].len(), 0);
                resample_counts(&mut rng, t.fake[k].len(), &mut counts);
                fake[k].weights(&counts, &mut w.0, &mut w.1);
            }
            let (a, b) = mean_of(&wr, &wf);
            b - a
        })
        .collect();
    Ok(Some(summarise((auc_first, auc_second), diffs, level, seed)))
}

/// The difference of two AUCs (`aucs`: first, second) with the percentile
/// interval and the share of non-positive values of its bootstrap
/// replicates `diffs` (one per resample).
fn summarise(aucs: (f64, f64), mut diffs: Vec<f64>, level: f64, seed: u64) -> PairedDifference {
    let not_better = diffs.iter().filter(|&&d| d <= 0.0).count();
    diffs.sort_unstable_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    #[allow(clippy::cast_precision_loss)] // counts are far below 2^53
    let share_not_better = not_better as f64 / diffs.len() as f64;
    PairedDifference {
        auc_first: aucs.0,
        auc_second: aucs.1,
        difference: aucs.1 - aucs.0,
        low: quantile(&diffs, alpha),
        high: quantile(&diffs, 1.0 - alpha),
        share_not_better,
        level,
        resamples: diffs.len(),
        seed,
    }
}

/// Every Cross-AUC cell's paired difference (rows: reals of; columns:
/// fakes of; `None` where the cell is undefined), each class sorted once,
/// the cells in parallel.
#[must_use]
pub fn paired_cells(
    t: &PairedTables,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Vec<Vec<Option<PairedDifference>>> {
    use rayon::prelude::*;
    let sort = |sides: &[Vec<(f64, f64)>]| -> Vec<Option<Sorted>> {
        sides.par_iter().map(|v| Sorted::new(v).ok()).collect()
    };
    let (real, fake) = (sort(&t.real), sort(&t.fake));
    real.par_iter()
        .map(|r| {
            fake.par_iter()
                .map(|f| match (r, f) {
                    (Some(r), Some(f)) => sorted_difference(r, f, resamples, level, seed).ok(),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;
    use crate::metrics::auc;

    type Pair = (f64, f64);

    fn rec(path: &str, dataset: &str, label: Label, score: f64) -> ScoreRecord {
        ScoreRecord {
            path: path.into(),
            dataset: dataset.into(),
            label,
            score,
            video: None,
        }
    }

    #[test]
    fn tables_pair_by_path_and_count_what_only_one_has() {
        let a = vec![
            rec("x", "d", Label::Real, 0.1),
            rec("y", "d", Label::Fake, 0.9),
            rec("z", "e", Label::Fake, 0.4),
            rec("only_a", "d", Label::Real, 0.5),
        ];
        let b = vec![
            rec("y", "d", Label::Fake, 0.7),
            rec("x", "d", Label::Real, 0.2),
            rec("z", "e", Label::Fake, 0.3),
            rec("only_b", "d", Label::Real, 0.5),
            rec("only_b2", "d", Label::Fake, 0.5),
        ];
        let t = PairedTables::pair(&a, &b).unwrap();
        assert_eq!(t.datasets, vec!["d", "e"]);
        assert_eq!(t.real[0], vec![(0.1, 0.2)]);
        assert_eq!(t.fake[0], vec![(0.9, 0.7)]);
        assert_eq!(t.fake[1], vec![(0.4, 0.3)]);
        assert!(t.real[1].is_empty());
        assert_eq!((t.only_first, t.only_second), (1, 2));
    }

    #[test]
    fn tables_that_cannot_be_paired_say_why() {
        let a = vec![rec("x", "d", Label::Real, 0.1)];
        let twice = vec![
            rec("x", "d", Label::Real, 0.1),
            rec("x", "d", Label::Real, 0.2),
        ];
        let e = PairedTables::pair(&a, &twice).unwrap_err();
        assert!(
            e.to_string().contains("x appears twice in the second"),
            "{e}"
        );
        let e = PairedTables::pair(&twice, &a).unwrap_err();
        assert!(e.to_string().contains("in the first"), "{e}");
        let relabelled = vec![rec("x", "d", Label::Fake, 0.1)];
        let e = PairedTables::pair(&a, &relabelled).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the two score tables disagree on x: d real in the first, d fake in the second"
        );
        let other = vec![rec("w", "d", Label::Real, 0.1)];
        assert!(matches!(
            PairedTables::pair(&a, &other),
            Err(PairError::NothingShared {
                first: 1,
                second: 1
            })
        ));
    }

    /// Scores of `n` faces per class from a fixed generator, the second
    /// detector's a noisy copy of the first's shifted by `shift` on fakes.
    fn faces(n: usize, shift: f64) -> (Vec<Pair>, Vec<Pair>) {
        let mut x: u64 = 7;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            #[allow(clippy::cast_precision_loss)]
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            u
        };
        let real = (0..n).map(|_| {
            let s = next();
            (s, s + 0.05 * next())
        });
        let real: Vec<_> = real.collect();
        let fake: Vec<_> = (0..n)
            .map(|_| {
                let s = next() * 0.8 + 0.2;
                (s, s + shift + 0.05 * next())
            })
            .collect();
        (real, fake)
    }

    #[test]
    fn the_difference_is_the_two_aucs_and_its_interval_holds_it() {
        let (real, fake) = faces(300, 0.1);
        let d = paired_auc_difference(&real, &fake, 500, 0.95, 3).unwrap();
        let first: Vec<f64> = real.iter().map(|p| p.0).collect();
        let second: Vec<f64> = real.iter().map(|p| p.1).collect();
        let ff: Vec<f64> = fake.iter().map(|p| p.0).collect();
        let fs: Vec<f64> = fake.iter().map(|p| p.1).collect();
        assert_eq!(d.auc_first, auc(&first, &ff).unwrap());
        assert_eq!(d.auc_second, auc(&second, &fs).unwrap());
        assert_eq!(d.difference, d.auc_second - d.auc_first);
        assert!(d.difference > 0.0);
        assert!(d.low <= d.difference && d.difference <= d.high && d.low < d.high);
        assert!(d.low > 0.0, "a clear gain: {d:?}");
        assert!(d.share_not_better < 0.025, "{d:?}");
        // Seeded: the same seed, the same interval; another seed, another.
        assert_eq!(
            d,
            paired_auc_difference(&real, &fake, 500, 0.95, 3).unwrap()
        );
        assert_ne!(
            d.low,
            paired_auc_difference(&real, &fake, 500, 0.95, 4)
                .unwrap()
                .low
        );
    }

    #[test]
    fn pairing_narrows_the_interval_of_a_shared_difficulty() {
        // Two detectors that agree closely: the paired interval of their
        // difference is much narrower than either AUC's own interval.
        let (real, fake) = faces(300, 0.0);
        let d = paired_auc_difference(&real, &fake, 500, 0.95, 0).unwrap();
        let own = super::super::bootstrap_auc(
            &SortedScores::new(real.iter().map(|p| p.0).collect()).unwrap(),
            &SortedScores::new(fake.iter().map(|p| p.0).collect()).unwrap(),
            500,
            0.95,
            0,
        )
        .unwrap();
        assert!(d.high - d.low < 0.5 * (own.high - own.low), "{d:?} {own:?}");
        assert!(d.low < 0.0 && 0.0 < d.high, "no real difference: {d:?}");
    }

    #[test]
    fn same_detector_twice_differs_by_nothing() {
        let (real, fake) = faces(50, 0.0);
        let same = |v: &[(f64, f64)]| v.iter().map(|p| (p.0, p.0)).collect::<Vec<_>>();
        let d = paired_auc_difference(&same(&real), &same(&fake), 100, 0.9, 1).unwrap();
        assert_eq!(
            (d.difference, d.low, d.high, d.share_not_better),
            (0.0, 0.0, 0.0, 1.0)
        );
    }

    #[test]
    fn cross_auc_difference_is_the_mean_of_the_off_diagonal_cells() {
        let (r0, f0) = faces(60, 0.1);
        let (r1, f1) = faces(40, -0.05);
        let t = PairedTables {
            datasets: vec!["a".into(), "b".into(), "gen".into()],
            real: vec![r0, r1, Vec::new()],
            fake: vec![f0, f1.clone(), f1],
            only_first: 0,
            only_second: 0,
        };
        let d = paired_cross_auc_difference(&t, 300, 0.95, 5)
            .unwrap()
            .unwrap();
        let cells = paired_cells(&t, 10, 0.95, 0);
        // Off-diagonal and defined: (a, b), (a, gen), (b, a), (b, gen).
        let off = [(0, 1), (0, 2), (1, 0), (1, 2)];
        let mean = |pick: fn(&PairedDifference) -> f64| {
            off.iter()
                .map(|&(i, j)| pick(&cells[i][j].unwrap()))
                .sum::<f64>()
                / 4.0
        };
        assert!((d.auc_first - mean(|c| c.auc_first)).abs() < 1e-12);
        assert!((d.auc_second - mean(|c| c.auc_second)).abs() < 1e-12);
        assert!(d.low <= d.difference && d.difference <= d.high && d.low < d.high);
        assert_eq!(
            d,
            paired_cross_auc_difference(&t, 300, 0.95, 5)
                .unwrap()
                .unwrap()
        );
        // One dataset: no off-diagonal cell.
        let one = PairedTables {
            datasets: vec!["a".into()],
            real: vec![t.real[0].clone()],
            fake: vec![t.fake[0].clone()],
            only_first: 0,
            only_second: 0,
        };
        assert_eq!(paired_cross_auc_difference(&one, 10, 0.95, 0), Ok(None));
        assert!(paired_cross_auc_difference(&t, 0, 0.95, 0).is_err());
    }

    #[test]
    fn undefined_cells_and_bad_arguments_are_errors() {
        let (real, fake) = faces(10, 0.0);
        assert_eq!(
            paired_auc_difference(&[], &fake, 10, 0.9, 0),
            Err(Undefined::NoReal)
        );
        assert_eq!(
            paired_auc_difference(&real, &[], 10, 0.9, 0),
            Err(Undefined::NoFake)
        );
        assert!(matches!(
            paired_auc_difference(&real, &fake, 0, 0.9, 0),
            Err(Undefined::BadArgument(_))
        ));
        assert!(matches!(
            paired_auc_difference(&real, &fake, 10, 1.0, 0),
            Err(Undefined::BadArgument(_))
        ));
        let t = PairedTables {
            datasets: vec!["d".into(), "gen".into()],
            real: vec![real, Vec::new()],
            fake: vec![fake.clone(), fake],
            only_first: 0,
            only_second: 0,
        };
        let cells = paired_cells(&t, 20, 0.9, 0);
        assert!(cells[0][0].is_some() && cells[0][1].is_some());
        assert!(cells[1].iter().all(Option::is_none));
    }
}
