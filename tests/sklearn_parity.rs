//! The metrics agree with scikit-learn to 1e-12 on the fixtures written by
//! `tests/fixtures/metrics/generate.py` (scikit-learn 1.9.1).

// Tests compare exact values on purpose and may unwrap: a panic is a failed test.
#![allow(clippy::float_cmp, clippy::many_single_char_names, clippy::unwrap_used)]

use serde::Deserialize;
use sfam_studio::metrics::{RocCurve, SortedScores, auc_sorted, average_precision, roc_curve};

const TOL: f64 = 1e-12;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    generated: Vec<Generated>,
}

#[derive(Deserialize)]
struct Roc {
    fpr: Vec<f64>,
    tpr: Vec<f64>,
    thresholds: Vec<Option<f64>>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    scores: Vec<f64>,
    labels: Vec<u8>,
    auc: f64,
    ap: f64,
    roc: Roc,
    roc_full: Roc,
}

#[derive(Deserialize)]
struct Generator {
    seed: u64,
    n: usize,
    levels: u64,
    shift: u64,
}

#[derive(Deserialize)]
struct Sample {
    index: Vec<usize>,
    fpr: Vec<f64>,
    tpr: Vec<f64>,
    thresholds: Vec<Option<f64>>,
}

#[derive(Deserialize)]
struct Generated {
    name: String,
    generator: Generator,
    head: Vec<(u8, f64)>,
    auc: f64,
    ap: f64,
    n_real: usize,
    n_fake: usize,
    roc_len: usize,
    roc_full_len: usize,
    roc_sample: Sample,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/sklearn_cases.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn split(scores: &[f64], labels: &[u8]) -> (SortedScores, SortedScores) {
    let (mut real, mut fake) = (Vec::new(), Vec::new());
    for (&s, &l) in scores.iter().zip(labels) {
        if l == 1 { &mut fake } else { &mut real }.push(s);
    }
    (
        SortedScores::new(real).unwrap(),
        SortedScores::new(fake).unwrap(),
    )
}

fn close(name: &str, what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL,
        "{name}: {what} = {got}, scikit-learn {want}"
    );
}

fn same_roc(name: &str, got: &RocCurve, want: &Roc) {
    assert_eq!(got.fpr.len(), want.fpr.len(), "{name}: ROC length");
    for k in 0..got.fpr.len() {
        close(name, &format!("fpr[{k}]"), got.fpr[k], want.fpr[k]);
        close(name, &format!("tpr[{k}]"), got.tpr[k], want.tpr[k]);
        match want.thresholds[k] {
            None => assert_eq!(got.thresholds[k], f64::INFINITY, "{name}: threshold[{k}]"),
            // == on purpose: -0.0 and 0.0 are the same threshold.
            Some(t) => assert!(got.thresholds[k] == t, "{name}: threshold[{k}]"),
        }
    }
}

#[test]
fn small_cases_match_sklearn() {
    let f = fixture();
    assert!(f.cases.len() >= 13);
    for c in &f.cases {
        let (real, fake) = split(&c.scores, &c.labels);
        close(&c.name, "auc", auc_sorted(&real, &fake).unwrap(), c.auc);
        close(
            &c.name,
            "ap",
            average_precision(&real, &fake).unwrap(),
            c.ap,
        );
        same_roc(&c.name, &roc_curve(&real, &fake, true).unwrap(), &c.roc);
        same_roc(
            &c.name,
            &roc_curve(&real, &fake, false).unwrap(),
            &c.roc_full,
        );
    }
}

/// The fixture's generator (see tests/fixtures/metrics/README.md).
fn splitmix_scores(g: &Generator) -> (Vec<f64>, Vec<u8>) {
    let mut state = g.seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (mut scores, mut labels) = (Vec::with_capacity(g.n), Vec::with_capacity(g.n));
    for _ in 0..g.n {
        let (a, b) = (next(), next());
        let label = a & 1;
        let k = (b >> 11) % g.levels + label * g.shift;
        #[allow(clippy::cast_precision_loss)]
        scores.push(k as f64 / g.levels as f64);
        labels.push(u8::from(label == 1));
    }
    (scores, labels)
}

#[test]
fn million_score_cases_match_sklearn() {
    for g in fixture().generated {
        let (scores, labels) = splitmix_scores(&g.generator);
        for (k, &(l, s)) in g.head.iter().enumerate() {
            assert_eq!(
                (labels[k], scores[k]),
                (l, s),
                "{}: generator head {k}",
                g.name
            );
        }
        let (real, fake) = split(&scores, &labels);
        assert_eq!((real.len(), fake.len()), (g.n_real, g.n_fake), "{}", g.name);
        close(&g.name, "auc", auc_sorted(&real, &fake).unwrap(), g.auc);
        close(
            &g.name,
            "ap",
            average_precision(&real, &fake).unwrap(),
            g.ap,
        );
        let roc = roc_curve(&real, &fake, true).unwrap();
        assert_eq!(roc.fpr.len(), g.roc_len, "{}: ROC length", g.name);
        assert_eq!(
            roc_curve(&real, &fake, false).unwrap().fpr.len(),
            g.roc_full_len
        );
        let s = &g.roc_sample;
        for (n, &k) in s.index.iter().enumerate() {
            close(&g.name, &format!("fpr[{k}]"), roc.fpr[k], s.fpr[n]);
            close(&g.name, &format!("tpr[{k}]"), roc.tpr[k], s.tpr[n]);
            let t = s.thresholds[n].unwrap_or(f64::INFINITY);
            assert!(roc.thresholds[k] == t, "{}: threshold[{k}]", g.name);
        }
    }
}
