//! Seeded bootstrap confidence intervals for the AUC.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{SortedScores, Undefined, auc_sorted};

/// A percentile bootstrap interval for an AUC.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AucInterval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
    /// Number of bootstrap resamples.
    pub resamples: usize,
    /// Seed of the random generator (ChaCha8): same seed, same interval.
    pub seed: u64,
}

/// AUC of sorted scores where score `k` counts `w[k]` times.
pub(super) fn weighted_auc(real: &[f64], wr: &[u32], fake: &[f64], wf: &[u32]) -> f64 {
    // cum[k] = total weight of real[..k].
    let mut cum = Vec::with_capacity(real.len() + 1);
    cum.push(0u64);
    for &w in wr {
        cum.push(cum[cum.len() - 1] + u64::from(w));
    }
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut total: u128 = 0;
    for (&f, &w) in fake.iter().zip(wf) {
        while lo < real.len() && real[lo] < f {
            lo += 1;
        }
        hi = hi.max(lo);
        while hi < real.len() && real[hi] <= f {
            hi += 1;
        }
        let (below, equal) = (cum[lo], cum[hi] - cum[lo]);
        total += u128::from(w) * u128::from(2 * below + equal);
    }
    let nr = cum[real.len()];
    let nf: u64 = wf.iter().map(|&w| u64::from(w)).sum();
    #[allow(clippy::cast_precision_loss)]
    let auc = total as f64 / (2.0 * nr as f64 * nf as f64);
    auc
}

/// Multinomial resample counts: `n` draws with replacement from `n` items.
pub(super) fn resample_counts(rng: &mut ChaCha8Rng, n: usize, counts: &mut [u32]) {
    counts.fill(0);
    for _ in 0..n {
        counts[rng.random_range(0..n)] += 1;
    }
}

/// Percentile bootstrap interval of the AUC: reals and fakes are resampled
/// separately (stratified, so every resample has both classes), `resamples`
/// times, with a `ChaCha8` generator seeded by `seed`. Each resample costs
/// `O(n)` (counts over the sorted scores, no re-sorting).
///
/// # Errors
/// [`Undefined`] when a class is empty, `resamples` is 0, or `level` is
/// not in `(0, 1)`.
pub fn bootstrap_auc(
    real: &SortedScores,
    fake: &SortedScores,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<AucInterval, Undefined> {
    auc_sorted(real, fake)?; // class checks
    check_arguments(resamples, level)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (r, f) = (real.as_slice(), fake.as_slice());
    let (mut wr, mut wf) = (vec![0u32; r.len()], vec![0u32; f.len()]);
    let mut aucs: Vec<f64> = (0..resamples)
        .map(|_| {
            resample_counts(&mut rng, r.len(), &mut wr);
            resample_counts(&mut rng, f.len(), &mut wf);
            weighted_auc(r, &wr, f, &wf)
        })
        .collect();
    aucs.sort_unstable_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Ok(AucInterval {
        low: quantile(&aucs, alpha),
        high: quantile(&aucs, 1.0 - alpha),
        level,
        resamples,
        seed,
    })
}

/// At least one resample, and a level in `(0, 1)`.
pub(super) fn check_arguments(resamples: usize, level: f64) -> Result<(), Undefined> {
    if resamples == 0 {
        return Err(Undefined::BadArgument(
            "bootstrap needs at least one resample".into(),
        ));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(Undefined::BadArgument(format!(
            "confidence level {level} is not in (0, 1)"
        )));
    }
    Ok(())
}

/// Linear-interpolation quantile of sorted values (numpy's default).
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let k = pos.floor() as usize;
    let frac = pos - k as f64;
    match sorted.get(k + 1) {
        Some(&next) => sorted[k] + frac * (next - sorted[k]),
        None => sorted[k],
    }
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;
    use crate::metrics::auc;

    fn s(v: &[f64]) -> SortedScores {
        SortedScores::new(v.to_vec()).unwrap()
    }

    #[test]
    fn weighted_auc_equals_auc_of_expanded_scores() {
        let r = [0.1, 0.3, 0.5];
        let f = [0.3, 0.6];
        let (wr, wf) = ([2, 0, 3], [1, 4]);
        let expand = |x: &[f64], w: &[u32]| -> Vec<f64> {
            x.iter()
                .zip(w)
                .flat_map(|(&v, &k)| std::iter::repeat_n(v, k as usize))
                .collect()
        };
        let expected = auc(&expand(&r, &wr), &expand(&f, &wf)).unwrap();
        assert!((weighted_auc(&r, &wr, &f, &wf) - expected).abs() < 1e-15);
    }

    #[test]
    fn interval_is_seeded_and_brackets_the_auc() {
        let real: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let fake: Vec<f64> = (0..150).map(|i| 0.3 + f64::from(i) / 200.0).collect();
        let (r, f) = (s(&real), s(&fake));
        let point = auc_sorted(&r, &f).unwrap();
        let a = bootstrap_auc(&r, &f, 500, 0.95, 1).unwrap();
        let b = bootstrap_auc(&r, &f, 500, 0.95, 1).unwrap();
        let c = bootstrap_auc(&r, &f, 500, 0.95, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.low, c.low);
        assert!(a.low < point && point < a.high, "{a:?} vs {point}");
        assert!(a.high - a.low < 0.15 && a.high - a.low > 0.01);
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(&[0.0, 1.0, 2.0, 3.0], 0.5), 1.5);
        assert_eq!(quantile(&[5.0], 0.025), 5.0);
    }

    #[test]
    fn bad_arguments_are_undefined() {
        assert!(bootstrap_auc(&s(&[0.1]), &s(&[0.2]), 0, 0.95, 0).is_err());
        assert!(bootstrap_auc(&s(&[0.1]), &s(&[0.2]), 10, 1.0, 0).is_err());
        assert_eq!(
            bootstrap_auc(&s(&[]), &s(&[0.2]), 10, 0.9, 0),
            Err(Undefined::NoReal)
        );
    }
}
