//! SFAM-B/16 throughput on the CPU: CLIP ViT-B/16 (real dimensions, random
//! weights: no file needed) with the SFAM heads, faces per second at batch
//! 1 and 8. The PyTorch counterpart is `benches/python/bench_torch_sfam.py`.
//!
//! `cargo bench --bench model` (add `-- --quick` for a short run).
//! With `SFAM_BENCH_REPEAT=N` it skips criterion and prints, per batch
//! size, the median wall time and the process CPU time (user + system,
//! from `/proc/self/stat`) of N forward passes: CPU time per face is far
//! less disturbed than wall time when other processes share the cores.
//! `SFAM_BENCH_DEVICE=cuda` (a build with `--features cuda`) runs the
//! repeat mode on a GPU, `SFAM_BENCH_BATCHES=1,8,64` picks the batch sizes.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group};
use sfam_studio::model::clip::{ClipModel, Towers};
use sfam_studio::model::device::DeviceSpec;
use sfam_studio::model::{ClipConfig, HeadConfig, Precision, SfamHead, SfamModel, Weights};

/// The bench's head: the hyper-parameters of docs/MODEL.md's default.
fn head_config(dim: usize) -> HeadConfig {
    HeadConfig {
        format: "sfam-head".into(),
        version: 1,
        dim,
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
    }
}

fn model(device: &Device, precision: Precision) -> SfamModel {
    let cfg = ClipConfig::vit_base_patch16();
    let w = Weights::random(DType::F32, device);
    let clip = ClipModel::from_weights(&cfg, &w, Towers::Vision).unwrap();
    let hw = Weights::random(DType::F32, device);
    let head = SfamHead::from_weights(head_config(cfg.projection_dim), &hw).unwrap();
    let mut m = SfamModel::new(Box::new(clip.into_vision().unwrap()), head, device).unwrap();
    m.set_precision(precision).unwrap();
    m
}

/// float32, and bf16 products where this CPU has them (only one of them
/// with `SFAM_BENCH_PRECISION=f32|bf16`, e.g. to profile it).
fn precisions() -> Vec<Precision> {
    if let Some(p) = std::env::var("SFAM_BENCH_PRECISION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![p];
    }
    if sfam_studio::model::bf16::supported() {
        vec![Precision::F32, Precision::Bf16]
    } else {
        vec![Precision::F32]
    }
}

fn bench(c: &mut Criterion) {
    let device = Device::Cpu;
    for precision in precisions() {
        let model = model(&device, precision);
        let masks = model.template_masks().unwrap();
        let mut group = c.benchmark_group(format!("sfam_b16_cpu_{precision}"));
        group.sample_size(10);
        for batch in [1_usize, 8] {
            let px = Tensor::randn(0.0_f32, 1.0, (batch, 3, 224, 224), &device).unwrap();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("batch{batch}"), |b| {
                b.iter(|| {
                    let out = model.forward(black_box(&px), &masks).unwrap();
                    // The outputs are read back to the host: the device is synchronised.
                    black_box(out)
                });
            });
        }
        group.finish();
    }
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn repeat_mode(n: usize) {
    let spec: DeviceSpec = std::env::var("SFAM_BENCH_DEVICE")
        .ok()
        .map_or(DeviceSpec::Cpu, |d| d.parse().unwrap());
    let device = spec.open().unwrap();
    let batches: Vec<usize> = std::env::var("SFAM_BENCH_BATCHES").ok().map_or_else(
        || vec![1, 8],
        |b| b.split(',').map(|x| x.parse().unwrap()).collect(),
    );
    let mut scores = Vec::new();
    // One model (random weights) switched between precisions, one input.
    let mut model = model(&device, Precision::F32);
    let masks = model.template_masks().unwrap();
    let check = Tensor::randn(0.0_f32, 1.0, (32, 3, 224, 224), &device).unwrap();
    let mut done = Vec::new();
    for precision in precisions() {
        // Off the CPU the bf16 kernel does not apply: float32 is used.
        let precision = model.set_precision(precision).unwrap();
        if done.contains(&precision) {
            continue;
        }
        done.push(precision);
        for &batch in &batches {
            let px = Tensor::randn(0.0_f32, 1.0, (batch, 3, 224, 224), &device).unwrap();
            black_box(model.forward(&px, &masks).unwrap());
            let mut walls = Vec::with_capacity(n);
            let cpu0 = cpu_seconds().unwrap_or(0.0);
            for _ in 0..n {
                let t = std::time::Instant::now();
                black_box(model.forward(black_box(&px), &masks).unwrap());
                walls.push(t.elapsed().as_secs_f64());
            }
            let cpu = cpu_seconds().unwrap_or(0.0) - cpu0;
            walls.sort_by(f64::total_cmp);
            let median = walls[walls.len() / 2];
            #[allow(clippy::cast_precision_loss)]
            let (faces, runs) = (batch as f64, n as f64);
            println!(
                "{{\"impl\": \"candle\", \"device\": \"{spec}\", \"precision\": \"{precision}\", \"batch\": {batch}, \"runs\": {n}, \"median_s\": {median:.4}, \"faces_per_s\": {:.3}, \"cpu_s_per_face\": {:.4}}}",
                faces / median,
                cpu / (runs * faces)
            );
        }
        scores.push(
            model
                .forward(&check, &masks)
                .unwrap()
                .iter()
                .map(|f| f.score)
                .collect::<Vec<f32>>(),
        );
    }
    if let [a, b] = scores.as_slice() {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0_f32, f32::max);
        println!(
            "{{\"max_score_change_bf16_vs_f32\": {d:.5}, \"faces\": {}}}",
            a.len()
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    // As the `sfam` binary does.
    sfam_studio::model::device::tune_host_allocator();
    if let Some(n) = std::env::var("SFAM_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        repeat_mode(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
