//! Face pipeline benchmark: MTCNN detection plus alignment of every face,
//! per 320×320 photo, on the CPU. The 14 photos are the 320×320 samples of
//! `assets/samples/` (CIPLAB and FFHQ/StyleGAN2), decoded beforehand.
//! `benches/python/bench_mtcnn.py` times facenet-pytorch's MTCNN on the
//! same images; run both in the same session:
//!
//! ```text
//! python3 benches/python/bench_mtcnn.py --threads 2
//! cargo bench --bench face
//! ```
//!
//! "detect+align" runs the photos one after the other (latency per photo;
//! the cascade itself uses the threads rayon has); "photos in parallel"
//! spreads them over rayon's threads (throughput, as `sfam faces` does).

// A failed unwrap is a failed benchmark setup.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::RgbImage;
use rayon::prelude::*;
use sfam_studio::data::image::load_rgb;
use sfam_studio::face::{FaceDetector, FaceOptions};

fn photos() -> Vec<RgbImage> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("ciplab_") || n.starts_with("ffhq_stylegan2_")
        })
        .collect();
    paths.sort();
    let imgs: Vec<RgbImage> = paths.iter().map(|p| load_rgb(p).unwrap()).collect();
    assert!(imgs.iter().all(|i| i.dimensions() == (320, 320)));
    imgs
}

fn benches(c: &mut Criterion) {
    let det = FaceDetector::load_default().unwrap();
    let imgs = photos();
    let n = imgs.len() as u64;

    let mut g = c.benchmark_group("face_320px");
    g.sample_size(20);
    g.throughput(Throughput::Elements(n));
    g.bench_function("detect+align (per batch of 14 photos)", |b| {
        b.iter(|| {
            for img in &imgs {
                let r =
                    det.faces_in_rgb(black_box(img), Path::new("bench"), FaceOptions::default());
                black_box(r.aligned.len());
            }
        });
    });
    g.bench_function(
        "detect+align, photos in parallel (per batch of 14 photos)",
        |b| {
            b.iter(|| {
                let n: usize = imgs
                    .par_iter()
                    .map(|img| {
                        det.faces_in_rgb(black_box(img), Path::new("bench"), FaceOptions::default())
                            .aligned
                            .len()
                    })
                    .sum();
                black_box(n);
            });
        },
    );
    g.bench_function("detect only (per batch of 14 photos)", |b| {
        b.iter(|| {
            for img in &imgs {
                black_box(det.detect(black_box(img)).unwrap());
            }
        });
    });
    let faces: Vec<_> = imgs.iter().map(|i| det.detect(i).unwrap()).collect();
    g.bench_function("align only (per batch of 14 photos)", |b| {
        b.iter(|| {
            for (img, f) in imgs.iter().zip(&faces) {
                for face in f {
                    black_box(det.align(img, &face.landmarks));
                }
            }
        });
    });
    g.finish();
}

criterion_group!(face, benches);
criterion_main!(face);
