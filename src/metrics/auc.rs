//! ROC AUC (Mann–Whitney), ROC curves and average precision, each exactly
//! as scikit-learn defines them.

use serde::Serialize;

use super::Undefined;

/// Scores of one class, sorted ascending, NaN-free, with `-0.0` folded into
/// `0.0` (IEEE equal, so they tie). Sorting once and merging afterwards is
/// what makes an n-dataset Cross-AUC matrix cost `O(N log N + n·N)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SortedScores(Vec<f64>);

impl SortedScores {
    /// Sorts `scores`.
    ///
    /// # Errors
    /// [`Undefined::NaN`] when a score is NaN.
    pub fn new(mut scores: Vec<f64>) -> Result<Self, Undefined> {
        for s in &mut scores {
            if s.is_nan() {
                return Err(Undefined::NaN);
            }
            // Fold -0.0 into +0.0 so the sort order matches IEEE equality.
            *s += 0.0;
        }
        // LSD radix sort on the IEEE total order: O(n), several times
        // faster than a comparison sort on a million scores.
        radsort::sort(&mut scores);
        Ok(Self(scores))
    }

    /// The scores, ascending.
    #[must_use]
    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }

    /// Number of scores.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no scores.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many scores are `>= threshold` (flagged fake at that threshold).
    #[must_use]
    pub fn count_at_or_above(&self, threshold: f64) -> usize {
        self.0.len() - self.0.partition_point(|&s| s < threshold)
    }

    /// The largest score, if any.
    #[must_use]
    pub fn max(&self) -> Option<f64> {
        self.0.last().copied()
    }
}

/// `2 · #{(r, f): f > r} + #{(r, f): f = r}` for ascending `real` and
/// `fake`, in one linear merge.
fn doubled_mann_whitney(real: &[f64], fake: &[f64]) -> u128 {
    let mut lo = 0; // first real >= current fake value
    let mut hi = 0; // first real > current fake value
    let mut total: u64 = 0;
    for &f in fake {
        while lo < real.len() && real[lo] < f {
            lo += 1;
        }
        hi = hi.max(lo);
        while hi < real.len() && real[hi] <= f {
            hi += 1;
        }
        // lo + hi = 2·#{r < f} + #{r = f}; the sum stays below 2^64 for
        // any table that fits in memory (2 · 2^31 · 2^31 = 2^63).
        total += (lo + hi) as u64;
    }
    u128::from(total)
}

/// ROC AUC of already-sorted scores: `P(fake > real) + ½·P(fake = real)`,
/// in `O(n_real + n_fake)`.
///
/// # Errors
/// [`Undefined`] when either side is empty.
pub fn auc_sorted(real: &SortedScores, fake: &SortedScores) -> Result<f64, Undefined> {
    if let Some(reason) = Undefined::for_counts(real.len(), fake.len()) {
        return Err(reason);
    }
    let doubled = doubled_mann_whitney(&real.0, &fake.0);
    #[allow(clippy::cast_precision_loss)] // counts below 2^53 are exact; larger ones round at 1e-16
    let auc = doubled as f64 / (2.0 * real.len() as f64 * fake.len() as f64);
    Ok(auc)
}

/// ROC AUC of unsorted scores (sorts copies).
///
/// # Errors
/// [`Undefined`] when either side is empty or a score is NaN.
pub fn auc(real: &[f64], fake: &[f64]) -> Result<f64, Undefined> {
    auc_sorted(
        &SortedScores::new(real.to_vec())?,
        &SortedScores::new(fake.to_vec())?,
    )
}

/// Cumulative counts at each distinct score, from the highest down:
/// `(threshold, fakes >= threshold, reals >= threshold)` — scikit-learn's
/// `_binary_clf_curve`.
fn descending_counts(real: &[f64], fake: &[f64]) -> Vec<(f64, u64, u64)> {
    let mut out = Vec::new();
    // Scores not yet consumed: real[..nr] and fake[..nf].
    let (mut nr, mut nf) = (real.len(), fake.len());
    let (mut fps, mut tps) = (0u64, 0u64);
    while nr > 0 || nf > 0 {
        let threshold = match (nr, nf) {
            (0, _) => fake[nf - 1],
            (_, 0) => real[nr - 1],
            _ => real[nr - 1].max(fake[nf - 1]),
        };
        while nr > 0 && real[nr - 1] >= threshold {
            nr -= 1;
            fps += 1;
        }
        while nf > 0 && fake[nf - 1] >= threshold {
            nf -= 1;
            tps += 1;
        }
        out.push((threshold, tps, fps));
    }
    out
}

/// Points of a ROC curve, from threshold `+∞` (the point `(0, 0)`) down to
/// the lowest score (the point `(1, 1)`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RocCurve {
    /// False-positive rate (reals flagged fake) at each point.
    pub fpr: Vec<f64>,
    /// True-positive rate (fakes flagged fake) at each point.
    pub tpr: Vec<f64>,
    /// Threshold of each point; the first is `+∞` (serialised as `null`).
    #[serde(serialize_with = "serialize_thresholds")]
    pub thresholds: Vec<f64>,
}

