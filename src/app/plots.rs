//! Plot data computed once per evaluation (never per frame), and the
//! colour map of the Cross-AUC grid.

use egui::Color32;
use sfam_studio::metrics::SortedScores;

/// Number of histogram bins.
pub const BINS: usize = 40;

/// A histogram over a shared score range: bin width and per-bin fraction
/// of the class (so classes of different sizes compare).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Lower edge of the first bin.
    pub start: f64,
    /// Bin width.
    pub width: f64,
    /// Fraction of the scores in each bin.
    pub fractions: Vec<f64>,
}

impl Histogram {
    /// Bins sorted scores over `[lo, hi]` in one pass (sorted input: each
    /// bin's count is a difference of two partition points).
    #[allow(clippy::cast_precision_loss)] // counts are < 2^53
    pub fn new(scores: &SortedScores, lo: f64, hi: f64) -> Self {
        let width = if hi > lo {
            (hi - lo) / BINS as f64
        } else {
            1.0
        };
        let s = scores.as_slice();
        let n = s.len().max(1) as f64;
        let mut fractions = Vec::with_capacity(BINS);
        let mut prev = 0;
        for b in 1..=BINS {
            let edge = lo + width * b as f64;
            let next = if b == BINS {
                s.len()
            } else {
                s.partition_point(|&x| x < edge)
            };
            fractions.push((next - prev) as f64 / n);
            prev = next;
        }
        Self {
            start: lo,
            width,
            fractions,
        }
    }

    /// The largest fraction of any bin (0 for an empty histogram).
    pub fn tallest(&self) -> f64 {
        self.fractions.iter().copied().fold(0.0, f64::max)
    }

    /// Bars for `egui_plot`, shifted by `offset` of a bin width (to set two
    /// classes side by side).
    pub fn bars(&self, offset: f64) -> Vec<egui_plot::Bar> {
        self.fractions
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                #[allow(clippy::cast_precision_loss)]
                let x = self.start + self.width * (i as f64 + 0.5 + offset);
                egui_plot::Bar::new(x, f).width(self.width * 0.5)
            })
            .collect()
    }
}

/// The score range shared by all histograms.
pub fn score_range<'a>(all: impl Iterator<Item = &'a SortedScores>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in all {
        if let (Some(&a), Some(&b)) = (s.as_slice().first(), s.as_slice().last()) {
            lo = lo.min(a);
            hi = hi.max(b);
        }
    }
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// Colour of an AUC cell: red at 0, grey-white at 0.5 (chance), blue at 1.
pub fn auc_color(auc: f64) -> Color32 {
    #[allow(clippy::cast_possible_truncation)] // a colour needs no f64 precision
    let t = auc.clamp(0.0, 1.0) as f32;
    let lerp = |a: u8, b: u8, k: f32| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = (f32::from(a) + (f32::from(b) - f32::from(a)) * k).round() as u8;
        v
    };
    let (red, mid, blue) = ((200, 60, 50), (225, 225, 225), (40, 100, 200));
    if t < 0.5 {
        let k = t * 2.0;
        Color32::from_rgb(
            lerp(red.0, mid.0, k),
            lerp(red.1, mid.1, k),
            lerp(red.2, mid.2, k),
        )
    } else {
        let k = (t - 0.5) * 2.0;
        Color32::from_rgb(
            lerp(mid.0, blue.0, k),
            lerp(mid.1, blue.1, k),
            lerp(mid.2, blue.2, k),
        )
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn histogram_fractions_sum_to_one_and_bin_edges_are_right() {
        let s = SortedScores::new(vec![0.0, 0.01, 0.5, 0.99, 1.0]).unwrap();
        let h = Histogram::new(&s, 0.0, 1.0);
        assert_eq!(h.fractions.len(), BINS);
        assert!((h.fractions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(h.fractions[0], 0.4);
        assert_eq!(h.fractions[BINS - 1], 0.4); // 0.99 and the max, 1.0
        assert_eq!(h.fractions[BINS / 2], 0.2);
        assert_eq!(h.tallest(), 0.4);
    }

    #[test]
    fn colours_run_from_red_through_grey_to_blue() {
        assert_eq!(auc_color(0.0), Color32::from_rgb(200, 60, 50));
        assert_eq!(auc_color(0.5), Color32::from_rgb(225, 225, 225));
        assert_eq!(auc_color(1.0), Color32::from_rgb(40, 100, 200));
    }
}
