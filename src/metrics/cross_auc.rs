//! The Cross-AUC matrix: real faces of one dataset against fake faces of
//! another (`C[i][j] = AUC(R_i, F_j)`), and its summaries.

use rayon::prelude::*;
use serde::{Serialize, Serializer};

use super::{SortedScores, Undefined, auc_sorted};

/// One dataset's scores, each class sorted once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainScores {
    /// Dataset name.
    pub name: String,
    /// Scores of its real faces.
    pub real: SortedScores,
    /// Scores of its fake faces.
    pub fake: SortedScores,
}

impl DomainScores {
    /// Sorts both classes (in parallel).
    ///
    /// # Errors
    /// [`Undefined::NaN`] when a score is NaN.
    pub fn new(name: String, real: Vec<f64>, fake: Vec<f64>) -> Result<Self, Undefined> {
        let (real, fake) = rayon::join(|| SortedScores::new(real), || SortedScores::new(fake));
        Ok(Self {
            name,
            real: real?,
            fake: fake?,
        })
    }
}

/// A matrix cell: an AUC, or the reason there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// The AUC of the row's reals against the column's fakes.
    Defined(f64),
    /// Why the cell has no value (the row has no reals, the column no
    /// fakes, or both).
    Undefined(Undefined),
}

impl Cell {
    /// The value, if defined.
    #[must_use]
    pub fn value(&self) -> Option<f64> {
        match self {
            Self::Defined(v) => Some(*v),
            Self::Undefined(_) => None,
        }
    }
}

/// Cells serialise as a number, or `null` when undefined.
impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

/// The lowest defined cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorstCell {
    /// Row index: the dataset of the real faces.
    pub real: usize,
    /// Column index: the dataset of the fake faces.
    pub fake: usize,
    /// Its AUC.
    pub auc: f64,
}

/// `(C[a][b] + C[b][a]) / 2` for one pair of datasets, `a < b`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairMean {
    /// First dataset index.
    pub a: usize,
    /// Second dataset index.
    pub b: usize,
    /// The mean of both off-diagonal cells; `None` when either is undefined.
    pub mean: Option<f64>,
}

/// Summaries of a Cross-AUC matrix. Means run over defined cells only;
/// a summary with no defined cell to run over is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossAucSummary {
    /// Mean of the defined off-diagonal cells: the headline Cross-AUC.
    pub mean_off_diagonal: Option<f64>,
    /// Mean of the defined diagonal cells (the usual within-dataset AUCs).
    pub mean_diagonal: Option<f64>,
    /// `mean_diagonal − mean_off_diagonal`: how much the detector owes to
    /// domain-specific score levels.
    pub gap: Option<f64>,
    /// The lowest defined cell (diagonal included).
    pub worst: Option<WorstCell>,
    /// Each pair's mean, `a < b`.
    pub pair_means: Vec<PairMean>,
    /// Number of defined cells.
    pub defined_cells: usize,
    /// Number of undefined cells.
    pub undefined_cells: usize,
}

/// The Cross-AUC matrix of `n` datasets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossAuc {
    /// Dataset names, in matrix order (rows: reals of; columns: fakes of).
    pub datasets: Vec<String>,
    /// `matrix[i][j] = AUC(reals of i, fakes of j)`.
    pub matrix: Vec<Vec<Cell>>,
    /// Summaries.
    pub summary: CrossAucSummary,
}

impl CrossAuc {
    /// Computes the matrix. Each class was sorted once (in
    /// [`DomainScores`]); each cell is one linear merge, so the whole
    /// matrix costs `O(n · N)` after the `O(N log N)` sorts. Rows run in
    /// parallel.
    #[must_use]
    pub fn compute(domains: &[DomainScores]) -> Self {
        let matrix: Vec<Vec<Cell>> = domains
            .par_iter()
            .map(|row| {
                domains
                    .iter()
                    .map(|col| match auc_sorted(&row.real, &col.fake) {
                        Ok(v) => Cell::Defined(v),
                        Err(reason) => Cell::Undefined(reason),
                    })
                    .collect()
            })
            .collect();
        let summary = summarize(&matrix);
        Self {
            datasets: domains.iter().map(|d| d.name.clone()).collect(),
            matrix,
            summary,
        }
    }

    /// Why cell `(real, fake)` is undefined, in words naming the datasets;
    /// `None` for a defined cell or out-of-range indices.
    #[must_use]
    pub fn undefined_reason(&self, real: usize, fake: usize) -> Option<String> {
        let Cell::Undefined(reason) = self.matrix.get(real)?.get(fake)? else {
            return None;
        };
        let (r, f) = (&self.datasets[real], &self.datasets[fake]);
        Some(match reason {
            Undefined::NoReal => format!("{r} has no real faces"),
            Undefined::NoFake => format!("{f} has no fake faces"),
            Undefined::NoScores => format!("{r} has no real faces and {f} has no fake faces"),
            other => other.to_string(),
        })
    }
}