fn serialize_thresholds<S: serde::Serializer>(t: &[f64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(t.iter().map(|&x| x.is_finite().then_some(x)))
}

/// The ROC curve, as scikit-learn's `roc_curve`: one point per distinct
/// score, plus `(0, 0)` at threshold `+∞`. With `drop_intermediate`,
/// points on a straight segment between two corners are dropped (same
/// rule as scikit-learn, its default).
///
/// # Errors
/// [`Undefined`] when either side is empty.
pub fn roc_curve(
    real: &SortedScores,
    fake: &SortedScores,
    drop_intermediate: bool,
) -> Result<RocCurve, Undefined> {
    if let Some(reason) = Undefined::for_counts(real.len(), fake.len()) {
        return Err(reason);
    }
    let counts = descending_counts(&real.0, &fake.0);
    let keep: Vec<bool> = if drop_intermediate && counts.len() > 2 {
        let n = counts.len();
        (0..n)
            .map(|k| {
                if k == 0 || k == n - 1 {
                    return true;
                }
                let (_, t0, f0) = counts[k - 1];
                let (_, t1, f1) = counts[k];
                let (_, t2, f2) = counts[k + 1];
                // Second differences of the integer counts: non-zero at a corner.
                t2 + t0 != 2 * t1 || f2 + f0 != 2 * f1
            })
            .collect()
    } else {
        vec![true; counts.len()]
    };
    #[allow(clippy::cast_precision_loss)] // counts are < 2^53
    let (nr, nf) = (real.len() as f64, fake.len() as f64);
    let mut roc = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    for (&(t, tps, fps), _) in counts.iter().zip(&keep).filter(|(_, k)| **k) {
        #[allow(clippy::cast_precision_loss)]
        {
            roc.fpr.push(fps as f64 / nr);
            roc.tpr.push(tps as f64 / nf);
        }
        roc.thresholds.push(t);
    }
    Ok(roc)
}

/// Average precision, as scikit-learn's `average_precision_score`:
/// `Σ_k (R_k − R_{k−1}) · P_k` over distinct thresholds from the highest,
/// with fake as the positive class.
///
/// # Errors
/// [`Undefined`] when either side is empty (with no reals every precision
/// is 1 and the figure says nothing; scikit-learn returns 1.0 there).
pub fn average_precision(real: &SortedScores, fake: &SortedScores) -> Result<f64, Undefined> {
    if let Some(reason) = Undefined::for_counts(real.len(), fake.len()) {
        return Err(reason);
    }
    #[allow(clippy::cast_precision_loss)] // counts are < 2^53
    let nf = fake.len() as f64;
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for (_, tps, fps) in descending_counts(&real.0, &fake.0) {
        #[allow(clippy::cast_precision_loss)]
        let (recall, precision) = (tps as f64 / nf, tps as f64 / (tps + fps) as f64);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Ok(ap)
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;

    fn s(v: &[f64]) -> SortedScores {
        SortedScores::new(v.to_vec()).unwrap()
    }

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(auc(&[0.1, 0.4], &[0.4, 0.9]).unwrap(), 0.875);
        assert_eq!(auc(&[0.5; 3], &[0.5; 4]).unwrap(), 0.5);
        assert_eq!(auc(&[1.0], &[0.0]).unwrap(), 0.0);
        assert_eq!(auc(&[-0.0], &[0.0]).unwrap(), 0.5);
    }

    #[test]
    fn auc_matches_brute_force_on_ties() {
        let real = [0.3, 0.1, 0.3, 0.7, 0.2, 0.3];
        let fake = [0.3, 0.7, 0.9, 0.1, 0.3];
        let mut wins = 0.0;
        for r in real {
            for f in fake {
                wins += if f > r {
                    1.0
                } else if f == r {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let expected = wins / 30.0;
        assert!((auc(&real, &fake).unwrap() - expected).abs() < 1e-15);
    }

    #[test]
    fn empty_sides_and_nan_are_undefined() {
        assert_eq!(auc(&[], &[0.5]), Err(Undefined::NoReal));
        assert_eq!(auc(&[0.5], &[]), Err(Undefined::NoFake));
        assert_eq!(auc(&[], &[]), Err(Undefined::NoScores));
        assert_eq!(auc(&[f64::NAN], &[0.5]), Err(Undefined::NaN));
    }

    #[test]
    fn roc_curve_has_sklearn_shape() {
        // sklearn: roc_curve([0,0,1,1], [0.1,0.4,0.35,0.8])
        let roc = roc_curve(&s(&[0.1, 0.4]), &s(&[0.35, 0.8]), true).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(roc.thresholds[1..], [0.8, 0.4, 0.35, 0.1]);
        assert!(roc.thresholds[0].is_infinite());
    }

    #[test]
    fn average_precision_of_small_case() {
        // sklearn: average_precision_score([0,0,1,1], [0.1,0.4,0.35,0.8]) == 0.8333…
        let ap = average_precision(&s(&[0.1, 0.4]), &s(&[0.35, 0.8])).unwrap();
        assert!((ap - 0.833_333_333_333_333_3).abs() < 1e-15);
    }

    #[test]
    fn count_at_or_above_uses_inclusive_threshold() {
        let x = s(&[0.1, 0.5, 0.5, 0.9]);
        assert_eq!(x.count_at_or_above(0.5), 3);
        assert_eq!(x.count_at_or_above(0.51), 1);
        assert_eq!(x.count_at_or_above(f64::INFINITY), 0);
    }
}
