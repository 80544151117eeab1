//! Metric benchmarks, matched by `benches/python/bench_sklearn.py` (the
//! scikit-learn baseline, same data shapes). Run both with
//! `benches/compare.sh`; results in BENCHMARKS.md.

// A failed unwrap is a failed benchmark setup.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use sfam_studio::metrics::{CrossAuc, DomainScores, SortedScores, auc, paired_auc_difference};
use std::hint::black_box;

/// 10^6 scores: uniform, balanced random labels, fakes shifted by +0.1.
fn auc_data() -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut real, mut fake) = (Vec::new(), Vec::new());
    for _ in 0..1_000_000 {
        let s: f64 = rng.random();
        if rng.random_bool(0.5) {
            fake.push(s + 0.1);
        } else {
            real.push(s);
        }
    }
    (real, fake)
}

/// 8 datasets × 125 000 scores: half real ~ N(0.1·d, 1), half fake ~ N(0.1·d + 0.8, 1).
fn cross_data() -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    (0..8u8)
        .map(|d| {
            let off = 0.1 * f64::from(d);
            let real = Normal::new(off, 1.0).unwrap();
            let fake = Normal::new(off + 0.8, 1.0).unwrap();
            let r = (0..62_500).map(|_| real.sample(&mut rng)).collect();
            let f = (0..62_500).map(|_| fake.sample(&mut rng)).collect();
            (r, f)
        })
        .collect()
}

/// One face's scores by two detectors.
type Pair = (f64, f64);

/// Two detectors on 5 000 real and 5 000 fake faces: the first's scores
/// ~ N(0, 1) for reals and N(1, 1) for fakes, the second's the first's plus
/// N(0, 0.5) noise (correlated, as two detectors on the same faces are).
fn paired_data() -> (Vec<Pair>, Vec<Pair>) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let noise = Normal::new(0.0, 0.5).unwrap();
    let mut side = |mean: f64| -> Vec<Pair> {
        let d = Normal::new(mean, 1.0).unwrap();
        (0..5000)
            .map(|_| {
                let a = d.sample(&mut rng);
                (a, a + noise.sample(&mut rng))
            })
            .collect()
    };
    let real = side(0.0);
    let fake = side(1.0);
    (real, fake)
}

/// The benchmarks.
fn benches(c: &mut Criterion) {
    let (real, fake) = auc_data();
    c.bench_function("auc_1e6 (unsorted input, sort included)", |b| {
        b.iter(|| auc(black_box(&real), black_box(&fake)).unwrap());
    });

    let data = cross_data();
    let mut g = c.benchmark_group("cross_auc_8x125k");
    g.sample_size(20);
    g.bench_function("from unsorted scores (sorts included)", |b| {
        b.iter(|| {
            let domains: Vec<DomainScores> = data
                .par_iter()
                .enumerate()
                .map(|(i, (r, f))| {
                    DomainScores::new(format!("d{i}"), r.clone(), f.clone()).unwrap()
                })
                .collect();
            CrossAuc::compute(black_box(&domains))
        });
    });
    let sorted: Vec<DomainScores> = data
        .iter()
        .enumerate()
        .map(|(i, (r, f))| DomainScores {
            name: format!("d{i}"),
            real: SortedScores::new(r.clone()).unwrap(),
            fake: SortedScores::new(f.clone()).unwrap(),
        })
        .collect();
    g.bench_function("64 cells from sorted scores (merge only)", |b| {
        b.iter(|| CrossAuc::compute(black_box(&sorted)));
    });
    g.finish();

    let (real, fake) = paired_data();
    let mut g = c.benchmark_group("paired_bootstrap_10k");
    g.sample_size(10);
    g.bench_function("1000 resamples, both detectors' AUC each", |b| {
        b.iter(|| {
            paired_auc_difference(black_box(&real), black_box(&fake), 1000, 0.95, 0).unwrap()
        });
    });
    g.finish();
}

criterion_group!(metrics, benches);
criterion_main!(metrics);
