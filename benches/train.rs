//! One training step's faceres layers on the CPU, forward and backward at
//! batch 32, for the shapes of the blocks that `--train-blocks 9` trains:
//!
//! - the 3 × 3 depthwise layer with bias and relu6: what training runs
//!   (`depthwise_tensor`: the convolution op and the fused bias + relu6
//!   op, each with its own backward) against the convolution op followed by
//!   candle's `broadcast_add` + `clamp` (what it ran before the fused
//!   epilogue) and candle's autograd through nine shifted windows
//!   (`depthwise_windows`, before the convolution op);
//! - the 1 × 1 pointwise layer: `pointwise_tensor` (matrix product and the
//!   fused epilogue) against the matrix product followed by
//!   `broadcast_add` + `clamp`.
//!
//! The PyTorch counterpart is `benches/python/bench_torch_depthwise.py`.
//!
//! `cargo bench --bench train` (add `-- --quick` for a short run).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group};
use sfam_studio::model::faceres::{depthwise_tensor, pointwise_tensor};
use sfam_studio::model::faceres_ops::{depthwise_windows, depthwise3x3};

/// `(size, channels, stride)` of blocks 5, 6, 7–11 and 13 (block 12 as 6).
const SHAPES: [(usize, usize, usize); 4] = [(28, 256, 1), (28, 256, 2), (14, 512, 1), (7, 1024, 1)];
/// `(size, in, out)` of the pointwise layers of blocks 5, 7–11, 12 and 13.
const POINTWISE: [(usize, usize, usize); 4] = [
    (28, 256, 256),
    (14, 512, 512),
    (7, 512, 1024),
    (7, 1024, 1024),
];
const BATCH: usize = 32;

/// A layer under test: `(input, weight, bias) -> output`.
type Layer<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// Forward, backward to every input; returns a sum of the weight gradient.
fn step(x: &Var, weight: &Var, bias: &Var, layer: Layer) -> f32 {
    let y = layer(x.as_tensor(), weight.as_tensor(), bias.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let gb = grads.get(bias.as_tensor()).unwrap().sum_all().unwrap();
    (grads.get(weight.as_tensor()).unwrap().sum_all().unwrap() + gb)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Bias and relu6 as separate candle operations (before the fused op).
fn epilogue_ops(y: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    y.broadcast_add(bias)?.clamp(0f32, 6f32)
}

fn var(shape: &[usize], std: f32) -> Var {
    Var::from_tensor(&Tensor::randn(0f32, std, shape, &Device::Cpu).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("faceres_depthwise_fwd_bwd_batch32");
    group.sample_size(10);
    for (size, ch, s) in SHAPES {
        let x = var(&[BATCH, size, size, ch], 1.0);
        let taps = var(&[9, ch], 0.3);
        let bias = var(&[ch], 0.1);
        let name = format!("{size}x{size}x{ch}_s{s}");
        let fused = |x: &Tensor, t: &Tensor, b: &Tensor| depthwise_tensor(x, t, b, s);
        let op = |x: &Tensor, t: &Tensor, b: &Tensor| epilogue_ops(&depthwise3x3(x, t, s)?, b);
        let windows =
            |x: &Tensor, t: &Tensor, b: &Tensor| epilogue_ops(&depthwise_windows(x, t, s)?, b);
        group.bench_function(format!("fused/{name}"), |b| {
            b.iter(|| black_box(step(&x, &taps, &bias, &fused)));
        });
        group.bench_function(format!("custom_op/{name}"), |b| {
            b.iter(|| black_box(step(&x, &taps, &bias, &op)));
        });
        group.bench_function(format!("windows/{name}"), |b| {
            b.iter(|| black_box(step(&x, &taps, &bias, &windows)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("faceres_pointwise_fwd_bwd_batch32");
    group.sample_size(10);
    for (size, cin, cout) in POINTWISE {
        let x = var(&[BATCH, size, size, cin], 1.0);
        let w = var(&[cin, cout], 0.05);
        let bias = var(&[cout], 0.1);
        let name = format!("{size}x{size}x{cin}_to_{cout}");
        let ops = |x: &Tensor, w: &Tensor, b: &Tensor| {
            let y = x.reshape((BATCH * size * size, cin))?.matmul(w)?;
            epilogue_ops(&y, b)?.reshape((BATCH, size, size, cout))
        };
        group.bench_function(format!("fused/{name}"), |b| {
            b.iter(|| black_box(step(&x, &w, &bias, &pointwise_tensor)));
        });
        group.bench_function(format!("ops/{name}"), |b| {
            b.iter(|| black_box(step(&x, &w, &bias, &ops)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    sfam_studio::model::device::tune_host_allocator();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