#[allow(clippy::cast_precision_loss)] // a handful of cells
fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn summarize(m: &[Vec<Cell>]) -> CrossAucSummary {
    let n = m.len();
    let (mut diag, mut off) = (Vec::new(), Vec::new());
    let mut worst: Option<WorstCell> = None;
    let mut undefined_cells = 0;
    for (i, row) in m.iter().enumerate() {
        for (j, cell) in row.iter().enumerate() {
            let Some(v) = cell.value() else {
                undefined_cells += 1;
                continue;
            };
            if i == j { &mut diag } else { &mut off }.push(v);
            if worst.as_ref().is_none_or(|w| v < w.auc) {
                worst = Some(WorstCell {
                    real: i,
                    fake: j,
                    auc: v,
                });
            }
        }
    }
    let pair_means = (0..n)
        .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
        .map(|(a, b)| PairMean {
            a,
            b,
            mean: m[a][b]
                .value()
                .zip(m[b][a].value())
                .map(|(x, y)| 0.5 * (x + y)),
        })
        .collect();
    let (mean_diagonal, mean_off_diagonal) = (mean(&diag), mean(&off));
    CrossAucSummary {
        mean_off_diagonal,
        mean_diagonal,
        gap: mean_diagonal.zip(mean_off_diagonal).map(|(d, o)| d - o),
        worst,
        pair_means,
        defined_cells: diag.len() + off.len(),
        undefined_cells,
    }
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;
    use crate::metrics::auc;

    fn domain(name: &str, real: &[f64], fake: &[f64]) -> DomainScores {
        DomainScores {
            name: name.into(),
            real: SortedScores::new(real.to_vec()).unwrap(),
            fake: SortedScores::new(fake.to_vec()).unwrap(),
        }
    }

    #[test]
    fn shifted_domain_keeps_diagonal_and_collapses_off_it() {
        // B's scores are all shifted up by 1: each dataset alone is perfect.
        let a = domain("A", &[0.1, 0.2, 0.3], &[0.6, 0.7]);
        let b = domain("B", &[1.1, 1.2, 1.3], &[1.6, 1.7]);
        let c = CrossAuc::compute(&[a, b]);
        let v = |i: usize, j: usize| c.matrix[i][j].value().unwrap();
        assert_eq!((v(0, 0), v(1, 1)), (1.0, 1.0));
        assert_eq!(v(0, 1), 1.0); // reals of A vs fakes of B: trivially apart
        assert_eq!(v(1, 0), 0.0); // reals of B score above fakes of A
        let s = &c.summary;
        assert_eq!(s.mean_diagonal, Some(1.0));
        assert_eq!(s.mean_off_diagonal, Some(0.5));
        assert_eq!(s.gap, Some(0.5));
        assert_eq!(
            s.worst,
            Some(WorstCell {
                real: 1,
                fake: 0,
                auc: 0.0
            })
        );
        assert_eq!(
            s.pair_means,
            vec![PairMean {
                a: 0,
                b: 1,
                mean: Some(0.5)
            }]
        );
    }

    #[test]
    fn cells_equal_direct_auc() {
        let ds = [
            domain("x", &[0.3, 0.1, 0.5, 0.5], &[0.5, 0.9]),
            domain("y", &[0.2, 0.8], &[0.4, 0.4, 0.6]),
            domain("z", &[0.7], &[0.1, 0.5, 0.99]),
        ];
        let c = CrossAuc::compute(&ds);
        for (i, r) in ds.iter().enumerate() {
            for (j, f) in ds.iter().enumerate() {
                let direct = auc(r.real.as_slice(), f.fake.as_slice()).unwrap();
                assert_eq!(c.matrix[i][j].value(), Some(direct), "cell {i},{j}");
            }
        }
    }

    #[test]
    fn missing_sides_make_cells_undefined_with_reasons() {
        let fakes_only = domain("gen", &[], &[0.9, 0.8]);
        let full = domain("full", &[0.1, 0.2], &[0.7]);
        let reals_only = domain("photos", &[0.3], &[]);
        let c = CrossAuc::compute(&[fakes_only, full, reals_only]);
        assert_eq!(c.matrix[0][0], Cell::Undefined(Undefined::NoReal));
        assert_eq!(c.matrix[0][2], Cell::Undefined(Undefined::NoScores));
        assert_eq!(c.matrix[1][2], Cell::Undefined(Undefined::NoFake));
        // Fakes of "gen" still count against reals of the others.
        assert_eq!(c.matrix[1][0].value(), Some(1.0));
        assert_eq!(c.matrix[2][0].value(), Some(1.0));
        assert_eq!(c.undefined_reason(0, 1).unwrap(), "gen has no real faces");
        assert_eq!(
            c.undefined_reason(1, 2).unwrap(),
            "photos has no fake faces"
        );
        assert_eq!(c.undefined_reason(1, 1), None);
        assert_eq!(c.summary.defined_cells, 4);
        assert_eq!(c.summary.undefined_cells, 5);
        assert_eq!(c.summary.mean_diagonal, Some(1.0));
        let json = serde_json::to_value(&c).unwrap();
        assert!(json["matrix"][0][0].is_null());
        assert_eq!(json["matrix"][1][0], 1.0);
    }

    #[test]
    fn empty_input_has_no_summaries() {
        let c = CrossAuc::compute(&[]);
        assert_eq!(c.summary.mean_off_diagonal, None);
        assert_eq!(c.summary.gap, None);
        assert_eq!(c.summary.worst, None);
    }
}
