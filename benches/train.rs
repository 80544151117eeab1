//! One training step's depthwise convolutions on the CPU: forward and
//! backward of faceres' 3 × 3 depthwise layer (plus bias and relu6, as the
//! trainer runs it) at batch 32, for the four shapes of the blocks that
//! `--train-blocks 9` trains — the custom op with its own backward
//! (`depthwise3x3`, what training uses) against candle's autograd through
//! nine shifted windows (`depthwise_windows`, what it used before). The
//! PyTorch counterpart is `benches/python/bench_torch_depthwise.py`.
//!
//! `cargo bench --bench train` (add `-- --quick` for a short run).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group};
use sfam_studio::model::dwconv::{depthwise_windows, depthwise3x3};

/// `(size, channels, stride)` of blocks 5, 6, 7–11 and 13 (block 12 as 6).
const SHAPES: [(usize, usize, usize); 4] = [(28, 256, 1), (28, 256, 2), (14, 512, 1), (7, 1024, 1)];
const BATCH: usize = 32;

fn step(
    x: &Var,
    taps: &Var,
    bias: &Tensor,
    stride: usize,
    conv: fn(&Tensor, &Tensor, usize) -> candle_core::Result<Tensor>,
) -> f32 {
    let y = conv(x.as_tensor(), taps.as_tensor(), stride)
        .unwrap()
        .broadcast_add(bias)
        .unwrap()
        .clamp(0f32, 6f32)
        .unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    grads
        .get(taps.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("faceres_depthwise_fwd_bwd_batch32");
    group.sample_size(10);
    for (size, ch, stride) in SHAPES {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (BATCH, size, size, ch), &dev).unwrap())
            .unwrap();
        let taps = Var::from_tensor(&Tensor::randn(0f32, 0.3, (9, ch), &dev).unwrap()).unwrap();
        let bias = Tensor::zeros(ch, candle_core::DType::F32, &dev).unwrap();
        let name = format!("{size}x{size}x{ch}_s{stride}");
        group.bench_function(format!("custom_op/{name}"), |b| {
            b.iter(|| black_box(step(&x, &taps, &bias, stride, depthwise3x3)));
        });
        group.bench_function(format!("windows/{name}"), |b| {
            b.iter(|| black_box(step(&x, &taps, &bias, stride, depthwise_windows)));
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
