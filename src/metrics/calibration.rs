//! Calibration of probability scores: expected calibration error and the
//! reliability curve.

use serde::Serialize;

use super::{SortedScores, Undefined};

/// One equal-width bin of the reliability curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge (inclusive).
    pub lower: f64,
    /// Upper edge (exclusive, except the last bin which includes 1).
    pub upper: f64,
    /// Faces whose score falls in the bin.
    pub count: usize,
    /// Mean score in the bin (the predicted probability of fake); `None`
    /// for an empty bin.
    pub mean_score: Option<f64>,
    /// Fraction of fakes in the bin (the observed frequency); `None` for
    /// an empty bin.
    pub fraction_fake: Option<f64>,
}

/// Calibration of scores read as probabilities of "fake".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Expected calibration error: `Σ_b (n_b / N) · |fraction_fake_b − mean_score_b|`.
    pub ece: f64,
    /// Maximum calibration error over non-empty bins.
    pub mce: f64,
    /// The reliability curve, one entry per bin (empty bins included).
    pub bins: Vec<ReliabilityBin>,
}

/// Expected calibration error with `n_bins` equal-width bins over `[0, 1]`
/// (a score `s` goes to bin `min(⌊s · n_bins⌋, n_bins − 1)`).
///
/// # Errors
/// [`Undefined::NotProbabilities`] when a score is outside `[0, 1]`,
/// [`Undefined::NoScores`] when there are none, and
/// [`Undefined::BadArgument`] when `n_bins` is 0.
#[allow(clippy::cast_precision_loss)] // counts are < 2^53
pub fn calibration(
    real: &SortedScores,
    fake: &SortedScores,
    n_bins: usize,
) -> Result<Calibration, Undefined> {
    if n_bins == 0 {
        return Err(Undefined::BadArgument(
            "calibration needs at least one bin".into(),
        ));
    }
    let n = real.len() + fake.len();
    if n == 0 {
        return Err(Undefined::NoScores);
    }
    let all = real.as_slice().iter().chain(fake.as_slice());
    if all.clone().any(|s| !(0.0..=1.0).contains(s)) {
        return Err(Undefined::NotProbabilities);
    }
    let mut sum = vec![0.0; n_bins];
    let mut count = vec![0usize; n_bins];
    let mut fakes = vec![0usize; n_bins];
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // s in [0, 1]
    let bin = |s: f64| ((s * n_bins as f64) as usize).min(n_bins - 1);
    for (scores, is_fake) in [(real, false), (fake, true)] {
        for &s in scores.as_slice() {
            let b = bin(s);
            sum[b] += s;
            count[b] += 1;
            fakes[b] += usize::from(is_fake);
        }
    }
    let mut ece = 0.0;
    let mut mce: f64 = 0.0;
    let bins = (0..n_bins)
        .map(|b| {
            let (mean_score, fraction_fake) = if count[b] == 0 {
                (None, None)
            } else {
                let c = count[b] as f64;
                let gap = (fakes[b] as f64 / c - sum[b] / c).abs();
                ece += c / n as f64 * gap;
                mce = mce.max(gap);
                (Some(sum[b] / c), Some(fakes[b] as f64 / c))
            };
            ReliabilityBin {
                lower: b as f64 / n_bins as f64,
                upper: (b + 1) as f64 / n_bins as f64,
                count: count[b],
                mean_score,
                fraction_fake,
            }
        })
        .collect();
    Ok(Calibration { ece, mce, bins })
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
    fn perfectly_calibrated_bins_have_zero_error() {
        // Bin [0.2,0.3): four faces at 0.25, one fake → 0.25 observed.
        let c = calibration(&s(&[0.25, 0.25, 0.25]), &s(&[0.25]), 4).unwrap();
        assert!(c.ece.abs() < 1e-15);
        assert_eq!(c.bins[1].count, 4);
        assert_eq!(c.bins[1].fraction_fake, Some(0.25));
        assert_eq!(c.bins[0].mean_score, None);
    }

    #[test]
    fn ece_weights_bins_by_size() {
        // Reals at 0.9 (bin 9: gap 0.9, weight 2/4), fakes at 1.0 (last bin
        // includes 1.0, so also bin 9).
        let c = calibration(&s(&[0.9, 0.9]), &s(&[1.0, 1.0]), 10).unwrap();
        // Bin 9: mean 0.95, fraction 0.5 → gap 0.45, weight 1.
        assert!((c.ece - 0.45).abs() < 1e-12, "{}", c.ece);
        assert!((c.mce - 0.45).abs() < 1e-12);
        let c = calibration(&s(&[0.0]), &s(&[1.0]), 2).unwrap();
        assert_eq!(c.ece, 0.0);
    }

    #[test]
    fn logits_are_not_probabilities() {
        assert_eq!(
            calibration(&s(&[-1.0]), &s(&[0.5]), 10),
            Err(Undefined::NotProbabilities)
        );
        assert!(calibration(&s(&[0.1]), &s(&[0.5]), 0).is_err());
    }
}
