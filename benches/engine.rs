//! The scoring engine end to end (read, decode, detect, align, batch,
//! model) against the model alone on the same faces: does the pipeline
//! keep the model busy?
//!
//! `cargo bench --bench engine` runs criterion on the 20 photos and crops
//! of `assets/samples/` with the tiny test model (face detection bound).
//! `SFAM_BENCH_REPORT=1 cargo bench --bench engine` instead prints, per
//! image set (the samples; with `../shared/data`, the first
//! `SFAM_BENCH_IMAGES` (default 48) images of dfdc, crops, and of ciplab,
//! photos) and per model (the tiny model; `models/default/` when bundled,
//! else CLIP ViT-B/16 with random weights and the SFAM heads, the real
//! model's cost): end-to-end faces/s (no cache), model-only faces/s
//! (batches of 8 of the same aligned faces, prepared beforehand; measured
//! before and after the end-to-end run, averaged), their ratio, and the
//! share of the run the model was busy; also the process CPU seconds per
//! face of both, whose ratio (model-only / end-to-end) predicts the
//! throughput ratio on a machine of its own, and is far less disturbed
//! than wall time when other processes share the cores. Set
//! `RAYON_NUM_THREADS` (see BENCHMARKS.md).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group};
use sfam_studio::data::Label;
use sfam_studio::data::datasets::{DiscoverOptions, discover};
use sfam_studio::engine::{Engine, EngineOptions, FACE_OPTIONS, Item, ModelId};
use sfam_studio::face::FaceDetector;
use sfam_studio::model::clip::{ClipModel, Towers};
use sfam_studio::model::{ClipConfig, HeadConfig, SfamHead, SfamModel, Weights};

const BATCH: usize = 8;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample_items() -> Vec<Item> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("assets/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| Item {
            path,
            dataset: "samples".into(),
            label: None,
            video: None,
        })
        .collect()
}

/// The first `n` images of a dataset of `../shared/data`, reals and
/// fakes alternating.
fn shared_items(name: &str, n: usize) -> Option<Vec<Item>> {
    let dir = root().join("../shared/data").join(name);
    if !dir.is_dir() {
        return None;
    }
    let found = discover(&[dir], &DiscoverOptions::default());
    let all = Item::from_discovery(&found);
    let (real, fake): (Vec<Item>, Vec<Item>) =
        all.into_iter().partition(|i| i.label == Some(Label::Real));
    let mut out = Vec::with_capacity(n);
    for (r, f) in real.into_iter().zip(fake) {
        out.push(r);
        out.push(f);
        if out.len() >= n {
            break;
        }
    }
    out.truncate(n);
    Some(out)
}

fn tiny() -> (Arc<SfamModel>, ModelId) {
    let dir = root().join("tests/fixtures/model/tiny_l14");
    (
        Arc::new(SfamModel::load(&dir, &Device::Cpu).unwrap()),
        ModelId::of_dir(&dir).unwrap(),
    )
}

/// The bundled model, or CLIP ViT-B/16 with random weights and the heads
/// of docs/MODEL.md's default (as `benches/model.rs`).
fn full_size() -> (Arc<SfamModel>, ModelId, &'static str) {
    let bundled = root().join("models/default");
    if bundled.join("sfam_head.json").is_file() {
        return (
            Arc::new(SfamModel::load(&bundled, &Device::Cpu).unwrap()),
            ModelId::of_dir(&bundled).unwrap(),
            "models/default",
        );
    }
    let device = Device::Cpu;
    let cfg = ClipConfig::vit_base_patch16();
    let w = Weights::random(DType::F32, &device);
    let clip = ClipModel::from_weights(&cfg, &w, Towers::Vision).unwrap();
    let head_cfg = HeadConfig {
        format: "sfam-head".into(),
        version: 1,
        dim: cfg.projection_dim,
        grid: [14, 14],
        adapter_hidden: 128,
        num_experts: 4,
        top_k: 2,
        expert_hidden: 256,
        layer_norm_eps: 1e-5,
        mask_eps: 1e-6,
        prompts: (0..9).map(|i| format!("prompt {i}")).collect(),
        regions: sfam_studio::face::REGIONS
            .iter()
            .map(|r| r.name().to_owned())
            .collect(),
        backbone: Some("random ViT-B/16".into()),
        threshold: None,
        training: None,
    };
    let hw = Weights::random(DType::F32, &device);
    let head = SfamHead::from_weights(head_cfg, &hw).unwrap();
    let model = SfamModel::new(Box::new(clip.into_vision().unwrap()), head, &device).unwrap();
    (
        Arc::new(model),
        ModelId::named("random ViT-B/16 (bench)"),
        "random ViT-B/16 + heads",
    )
}

