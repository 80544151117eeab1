//! Operating points: the equal error rate, rates at a threshold, and a
//! threshold chosen on one dataset applied to another.

use serde::Serialize;

use super::{SortedScores, Undefined, roc_curve};

/// The equal error rate: where the false-positive rate (reals flagged) and
/// the false-negative rate (fakes missed) meet on the ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Eer {
    /// The EER, linearly interpolated between the two ROC points where
    /// `FPR − FNR` changes sign.
    pub eer: f64,
    /// A real score threshold at the ROC point nearest the crossing (the
    /// one with the smaller `|FPR − FNR|`): apply it to get an actual
    /// operating point.
    pub threshold: f64,
    /// False-positive rate at `threshold`.
    pub fpr: f64,
    /// False-negative rate at `threshold`.
    pub fnr: f64,
}

/// The equal error rate and a threshold that realises it.
///
/// # Errors
/// [`Undefined`] when either side is empty.
pub fn eer(real: &SortedScores, fake: &SortedScores) -> Result<Eer, Undefined> {
    let roc = roc_curve(real, fake, false)?;
    let d = |k: usize| roc.fpr[k] - (1.0 - roc.tpr[k]);
    // d(0) = -1 at (0, 0) and d(last) = +1 at (1, 1): a sign change exists.
    let k = (1..roc.fpr.len())
        .find(|&k| d(k) >= 0.0)
        .unwrap_or(roc.fpr.len() - 1);
    let (d0, d1) = (d(k - 1), d(k));
    let eer = if d1 == 0.0 {
        roc.fpr[k]
    } else {
        let t = -d0 / (d1 - d0);
        roc.fpr[k - 1] + t * (roc.fpr[k] - roc.fpr[k - 1])
    };
    // The point before the crossing is usable only if it has a finite threshold.
    let pick = if k - 1 > 0 && d0.abs() < d1.abs() {
        k - 1
    } else {
        k
    };
    Ok(Eer {
        eer,
        threshold: roc.thresholds[pick],
        fpr: roc.fpr[pick],
        fnr: 1.0 - roc.tpr[pick],
    })
}

/// How a threshold is chosen on a source dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "value")]
pub enum ThresholdRule {
    /// The threshold at the source's equal error rate.
    Eer,
    /// The lowest threshold whose false-positive rate on the source's
    /// reals is at most this target (in `[0, 1]`).
    Fpr(f64),
    /// A fixed threshold.
    Fixed(f64),
}

impl std::fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Eer => f.write_str("EER"),
            Self::Fpr(x) => write!(f, "FPR<={x}"),
            Self::Fixed(x) => write!(f, "fixed {x}"),
        }
    }
}

/// Chooses a threshold on `real`/`fake` by `rule`.
///
/// # Errors
/// [`Undefined`] when the rule needs a class that is empty (`Eer` needs
/// both; `Fpr` needs reals), or the target FPR is outside `[0, 1]`.
pub fn threshold_for(
    rule: ThresholdRule,
    real: &SortedScores,
    fake: &SortedScores,
) -> Result<f64, Undefined> {
    match rule {
        ThresholdRule::Eer => Ok(eer(real, fake)?.threshold),
        ThresholdRule::Fixed(t) if t.is_nan() => Err(Undefined::NaN),
        ThresholdRule::Fixed(t) => Ok(t),
        ThresholdRule::Fpr(target) => {
            if !(0.0..=1.0).contains(&target) {
                return Err(Undefined::BadArgument(format!(
                    "target false-positive rate {target} is outside [0, 1]"
                )));
            }
            let r = real.as_slice();
            if r.is_empty() {
                return Err(Undefined::NoReal);
            }
            // Allowed false positives; flag every score >= the threshold.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let allowed = ((target * r.len() as f64) + 1e-9).floor() as usize;
            if allowed >= r.len() {
                return Ok(r[0]);
            }
            // The (allowed+1)-th highest real must stay below the threshold.
            // The lowest such threshold on the ROC curve is the next score
            // (of either class) above it: it flags the most fakes.
            let pivot = r[r.len() - 1 - allowed];
            let next = |x: &SortedScores| {
                let s = x.as_slice();
                s.get(s.partition_point(|&v| v <= pivot)).copied()
            };
            Ok(match (next(real), next(fake)) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => pivot.next_up(),
            })
        }
    }
}

/// Detection rates at one threshold (flag fake when `score >= threshold`).
/// A rate needing a class that is absent is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// The threshold applied.
    pub threshold: f64,
    /// Fakes flagged / fakes.
    pub tpr: Option<f64>,
    /// Reals flagged / reals.
    pub fpr: Option<f64>,
    /// Correct decisions / all faces.
    pub accuracy: Option<f64>,
    /// Mean of TPR and TNR (needs both classes).
    pub balanced_accuracy: Option<f64>,
    /// Number of reals.
    pub n_real: usize,
    /// Number of fakes.
    pub n_fake: usize,
}

/// Rates of `real`/`fake` at `threshold`.
#[must_use]
#[allow(clippy::cast_precision_loss)] // counts are < 2^53
pub fn rates_at(threshold: f64, real: &SortedScores, fake: &SortedScores) -> Rates {
    let (nr, nf) = (real.len(), fake.len());
    let fp = real.count_at_or_above(threshold);
    let tp = fake.count_at_or_above(threshold);
    let tpr = (nf > 0).then(|| tp as f64 / nf as f64);
    let fpr = (nr > 0).then(|| fp as f64 / nr as f64);
    let correct = tp + (nr - fp);
    Rates {
        threshold,
        tpr,
        fpr,
        accuracy: (nr + nf > 0).then(|| correct as f64 / (nr + nf) as f64),
        balanced_accuracy: tpr.zip(fpr).map(|(t, f)| 0.5 * (t + (1.0 - f))),
        n_real: nr,
        n_fake: nf,
    }
}

