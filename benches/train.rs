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
//! And the trained layers of a CLIP ViT-B/16 image tower (`sfam train
//! --backbone clip --train-blocks N`; real dimensions, random weights):
//! forward and backward of the last 1 and 2 transformer layers
//! (`layer_forward_differentiable`) and the final layer norm and
//! projection (`project_differentiable`) at batch 8, from the hidden
//! states the frozen layers hand over. The PyTorch counterpart is
//! `benches/python/bench_torch_clip_layers.py`.
//!
//! `cargo bench --bench train` (add `-- --quick` for a short run).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{Criterion, criterion_group};
use sfam_studio::model::clip::{
    ClipModel, Towers, layer_forward_differentiable, layer_tensor_shapes,
};
use sfam_studio::model::faceres::{depthwise_tensor, pointwise_tensor};
use sfam_studio::model::faceres_ops::{depthwise_windows, depthwise3x3};
use sfam_studio::model::{ClipConfig, Weights};

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
    clip_layers(c);
}

/// Batch of the CLIP bench (the trainer's default is 32; 8 keeps a
/// sample under a few seconds on two cores).
const CLIP_BATCH: usize = 8;

#[allow(clippy::many_single_char_names)] // c, v, s, b, h, x: short names in a bench
fn clip_layers(c: &mut Criterion) {
    let cfg = ClipConfig::vit_base_patch16();
    let v = &cfg.vision_config;
    let tower = ClipModel::from_weights(
        &cfg,
        &Weights::random(DType::F32, &Device::Cpu),
        Towers::Vision,
    )
    .unwrap()
    .into_vision()
    .unwrap();
    let shape = tower.layer_shape();
    let tokens = v.num_patches() + 1;
    let x = Tensor::randn(0f32, 1.0, (CLIP_BATCH, tokens, v.hidden_size), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("clip_b16_trained_layers_fwd_bwd_batch8");
    group.sample_size(10);
    for layers in [1usize, 2] {
        let vars: Vec<std::collections::HashMap<String, Var>> = (0..layers)
            .map(|_| {
                layer_tensor_shapes(v.hidden_size, v.intermediate_size)
                    .into_iter()
                    .map(|(name, s)| {
                        let t = if name.ends_with("norm1.weight") || name.ends_with("norm2.weight")
                        {
                            Tensor::ones(s, DType::F32, &Device::Cpu).unwrap()
                        } else {
                            Tensor::randn(0f32, 0.02, s, &Device::Cpu).unwrap()
                        };
                        (name.to_owned(), Var::from_tensor(&t).unwrap())
                    })
                    .collect()
            })
            .collect();
        group.bench_function(format!("candle/{layers}_layers"), |b| {
            b.iter(|| {
                let mut h = x.clone();
                for layer in &vars {
                    let get = |n: &str| Ok(layer[n].as_tensor().clone());
                    h = layer_forward_differentiable(&h, &get, shape).unwrap();
                }
                let out = tower.project_differentiable(&h).unwrap();
                let loss = (out.patch_embeds.sum_all().unwrap()
                    + out.image_embeds.sum_all().unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                let w = &vars[0]["mlp.fc1.weight"];
                black_box(grads.get(w.as_tensor()).unwrap().sum_all().unwrap());
            });
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