fn engine(model: &Arc<SfamModel>, id: &ModelId) -> Engine {
    Engine::new(
        Arc::clone(model),
        id.clone(),
        FaceDetector::load_default().unwrap(),
        EngineOptions {
            batch_size: BATCH,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

/// The model's input for every image's first face, in batches of 8.
fn prepared_batches(model: &SfamModel, items: &[Item]) -> Vec<(Tensor, Tensor)> {
    let detector = FaceDetector::load_default().unwrap();
    let mut faces = Vec::new();
    for item in items {
        let found = detector.faces_in_image(&item.path, FACE_OPTIONS);
        if let Some(a) = found.aligned.first() {
            let px = model.pixels(std::slice::from_ref(&a.image)).unwrap();
            let masks = model.region_masks(&a.landmarks_aligned).unwrap();
            faces.push((px, masks));
        }
    }
    faces
        .chunks(BATCH)
        .map(|c| {
            let px: Vec<&Tensor> = c.iter().map(|f| &f.0).collect();
            let masks: Vec<&Tensor> = c.iter().map(|f| &f.1).collect();
            (
                Tensor::cat(&px, 0).unwrap(),
                Tensor::stack(&masks, 0).unwrap(),
            )
        })
        .collect()
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat`
/// (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let read = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    };
    read().unwrap_or(0.0)
}

/// Faces per second of the model alone over the prepared batches, and
/// CPU seconds per face.
fn model_only(model: &SfamModel, batches: &[(Tensor, Tensor)]) -> (f64, f64) {
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut faces = 0;
    for (px, masks) in batches {
        faces += black_box(model.forward(px, masks).unwrap()).len();
    }
    #[allow(clippy::cast_precision_loss)]
    let faces = faces as f64;
    (
        faces / t.elapsed().as_secs_f64(),
        (cpu_seconds() - cpu) / faces,
    )
}

fn bench(c: &mut Criterion) {
    let items = sample_items();
    let (model, id) = tiny();
    let engine = engine(&model, &id);
    let batches = prepared_batches(&model, &items);
    let mut group = c.benchmark_group("engine_tiny_samples");
    group.sample_size(10);
    group.throughput(Throughput::Elements(items.len() as u64));
    group.bench_function("end_to_end", |b| {
        b.iter(|| {
            let report = engine
                .score(&items, None, &AtomicBool::new(false), |_| {})
                .unwrap();
            black_box(report)
        });
    });
    group.bench_function("model_only", |b| {
        b.iter(|| {
            for (px, masks) in &batches {
                black_box(model.forward(px, masks).unwrap());
            }
        });
    });
    group.finish();
}

/// One line of the report: the model alone (after a warm-up batch), end
/// to end, the model alone again, on the same faces; the two model-only
/// rates are averaged, so that a load change on a shared machine biases
/// neither side.
fn report_line(set: &str, items: &[Item], model_name: &str, model: &Arc<SfamModel>, id: &ModelId) {
    let engine = engine(model, id);
    let batches = prepared_batches(model, items);
    // Warm-up: one batch (allocations, caches).
    if let Some((px, masks)) = batches.first() {
        model.forward(px, masks).unwrap();
    }
    let before = model_only(model, &batches);
    let cpu = cpu_seconds();
    let report = engine
        .score(items, None, &AtomicBool::new(false), |_| {})
        .unwrap();
    #[allow(clippy::cast_precision_loss)]
    let e2e_cpu = (cpu_seconds() - cpu) / report.progress.faces as f64;
    let p = report.progress;
    let after = model_only(model, &batches);
    let alone = f64::midpoint(before.0, after.0);
    let alone_cpu = f64::midpoint(before.1, after.1);
    let e2e = p.faces_per_sec();
    println!(
        "| {set} | {model_name} | {} | {e2e:.2} | {alone:.2} | {:.2} | {:.1} % | {e2e_cpu:.4} | {alone_cpu:.4} | {:.2} | {} |",
        items.len(),
        e2e / alone,
        100.0 * p.model_busy(),
        alone_cpu / e2e_cpu,
        report.errors.len()
    );
}

fn report() {
    let n: usize = std::env::var("SFAM_BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    let mut sets = vec![("assets/samples".to_owned(), sample_items())];
    for name in ["dfdc", "ciplab"] {
        if let Some(items) = shared_items(name, n) {
            sets.push((format!("{name} (first {n})"), items));
        }
    }
    println!(
        "RAYON_NUM_THREADS={}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    println!(
        "| images | model | n | end-to-end faces/s | model-only faces/s | ratio | model busy | end-to-end CPU s/face | model-only CPU s/face | CPU ratio | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let (tiny_model, tiny_id) = tiny();
    let (big, big_id, big_name) = full_size();
    for (set, items) in &sets {
        report_line(set, items, "tiny (tests/fixtures)", &tiny_model, &tiny_id);
        report_line(set, items, big_name, &big, &big_id);
    }
}

criterion_group!(benches, bench);

fn main() {
    // As the `sfam` binary does.
    sfam_studio::model::device::tune_host_allocator();
    if std::env::var_os("SFAM_BENCH_REPORT").is_some() {
        report();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