/// A threshold chosen on one dataset and applied to another.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Transfer {
    /// How the threshold was chosen.
    pub rule: ThresholdRule,
    /// Rates on the dataset the threshold was chosen on.
    pub source: Rates,
    /// Rates on the dataset it was applied to.
    pub target: Rates,
}

/// Chooses a threshold on the source by `rule` and applies it to the target.
///
/// # Errors
/// [`Undefined`] when the threshold cannot be chosen on the source.
pub fn transfer(
    rule: ThresholdRule,
    source: (&SortedScores, &SortedScores),
    target: (&SortedScores, &SortedScores),
) -> Result<Transfer, Undefined> {
    let t = threshold_for(rule, source.0, source.1)?;
    Ok(Transfer {
        rule,
        source: rates_at(t, source.0, source.1),
        target: rates_at(t, target.0, target.1),
    })
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
    fn eer_of_separable_scores_is_zero() {
        let e = eer(&s(&[0.1, 0.2, 0.3]), &s(&[0.7, 0.8])).unwrap();
        assert_eq!(e.eer, 0.0);
        assert_eq!(e.threshold, 0.7);
        assert_eq!((e.fpr, e.fnr), (0.0, 0.0));
    }

    #[test]
    fn eer_interpolates_between_roc_points() {
        // reals 0,1,2,3 ; fakes 1.5,2.5,3.5,4.5: at t=2.5 fpr=1/4, fnr=1/4.
        let e = eer(&s(&[0.0, 1.0, 2.0, 3.0]), &s(&[1.5, 2.5, 3.5, 4.5])).unwrap();
        assert!((e.eer - 0.25).abs() < 1e-12, "{e:?}");
        assert!((e.fpr - 0.25).abs() < 1e-12 && (e.fnr - 0.25).abs() < 1e-12);
        // Fully overlapping: EER 0.5.
        let e = eer(&s(&[0.5, 0.5]), &s(&[0.5, 0.5])).unwrap();
        assert_eq!(e.eer, 0.5);
    }

    #[test]
    fn eer_of_reversed_scores_is_one() {
        let e = eer(&s(&[0.8, 0.9]), &s(&[0.1, 0.2])).unwrap();
        assert!((e.eer - 1.0).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn fpr_rule_respects_the_target() {
        let real = s(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
        let fake = s(&[0.95]);
        let t = threshold_for(ThresholdRule::Fpr(0.2), &real, &fake).unwrap();
        assert_eq!(t, 0.9);
        assert_eq!(rates_at(t, &real, &fake).fpr, Some(0.2));
        let t0 = threshold_for(ThresholdRule::Fpr(0.0), &real, &fake).unwrap();
        assert!(t0 > 1.0 && rates_at(t0, &real, &fake).fpr == Some(0.0));
        let t1 = threshold_for(ThresholdRule::Fpr(1.0), &real, &fake).unwrap();
        assert_eq!(rates_at(t1, &real, &fake).fpr, Some(1.0));
        // Ties: the tied block cannot be split, so FPR stays below target.
        let tied = s(&[0.5, 0.5, 0.5, 0.1]);
        let t = threshold_for(ThresholdRule::Fpr(0.5), &tied, &fake).unwrap();
        assert_eq!(rates_at(t, &tied, &fake).fpr, Some(0.0));
        assert!(threshold_for(ThresholdRule::Fpr(1.5), &real, &fake).is_err());
        assert_eq!(
            threshold_for(ThresholdRule::Fpr(0.1), &s(&[]), &fake),
            Err(Undefined::NoReal)
        );
    }

    #[test]
    fn transfer_applies_source_threshold_to_target() {
        let (ra, fa) = (s(&[0.1, 0.2]), s(&[0.8, 0.9]));
        // Target: everything shifted up by 0.5 — the domain shift Cross-AUC exposes.
        let (rb, fb) = (s(&[0.6, 0.7]), s(&[1.3, 1.4]));
        let t = transfer(ThresholdRule::Eer, (&ra, &fa), (&rb, &fb)).unwrap();
        assert_eq!(t.source.threshold, 0.8);
        assert_eq!(t.source.accuracy, Some(1.0));
        assert_eq!(t.target.tpr, Some(1.0));
        assert_eq!(t.target.fpr, Some(0.0));
        let t = transfer(ThresholdRule::Fixed(0.65), (&ra, &fa), (&rb, &fb)).unwrap();
        assert_eq!(t.target.fpr, Some(0.5));
        assert_eq!(t.target.accuracy, Some(0.75));
        assert_eq!(t.target.balanced_accuracy, Some(0.75));
    }

    #[test]
    fn rates_without_a_class_are_none() {
        let r = rates_at(0.5, &s(&[]), &s(&[0.6, 0.4]));
        assert_eq!(r.fpr, None);
        assert_eq!(r.balanced_accuracy, None);
        assert_eq!(r.tpr, Some(0.5));
        assert_eq!(r.accuracy, Some(0.5));
    }
}
