//! MTCNN face detection (Zhang et al., "Joint Face Detection and Alignment
//! using Multi-task Cascaded Convolutional Networks", 2016) in candle,
//! following facenet-pytorch's `detect_face` step by step so that its
//! weights give the same boxes and landmarks.
//!
//! The cascade:
//!
//! 1. **P-Net** (fully convolutional) runs on an image pyramid: scales
//!    `12 / min_face_size · factor^k` while the scaled shorter side is at
//!    least 12 px; each level is resized with *area* interpolation (the
//!    mean of the source pixels each output pixel covers, `PyTorch`'s
//!    `interpolate(mode="area")`) to `⌊h·s + 1⌋ × ⌊w·s + 1⌋`. Every output
//!    cell whose face probability is at least `thresholds[0]` gives a
//!    12×12 window (stride 2) mapped back to the image; non-maximum
//!    suppression (NMS, intersection over union 0.5) per level, then 0.7
//!    over all levels; the windows are moved by the regression output and
//!    made square.
//! 2. **R-Net** re-scores 24×24 area-resampled crops of those boxes
//!    (clipped to the image): probability above `thresholds[1]`, NMS 0.7,
//!    regression, square.
//! 3. **O-Net** re-scores 48×48 crops: probability above `thresholds[2]`,
//!    5 landmarks (its 10 outputs are the x's, then the y's, as fractions of
//!    the box), regression, and NMS with intersection over the *smaller*
//!    box ("Min") at 0.7.
//!
//! Coordinates are facenet-pytorch's: pixel `(i, j)` of the image is the
//! point `(i, j)`, boxes are `[x1, y1, x2, y2]`.
//!
//! Weights: facenet-pytorch's `pnet.pt`, `rnet.pt`, `onet.pt` (MIT), in one
//! safetensors file with the prefixes `pnet.`, `rnet.`, `onet.` and the
//! `PyTorch` key names (`conv1.weight`, `prelu1.weight`, `dense4.bias`,
//! `conv4_1`/`conv4_2` heads …); see `models/face/convert.py`.
//!
//! # Agreement with facenet-pytorch
//!
//! On the same pixels the boxes and landmarks agree to about 0.001 px
//! (`tests/face_accuracy.rs`): the networks' inputs are bit-identical (the
//! area resampling sums 8-bit values exactly, then divides as `PyTorch`
//! does), the thresholds, NMS rules and regressions are the same, and ties
//! between equal scores (O-Net saturates at 1.0) are broken in the
//! reference's order.
//!
//! # Speed
//!
//! Layers are computed on the CPU as im2col plus one candle `matmul` per
//! layer (candle's general `conv2d` spends most of its time gathering
//! patches for these few-channel layers), with bias, `PReLU` and max
//! pooling in plain loops. All pyramid levels share each layer's matrix
//! product; levels are cut into bands of at most 2¹⁸ pixels (exactly
//! equivalent, see `split_bands`) so that memory stays bounded on large
//! photos, and the work is split in two halves that run in parallel (the
//! largest level is about half of the pyramid), as are R-Net's and O-Net's
//! batches.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// The tuning of the cascade; the defaults are facenet-pytorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MtcnnConfig {
    /// Smallest face side searched for, in pixels (default 20).
    pub min_face_size: f64,
    /// Probability thresholds of P-Net, R-Net and O-Net (default 0.6, 0.7,
    /// 0.7).
    pub thresholds: [f32; 3],
    /// Ratio between successive pyramid scales (default 0.709).
    pub factor: f64,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        Self {
            min_face_size: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            factor: 0.709,
        }
    }
}

/// One face found by MTCNN, in the image's pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// O-Net's face probability.
    pub score: f32,
    /// Left eye, right eye, nose tip, left mouth corner, right mouth corner
    /// (left = the image's left), `[x, y]` each.
    pub landmarks: [[f32; 2]; 5],
}

/// An image prepared for area resampling: per channel (R, G, B) and row,
/// the prefix sums of the 8-bit values (`width + 1` entries per row, the
/// first 0). Every prefix sum is an integer below 2²⁴ (rows are at most
/// 16 384 pixels), so it is exact in `f32`, and so is any window's sum.
#[derive(Debug, Clone)]
pub struct Planar {
    width: usize,
    height: usize,
    prefix: Vec<f32>,
}

impl Planar {
    /// Prepares an 8-bit RGB image.
    #[must_use]
    pub fn from_rgb(img: &image::RgbImage) -> Self {
        let (width, height) = (img.width() as usize, img.height() as usize);
        let stride = width + 1;
        let mut prefix = vec![0.0_f32; 3 * height * stride];
        for (y, row) in img
            .as_raw()
            .chunks_exact(3 * width.max(1))
            .enumerate()
            .take(height)
        {
            // Integer running sums (no float dependency chain), stored as
            // exact floats.
            let mut acc = [0_u32; 3];
            for (x, px) in row.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    acc[c] += u32::from(px[c]);
                    #[allow(clippy::cast_precision_loss)] // < 2^24: exact
                    let v = acc[c] as f32;
                    prefix[(c * height + y) * stride + x + 1] = v;
                }
            }
        }
        Self {
            width,
            height,
            prefix,
        }
    }

    /// Width in pixels.
    #[must_use]
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    #[must_use]
    pub fn height(&self) -> usize {
        self.height
    }
}

/// Start and end (exclusive) of the source window of output index `i` in
/// `PyTorch`'s adaptive average pooling (`interpolate(mode="area")`).
fn area_window(i: usize, n_in: usize, n_out: usize) -> (usize, usize) {
    let start = i * n_in / n_out;
    let end = ((i + 1) * n_in).div_ceil(n_out);
    (start, end)
}

/// Area-resamples the window `x0..x0+cw`, `y0..y0+ch` of `src` to
/// `out_w × out_h` and writes it, normalised as MTCNN expects
/// (`(v − 127.5) · 0.0078125`), into `dst`: 3 planes of `out_w·out_h`, plane
/// `c` starting at `c · plane_stride`.
///
/// Window sums are differences of the exact row prefix sums of
/// [`Planar`], added over the window's rows: integers below 2²⁴, exact in
/// `f32` whatever the order. Dividing by the window's height, then its
/// width, as `PyTorch` does, then gives the bit-identical input
/// facenet-pytorch feeds its networks.
///
/// `tmp` is scratch space (resized as needed).
fn area_resize_into(
    src: &Planar,
    (x0, y0, cw, ch): (usize, usize, usize, usize),
    (out_w, out_h): (usize, usize),
    dst: &mut [f32],
    plane_stride: usize,
    tmp: &mut Vec<f32>,
) {
    let stride = src.width + 1;
    tmp.clear();
    tmp.resize(ch * out_w, 0.0);
    let cols: Vec<(usize, usize)> = (0..out_w)
        .map(|i| {
            let (s, e) = area_window(i, cw, out_w);
            (x0 + s, x0 + e)
        })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let col_n: Vec<f32> = cols.iter().map(|&(s, e)| (e - s) as f32).collect();
    for c in 0..3 {
        // Horizontal pass: window sums per source row.
        for (y, t) in tmp.chunks_exact_mut(out_w).enumerate() {
            let p = &src.prefix[(c * src.height + y0 + y) * stride..][..stride];
            for (o, &(s, e)) in t.iter_mut().zip(&cols) {
                *o = p[e] - p[s];
            }
        }
        // Vertical pass, then sum / kh / kw and MTCNN's normalisation.
        let out = &mut dst[c * plane_stride..c * plane_stride + out_w * out_h];
        for (oy, o) in out.chunks_exact_mut(out_w).enumerate() {
            let (s, e) = area_window(oy, ch, out_h);
            o.copy_from_slice(&tmp[s * out_w..(s + 1) * out_w]);
            for y in s + 1..e {
                for (a, &v) in o.iter_mut().zip(&tmp[y * out_w..(y + 1) * out_w]) {
                    *a += v;
                }
            }
            #[allow(clippy::cast_precision_loss)]
            let kh = (e - s) as f32;
            for (a, &kw) in o.iter_mut().zip(&col_n) {
                *a = (*a / kh / kw - 127.5) * 0.007_812_5;
            }
        }
    }
}

/// Activations of a batch, channel-major: `(C, B, H, W)`, row-major.
///
/// With the batch inside the channel, a convolution's im2col matrix has
/// one row per (input channel, kernel offset) and one column per (item,
/// output pixel), and its product with the weights is directly the next
/// layer's `(C, B, H, W)`.
#[derive(Debug, Clone)]
struct Act {
    c: usize,
    b: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

/// A convolution (stride 1, no padding) as im2col plus a candle matrix
/// product, with its bias and (optionally) `PReLU` applied in one pass.
///
/// candle's general `conv2d` spends most of its time gathering patches
/// for these few-channel layers; gathering contiguous rows here and
/// leaving the arithmetic to candle's `matmul` (gemm) is several times
/// faster on the CPU.
#[derive(Debug, Clone)]
struct Conv {
    /// `(c_out, c_in·k·k)`, `PyTorch`'s `(c_out, c_in, k, k)` flattened.
    weight: Tensor,
    bias: Vec<f32>,
    prelu: Option<Vec<f32>>,
    c_in: usize,
    c_out: usize,
    k: usize,
}

impl Conv {
    fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        vb: &VarBuilder,
        name: &str,
        prelu: Option<&str>,
    ) -> candle_core::Result<Self> {
        let weight = vb
            .pp(name)
            .get((c_out, c_in, k, k), "weight")?
            .reshape((c_out, c_in * k * k))?;
        let bias = vb.pp(name).get(c_out, "bias")?.to_vec1::<f32>()?;
        let prelu = match prelu {
            Some(p) => Some(vb.pp(p).get(c_out, "weight")?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            prelu,
            c_in,
            c_out,
            k,
        })
    }

    /// Two 1×1 convolutions over the same input as one (their outputs
    /// stacked).
    fn stack(a: &Self, b: &Self) -> candle_core::Result<Self> {
        Ok(Self {
            weight: Tensor::cat(&[&a.weight, &b.weight], 0)?,
            bias: a.bias.iter().chain(&b.bias).copied().collect(),
            prelu: None,
            c_in: a.c_in,
            c_out: a.c_out + b.c_out,
            k: a.k,
        })
    }

    fn forward(&self, x: &Act) -> candle_core::Result<Act> {
        let mut out = self.forward_many(std::slice::from_ref(x))?;
        out.pop()
            .ok_or_else(|| candle_core::Error::Msg("conv: no output".to_owned()))
    }

    /// The convolution of several inputs of different sizes (the levels of
    /// the image pyramid) with one matrix product: their im2col columns
    /// side by side.
    #[allow(clippy::many_single_char_names)] // sizes: c, b, h, w, k
    fn forward_many(&self, xs: &[Act]) -> candle_core::Result<Vec<Act>> {
        let k = self.k;
        for x in xs {
            if x.c != self.c_in || x.h < k || x.w < k {
                candle_core::bail!(
                    "conv: input ({}, {}, {}, {}) does not fit {}→{} {k}×{k}",
                    x.c,
                    x.b,
                    x.h,
                    x.w,
                    self.c_in,
                    self.c_out
                );
            }
        }
        let sizes: Vec<(usize, usize)> = xs.iter().map(|x| (x.h - k + 1, x.w - k + 1)).collect();
        let counts: Vec<usize> = xs
            .iter()
            .zip(&sizes)
            .map(|(x, &(ho, wo))| x.b * ho * wo)
            .collect();
        let n: usize = counts.iter().sum();
        if n == 0 {
            return Ok(xs
                .iter()
                .zip(&sizes)
                .map(|(x, &(h, w))| Act {
                    c: self.c_out,
                    b: x.b,
                    h,
                    w,
                    data: Vec::new(),
                })
                .collect());
        }
        let rows = self.c_in * k * k;
        // Row (c, ky, kx); columns: input by input, (b, oy, ox) each. Filled
        // in order.
        let mut cols = Vec::with_capacity(rows * n);
        for c in 0..self.c_in {
            for ky in 0..k {
                for kx in 0..k {
                    for (x, &(ho, wo)) in xs.iter().zip(&sizes) {
                        for b in 0..x.b {
                            let plane = (c * x.b + b) * x.h * x.w;
                            for oy in 0..ho {
                                let src = plane + (oy + ky) * x.w + kx;
                                cols.extend_from_slice(&x.data[src..src + wo]);
                            }
                        }
                    }
                }
            }
        }
        let cols = Tensor::from_vec(cols, (rows, n), self.weight.device())?;
        let mut product = self.weight.matmul(&cols)?.flatten_all()?.to_vec1::<f32>()?;
        for (co, row) in product.chunks_exact_mut(n).enumerate() {
            let bias = self.bias[co];
            match &self.prelu {
                Some(alpha) => {
                    let a = alpha[co];
                    for v in row {
                        let y = *v + bias;
                        *v = if y >= 0.0 { y } else { a * y };
                    }
                }
                None => row.iter_mut().for_each(|v| *v += bias),
            }
        }
        if xs.len() == 1 {
            let (ho, wo) = sizes[0];
            return Ok(vec![Act {
                c: self.c_out,
                b: xs[0].b,
                h: ho,
                w: wo,
                data: product,
            }]);
        }
        let mut out = Vec::with_capacity(xs.len());
        let mut offset = 0;
        for ((x, &(ho, wo)), &m) in xs.iter().zip(&sizes).zip(&counts) {
            let mut data = Vec::with_capacity(self.c_out * m);
            for row in product.chunks_exact(n) {
                data.extend_from_slice(&row[offset..offset + m]);
            }
            offset += m;
            out.push(Act {
                c: self.c_out,
                b: x.b,
                h: ho,
                w: wo,
                data,
            });
        }
        Ok(out)
    }
}

/// The larger of two activations as a select (`maxss`/`maxps`), for
/// values that are never NaN.
#[inline]
fn sel_max(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// Max pooling with `PyTorch`'s `ceil_mode=True`: `⌈(n − k)/s⌉ + 1`
/// windows per side, the last one cut off by the border (the same as
/// padding with −∞). Separable: rows first, then columns. (Activations are
/// never NaN, so plain comparisons do.)
fn max_pool_ceil(x: &Act, k: usize, s: usize) -> Act {
    let out = |n: usize| n.saturating_sub(k).div_ceil(s) + 1;
    let (ho, wo) = (out(x.h), out(x.w));
    let mut data = vec![0.0_f32; x.c * x.b * ho * wo];
    let mut rows = vec![0.0_f32; x.h * wo];
    // Output columns whose window lies fully inside the row.
    let full = if x.w >= k { (x.w - k) / s + 1 } else { 0 }.min(wo);
    for (src, dst) in x
        .data
        .chunks_exact(x.h * x.w)
        .zip(data.chunks_exact_mut(ho * wo))
    {
        for (row, r) in src.chunks_exact(x.w).zip(rows.chunks_exact_mut(wo)) {
            match (k, s) {
                // The two shapes MTCNN uses, written so that they compile to
                // branch-free code.
                (2, 2) => {
                    for (d, w) in r[..full].iter_mut().zip(row.chunks_exact(2)) {
                        *d = sel_max(w[0], w[1]);
                    }
                }
                (3, 2) => {
                    for (ox, d) in r[..full].iter_mut().enumerate() {
                        let w = &row[2 * ox..2 * ox + 3];
                        *d = sel_max(sel_max(w[0], w[1]), w[2]);
                    }
                }
                _ => {
                    for (ox, d) in r[..full].iter_mut().enumerate() {
                        *d = row[ox * s..ox * s + k]
                            .iter()
                            .fold(f32::NEG_INFINITY, |m, &v| sel_max(m, v));
                    }
                }
            }
            for (ox, d) in r.iter_mut().enumerate().skip(full) {
                *d = row[(ox * s).min(x.w - 1)..(ox * s + k).min(x.w)]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| sel_max(m, v));
            }
        }
        for (oy, o) in dst.chunks_exact_mut(wo).enumerate() {
            let y0 = oy * s;
            o.copy_from_slice(&rows[y0 * wo..(y0 + 1) * wo]);
            for y in y0 + 1..(y0 + k).min(x.h) {
                for (a, &v) in o.iter_mut().zip(&rows[y * wo..(y + 1) * wo]) {
                    *a = sel_max(*a, v);
                }
            }
        }
    }
    Act {
        c: x.c,
        b: x.b,
        h: ho,
        w: wo,
        data,
    }
}

/// Flattens each item in the order of facenet-pytorch's
/// `permute(0, 3, 2, 1)` (width, height, channel): `(B, W·H·C)`.
fn flatten_whc(x: &Act) -> Vec<f32> {
    let per = x.c * x.h * x.w;
    let mut out = vec![0.0_f32; x.b * per];
    for b in 0..x.b {
        for c in 0..x.c {
            for y in 0..x.h {
                for xx in 0..x.w {
                    out[b * per + (xx * x.h + y) * x.c + c] =
                        x.data[((c * x.b + b) * x.h + y) * x.w + xx];
                }
            }
        }
    }
    out
}

/// A fully connected layer with its bias and (optionally) `PReLU`.
#[derive(Debug, Clone)]
struct Dense {
    /// `(in, out)`: `PyTorch`'s weight transposed.
    weight_t: Tensor,
    bias: Vec<f32>,
    prelu: Option<Vec<f32>>,
    d_in: usize,
    d_out: usize,
}

impl Dense {
    fn new(
        d_in: usize,
        d_out: usize,
        vb: &VarBuilder,
        name: &str,
        prelu: Option<&str>,
    ) -> candle_core::Result<Self> {
        let weight_t = vb
            .pp(name)
            .get((d_out, d_in), "weight")?
            .t()?
            .contiguous()?;
        let bias = vb.pp(name).get(d_out, "bias")?.to_vec1::<f32>()?;
        let prelu = match prelu {
            Some(p) => Some(vb.pp(p).get(d_out, "weight")?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Self {
            weight_t,
            bias,
            prelu,
            d_in,
            d_out,
        })
    }

    /// Several heads over the same input as one layer (outputs side by
    /// side).
    fn stack(heads: &[&Self]) -> candle_core::Result<Self> {
        let ws: Vec<&Tensor> = heads.iter().map(|h| &h.weight_t).collect();
        Ok(Self {
            weight_t: Tensor::cat(&ws, 1)?.contiguous()?,
            bias: heads.iter().flat_map(|h| h.bias.iter().copied()).collect(),
            prelu: None,
            d_in: heads.first().map_or(0, |h| h.d_in),
            d_out: heads.iter().map(|h| h.d_out).sum(),
        })
    }

    /// `x`: `(B, in)` row-major; returns `(B, out)`.
    #[allow(clippy::many_single_char_names)] // x, b, y, z, a as in the formula
    fn forward(&self, x: Vec<f32>, b: usize) -> candle_core::Result<Vec<f32>> {
        let x = Tensor::from_vec(x, (b, self.d_in), self.weight_t.device())?;
        let mut y = x.matmul(&self.weight_t)?.flatten_all()?.to_vec1::<f32>()?;
        for row in y.chunks_exact_mut(self.d_out) {
            for (j, v) in row.iter_mut().enumerate() {
                let z = *v + self.bias[j];
                *v = match &self.prelu {
                    Some(a) if z < 0.0 => a[j] * z,
                    _ => z,
                };
            }
        }
        Ok(y)
    }
}

/// The face probability of a 2-way softmax, computed as `PyTorch` does
/// (`exp(x − max) / Σ`).
fn face_probability(l0: f32, l1: f32) -> f32 {
    let m = l0.max(l1);
    let (e0, e1) = ((l0 - m).exp(), (l1 - m).exp());
    e1 / (e0 + e1)
}

/// The proposal network (12×12 receptive field, fully convolutional).
#[derive(Debug, Clone)]
struct PNet {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    /// `conv4_1` (2 face logits) and `conv4_2` (4 box offsets) stacked.
    heads: Conv,
}

impl PNet {
    fn new(vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            conv1: Conv::new(3, 10, 3, vb, "conv1", Some("prelu1"))?,
            conv2: Conv::new(10, 16, 3, vb, "conv2", Some("prelu2"))?,
            conv3: Conv::new(16, 32, 3, vb, "conv3", Some("prelu3"))?,
            heads: Conv::stack(
                &Conv::new(32, 2, 1, vb, "conv4_1", None)?,
                &Conv::new(32, 4, 1, vb, "conv4_2", None)?,
            )?,
        })
    }

    /// For the levels of one image (`(3, 1, H, W)` each), with one matrix
    /// product per layer for all levels: per level, the output map's size,
    /// the face probability per cell and the 4 box offsets (`(4, H'·W')`).
    fn forward(&self, levels: &[Act]) -> candle_core::Result<Vec<PNetOut>> {
        let xs = self.conv1.forward_many(levels)?;
        let xs: Vec<Act> = xs.iter().map(|x| max_pool_ceil(x, 2, 2)).collect();
        let xs = self.conv2.forward_many(&xs)?;
        let xs = self.conv3.forward_many(&xs)?;
        let ys = self.heads.forward_many(&xs)?;
        Ok(ys
            .into_iter()
            .map(|y| {
                let n = y.h * y.w;
                let prob = (0..n)
                    .map(|i| face_probability(y.data[i], y.data[n + i]))
                    .collect();
                (y.h, y.w, prob, y.data[2 * n..6 * n].to_vec())
            })
            .collect())
    }
}

/// P-Net's output for one pyramid level: map height and width, face
/// probability per cell, box offsets `(4, H'·W')`.
type PNetOut = (usize, usize, Vec<f32>, Vec<f32>);

/// The refinement network (24×24 input).
#[derive(Debug, Clone)]
struct RNet {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    dense4: Dense,
    /// `dense5_1` (2 logits) and `dense5_2` (4 offsets) side by side.
    heads: Dense,
}

impl RNet {
    fn new(vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            conv1: Conv::new(3, 28, 3, vb, "conv1", Some("prelu1"))?,
            conv2: Conv::new(28, 48, 3, vb, "conv2", Some("prelu2"))?,
            conv3: Conv::new(48, 64, 2, vb, "conv3", Some("prelu3"))?,
            dense4: Dense::new(576, 128, vb, "dense4", Some("prelu4"))?,
            heads: Dense::stack(&[
                &Dense::new(128, 2, vb, "dense5_1", None)?,
                &Dense::new(128, 4, vb, "dense5_2", None)?,
            ])?,
        })
    }

    /// Per item: face probability and 4 box offsets.
    fn forward(&self, x: &Act) -> candle_core::Result<Vec<(f32, [f32; 4])>> {
        let x = self.conv1.forward(x)?;
        let x = max_pool_ceil(&x, 3, 2);
        let x = self.conv2.forward(&x)?;
        let x = max_pool_ceil(&x, 3, 2);
        let x = self.conv3.forward(&x)?;
        let y = self.dense4.forward(flatten_whc(&x), x.b)?;
        let y = self.heads.forward(y, x.b)?;
        Ok(y.chunks_exact(6)
            .map(|r| (face_probability(r[0], r[1]), [r[2], r[3], r[4], r[5]]))
            .collect())
    }
}

/// The output network (48×48 input, landmarks).
#[derive(Debug, Clone)]
struct ONet {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    conv4: Conv,
    dense5: Dense,
    /// `dense6_1` (2 logits), `dense6_2` (4 offsets) and `dense6_3` (10
    /// landmark coordinates) side by side.
    heads: Dense,
}

/// O-Net's output for one crop: probability, box offsets, landmarks
/// (x's then y's, fractions of the box).
type ONetOut = (f32, [f32; 4], [f32; 10]);

impl ONet {
    fn new(vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            conv1: Conv::new(3, 32, 3, vb, "conv1", Some("prelu1"))?,
            conv2: Conv::new(32, 64, 3, vb, "conv2", Some("prelu2"))?,
            conv3: Conv::new(64, 64, 3, vb, "conv3", Some("prelu3"))?,
            conv4: Conv::new(64, 128, 2, vb, "conv4", Some("prelu4"))?,
            dense5: Dense::new(1152, 256, vb, "dense5", Some("prelu5"))?,
            heads: Dense::stack(&[
                &Dense::new(256, 2, vb, "dense6_1", None)?,
                &Dense::new(256, 4, vb, "dense6_2", None)?,
                &Dense::new(256, 10, vb, "dense6_3", None)?,
            ])?,
        })
    }

    fn forward(&self, x: &Act) -> candle_core::Result<Vec<ONetOut>> {
        let x = self.conv1.forward(x)?;
        let x = max_pool_ceil(&x, 3, 2);
        let x = self.conv2.forward(&x)?;
        let x = max_pool_ceil(&x, 3, 2);
        let x = self.conv3.forward(&x)?;
        let x = max_pool_ceil(&x, 2, 2);
        let x = self.conv4.forward(&x)?;
        let y = self.dense5.forward(flatten_whc(&x), x.b)?;
        let y = self.heads.forward(y, x.b)?;
        Ok(y.chunks_exact(16)
            .map(|r| {
                let mut pts = [0.0_f32; 10];
                pts.copy_from_slice(&r[6..16]);
                (face_probability(r[0], r[1]), [r[2], r[3], r[4], r[5]], pts)
            })
            .collect())
    }
}

/// A candidate box between stages: `[x1, y1, x2, y2]`, its score, and the
/// regression to apply.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    bbox: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// Which overlap measure non-maximum suppression uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    /// Intersection over union, areas `(x2 − x1)(y2 − y1)` (torchvision).
    Union,
    /// Intersection over the smaller box, areas `(x2 − x1 + 1)(y2 − y1 + 1)`
    /// (facenet-pytorch's `nms_numpy` "Min").
    Min,
}

/// Greedy non-maximum suppression: indices kept, highest score first. A box
/// is dropped when its overlap with a kept box is above `threshold`.
///
/// Equal scores (common: O-Net's probability saturates at exactly 1.0) are
/// taken in the reference's order: torchvision's stable descending sort
/// (lower index first) for [`Overlap::Union`]; for [`Overlap::Min`],
/// `nms_numpy`'s ascending `argsort` read from the end (higher index first).
fn nms(boxes: &[[f32; 4]], scores: &[f32], threshold: f32, overlap: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    match overlap {
        Overlap::Union => order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a])),
        Overlap::Min => order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(b.cmp(&a))),
    }
    let one = if overlap == Overlap::Min { 1.0 } else { 0.0 };
    let area = |b: &[f32; 4]| (b[2] - b[0] + one) * (b[3] - b[1] + one);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let ai = area(bi);
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + one).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + one).max(0.0);
            let inter = w * h;
            let o = match overlap {
                Overlap::Union => inter / (ai + area(bj) - inter),
                Overlap::Min => inter / ai.min(area(bj)),
            };
            if o > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Makes a box square around its centre (side = the longer side).
fn square(b: [f32; 4]) -> [f32; 4] {
    let w = b[2] - b[0];
    let h = b[3] - b[1];
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// Box regression of R-Net and O-Net (sizes with `+ 1`).
fn regress(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    [
        b[0] + r[0] * w,
        b[1] + r[1] * h,
        b[2] + r[2] * w,
        b[3] + r[3] * h,
    ]
}

/// The pixel window (`x0, y0, width, height`) that facenet-pytorch's `pad`
/// cuts for a box: coordinates truncated toward zero, 1-based, clipped to
/// the image. `None` when it is empty.
#[allow(clippy::many_single_char_names)] // facenet-pytorch's names
fn crop_window(b: &[f32; 4], w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    #[allow(clippy::cast_possible_truncation)]
    let t = |v: f32| v.trunc() as i64;
    let (wi, hi) = (i64::try_from(w).ok()?, i64::try_from(h).ok()?);
    let x = t(b[0]).max(1);
    let y = t(b[1]).max(1);
    let ex = t(b[2]).min(wi);
    let ey = t(b[3]).min(hi);
    if ex > x - 1 && ey > y - 1 {
        Some((
            usize::try_from(x - 1).ok()?,
            usize::try_from(y - 1).ok()?,
            usize::try_from(ex - x + 1).ok()?,
            usize::try_from(ey - y + 1).ok()?,
        ))
    } else {
        None
    }
}

/// Largest number of input pixels P-Net sees in one matrix product: bounds
/// the memory of the first layer's im2col matrix (27 floats per pixel, so
/// about 28 MB) on large photos.
const PNET_GROUP_PIXELS: usize = 1 << 18;

/// Splits pyramid levels larger than `budget` pixels into horizontal bands
/// that P-Net treats exactly as the whole level: a band of output rows
/// `a..a + r` reads input rows `2a..2a + 2r + 10` (the net is a 12×12
/// window with stride 2; bands start on even rows, so the pooling windows
/// fall as in the whole level; the last band runs to the level's end, where
/// the whole level's last pooling window is cut off the same way). Bands
/// are returned in order with their level's index.
fn split_bands(levels: Vec<Act>, budget: usize) -> Vec<(usize, Act)> {
    let mut out = Vec::new();
    for (li, lv) in levels.into_iter().enumerate() {
        if lv.h * lv.w <= budget || lv.h < 14 {
            out.push((li, lv));
            continue;
        }
        let r = ((budget / lv.w).saturating_sub(10) / 2).max(1);
        let mut a = 0;
        loop {
            let start = 2 * a;
            // Fewer than 11 rows give no output row (the last row of a
            // level may use a partial pooling window, so 11, not 12).
            if start + 11 > lv.h {
                break;
            }
            let end = (start + 2 * r + 10).min(lv.h);
            let mut data = Vec::with_capacity(3 * (end - start) * lv.w);
            for c in 0..3 {
                let plane = c * lv.h * lv.w;
                data.extend_from_slice(&lv.data[plane + start * lv.w..plane + end * lv.w]);
            }
            out.push((
                li,
                Act {
                    c: 3,
                    b: 1,
                    h: end - start,
                    w: lv.w,
                    data,
                },
            ));
            if end == lv.h {
                break;
            }
            a += r;
        }
    }
    out
}

/// Packs bands, in order, into groups of at most `budget` pixels (a band
/// larger than that alone): per group, the bands' levels and the bands.
fn group_bands(bands: Vec<(usize, Act)>, budget: usize) -> Vec<(Vec<usize>, Vec<Act>)> {
    let mut groups: Vec<(Vec<usize>, Vec<Act>)> = Vec::new();
    let mut size = 0;
    for (level, band) in bands {
        let px = band.h * band.w;
        match groups.last_mut() {
            Some((ids, acts)) if size + px <= budget => {
                size += px;
                ids.push(level);
                acts.push(band);
            }
            _ => {
                size = px;
                groups.push((vec![level], vec![band]));
            }
        }
    }
    groups
}

/// Largest number of crops R-Net and O-Net see at once (bounds memory;
/// facenet-pytorch uses 512).
const BATCH: usize = 256;

/// The three MTCNN networks, ready to run.
#[derive(Debug, Clone)]
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    config: MtcnnConfig,
}

impl Mtcnn {
    /// Builds the networks from a safetensors file's bytes (see the module
    /// docs for the key names).
    ///
    /// # Errors
    /// When the bytes are not safetensors or a tensor is missing or has the
    /// wrong shape.
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> candle_core::Result<Self> {
        let vb = VarBuilder::from_slice_safetensors(bytes, DType::F32, device)?;
        Ok(Self {
            pnet: PNet::new(&vb.pp("pnet"))?,
            rnet: RNet::new(&vb.pp("rnet"))?,
            onet: ONet::new(&vb.pp("onet"))?,
            config: MtcnnConfig::default(),
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> MtcnnConfig {
        self.config
    }

    /// Replaces the configuration.
    pub fn set_config(&mut self, config: MtcnnConfig) {
        self.config = config;
    }

    /// The pyramid's scales for an image of this size (facenet-pytorch's
    /// loop, in `f64` like Python).
    fn scales(&self, width: usize, height: usize) -> Vec<f64> {
        let m = 12.0 / self.config.min_face_size;
        #[allow(clippy::cast_precision_loss)]
        let mut minl = width.min(height) as f64 * m;
        let factor = self.config.factor;
        let mut scale = m;
        let mut scales = Vec::new();
        // A factor ≥ 1 would never end; the cap keeps a bad config finite.
        while minl >= 12.0 && scales.len() < 64 {
            scales.push(scale);
            scale *= factor;
            minl *= factor;
        }
        scales
    }

    /// Detects faces. Boxes are in the order of the last NMS (highest score
    /// first); see [`crate::face::FaceDetector::detect`] for largest first.
    ///
    /// # Errors
    /// Only when candle fails (which a correct weight file does not cause).
    pub fn detect(&self, img: &Planar) -> candle_core::Result<Vec<Detection>> {
        let (w, h) = (img.width, img.height);
        if w == 0 || h == 0 {
            return Ok(Vec::new());
        }
        let stage1 = self.stage1(img)?;
        if stage1.is_empty() {
            return Ok(Vec::new());
        }
        let stage2 = self.stage2(img, &stage1)?;
        if stage2.is_empty() {
            return Ok(Vec::new());
        }
        self.stage3(img, &stage2)
    }

    /// One pyramid level: the image area-resampled by `scale`.
    fn pyramid_level(img: &Planar, scale: f64) -> Act {
        let (w, h) = (img.width, img.height);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let (hs, ws) = (
            (h as f64 * scale + 1.0) as usize,
            (w as f64 * scale + 1.0) as usize,
        );
        let mut data = vec![0.0_f32; 3 * hs * ws];
        area_resize_into(
            img,
            (0, 0, w, h),
            (ws, hs),
            &mut data,
            hs * ws,
            &mut Vec::new(),
        );
        Act {
            c: 3,
            b: 1,
            h: hs,
            w: ws,
            data,
        }
    }

    /// P-Net's candidates on one level, after NMS (0.5), by score.
    fn level_candidates(&self, scale: f64, (oh, ow, prob, reg): &PNetOut) -> Vec<Candidate> {
        #[allow(clippy::cast_possible_truncation)]
        let s32 = scale as f32;
        let n = oh * ow;
        let mut level = Vec::new();
        for (i, &p) in prob.iter().enumerate() {
            if p >= self.config.thresholds[0] {
                let (yy, xx) = (i / ow, i % ow);
                #[allow(clippy::cast_precision_loss)]
                let (xf, yf) = (xx as f32, yy as f32);
                let q = |v: f32, off: f32| ((2.0 * v + off) / s32).floor();
                level.push(Candidate {
                    bbox: [q(xf, 1.0), q(yf, 1.0), q(xf, 12.0), q(yf, 12.0)],
                    score: p,
                    reg: [reg[i], reg[n + i], reg[2 * n + i], reg[3 * n + i]],
                });
            }
        }
        let boxes: Vec<[f32; 4]> = level.iter().map(|c| c.bbox).collect();
        let scores: Vec<f32> = level.iter().map(|c| c.score).collect();
        // facenet-pytorch concatenates each level's picks in the order
        // torchvision returns them: by score.
        nms(&boxes, &scores, 0.5, Overlap::Union)
            .into_iter()
            .map(|k| level[k])
            .collect()
    }

    /// P-Net over the pyramid (all levels in one pass), NMS per level and
    /// across levels, regression, squares.
    fn stage1(&self, img: &Planar) -> candle_core::Result<Vec<[f32; 4]>> {
        let scales = self.scales(img.width, img.height);
        let levels: Vec<Act> = scales
            .par_iter()
            .map(|&s| Self::pyramid_level(img, s))
            .collect();
        let total: usize = levels.iter().map(|l| l.h * l.w).sum();
        // At least two groups, so that both halves of the work can run side
        // by side (the largest level is about half of the pyramid: the
        // areas shrink by 0.709² ≈ 0.503).
        let budget = PNET_GROUP_PIXELS.min(total.div_ceil(2)).max(1);
        let widths: Vec<usize> = levels.iter().map(|l| l.w).collect();
        let groups = group_bands(split_bands(levels, budget), budget);
        let results = groups
            .par_iter()
            .map(|(ids, acts)| {
                let outs = self.pnet.forward(acts)?;
                Ok(ids.iter().copied().zip(outs).collect::<Vec<_>>())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut outputs: Vec<PNetOut> = widths
            .iter()
            .map(|_| (0, 0, Vec::new(), Vec::new()))
            .collect();
        let mut band_regs: Vec<Vec<Vec<f32>>> = widths.iter().map(|_| Vec::new()).collect();
        for (level, (oh, ow, prob, reg)) in results.into_iter().flatten() {
            let out = &mut outputs[level];
            out.0 += oh;
            out.1 = ow;
            out.2.extend(prob);
            band_regs[level].push(reg);
        }
        // Each band's offsets are (4, rows·width): stack them per channel.
        for (out, regs) in outputs.iter_mut().zip(band_regs) {
            let mut reg = Vec::with_capacity(4 * out.2.len());
            for ch in 0..4 {
                for r in &regs {
                    let n = r.len() / 4;
                    reg.extend_from_slice(&r[ch * n..(ch + 1) * n]);
                }
            }
            out.3 = reg;
        }
        let all: Vec<Candidate> = scales
            .iter()
            .zip(&outputs)
            .flat_map(|(&s, out)| self.level_candidates(s, out))
            .collect();
        let boxes: Vec<[f32; 4]> = all.iter().map(|c| c.bbox).collect();
        let scores: Vec<f32> = all.iter().map(|c| c.score).collect();
        let keep = nms(&boxes, &scores, 0.7, Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|k| {
                let c = all[k];
                let [x1, y1, x2, y2] = c.bbox;
                let (rw, rh) = (x2 - x1, y2 - y1);
                square([
                    x1 + c.reg[0] * rw,
                    y1 + c.reg[1] * rh,
                    x2 + c.reg[2] * rw,
                    y2 + c.reg[3] * rh,
                ])
            })
            .collect())
    }

    /// Crops the boxes (clipped as facenet-pytorch does), area-resampled to
    /// `size × size` and normalised, as one batch. Boxes whose window is
    /// empty are left out; the indices of those kept are returned.
    fn crops(
        img: &Planar,
        boxes: &[[f32; 4]],
        size: usize,
        tmp: &mut Vec<f32>,
    ) -> (Act, Vec<usize>) {
        let windows: Vec<(usize, (usize, usize, usize, usize))> = boxes
            .iter()
            .enumerate()
            .filter_map(|(i, b)| crop_window(b, img.width, img.height).map(|w| (i, w)))
            .collect();
        let n = windows.len();
        let plane = size * size;
        let mut data = vec![0.0_f32; 3 * n * plane];
        for (j, &(_, win)) in windows.iter().enumerate() {
            area_resize_into(
                img,
                win,
                (size, size),
                &mut data[j * plane..],
                n * plane,
                tmp,
            );
        }
        let act = Act {
            c: 3,
            b: n,
            h: size,
            w: size,
            data,
        };
        (act, windows.into_iter().map(|(i, _)| i).collect())
    }

    /// Runs `f` on the boxes in chunks: two halves side by side when there
    /// are enough to share, each in batches of at most [`BATCH`]; results in
    /// the boxes' order.
    fn in_halves<T, F>(boxes: &[[f32; 4]], f: F) -> candle_core::Result<Vec<T>>
    where
        T: Send,
        F: Fn(&[[f32; 4]]) -> candle_core::Result<Vec<T>> + Sync,
    {
        let run = |part: &[[f32; 4]]| -> candle_core::Result<Vec<T>> {
            let mut out = Vec::new();
            for chunk in part.chunks(BATCH) {
                out.extend(f(chunk)?);
            }
            Ok(out)
        };
        if boxes.len() < 16 {
            return run(boxes);
        }
        let (a, b) = boxes.split_at(boxes.len() / 2);
        let (ra, rb) = rayon::join(|| run(a), || run(b));
        let mut out = ra?;
        out.extend(rb?);
        Ok(out)
    }

    fn stage2(&self, img: &Planar, boxes: &[[f32; 4]]) -> candle_core::Result<Vec<[f32; 4]>> {
        let pass = Self::in_halves(boxes, |chunk| {
            let (x, kept) = Self::crops(img, chunk, 24, &mut Vec::new());
            if kept.is_empty() {
                return Ok(Vec::new());
            }
            Ok(kept
                .into_iter()
                .zip(self.rnet.forward(&x)?)
                .filter(|(_, (p, _))| *p > self.config.thresholds[1])
                .map(|(i, (p, reg))| Candidate {
                    bbox: chunk[i],
                    score: p,
                    reg,
                })
                .collect())
        })?;
        let bx: Vec<[f32; 4]> = pass.iter().map(|c| c.bbox).collect();
        let sc: Vec<f32> = pass.iter().map(|c| c.score).collect();
        Ok(nms(&bx, &sc, 0.7, Overlap::Union)
            .into_iter()
            .map(|k| square(regress(pass[k].bbox, pass[k].reg)))
            .collect())
    }

    fn stage3(&self, img: &Planar, boxes: &[[f32; 4]]) -> candle_core::Result<Vec<Detection>> {
        let found = Self::in_halves(boxes, |chunk| {
            let (x, kept) = Self::crops(img, chunk, 48, &mut Vec::new());
            if kept.is_empty() {
                return Ok(Vec::new());
            }
            let mut found = Vec::new();
            for (i, (p, reg, pt)) in kept.into_iter().zip(self.onet.forward(&x)?) {
                if p <= self.config.thresholds[2] {
                    continue;
                }
                let b = chunk[i];
                let bw = b[2] - b[0] + 1.0;
                let bh = b[3] - b[1] + 1.0;
                let mut landmarks = [[0.0_f32; 2]; 5];
                for (k, l) in landmarks.iter_mut().enumerate() {
                    *l = [bw * pt[k] + b[0] - 1.0, bh * pt[5 + k] + b[1] - 1.0];
                }
                found.push(Detection {
                    bbox: regress(b, reg),
                    score: p,
                    landmarks,
                });
            }
            Ok(found)
        })?;
        let bx: Vec<[f32; 4]> = found.iter().map(|d| d.bbox).collect();
        let sc: Vec<f32> = found.iter().map(|d| d.score).collect();
        Ok(nms(&bx, &sc, 0.7, Overlap::Min)
            .into_iter()
            .map(|k| found[k])
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::many_single_char_names)] // exact values on purpose
mod tests {
    use super::*;

    #[test]
    fn area_windows_match_pytorch() {
        // Downsampling 5 → 3: [0,2), [1,4), [3,5).
        let w: Vec<_> = (0..3).map(|i| area_window(i, 5, 3)).collect();
        assert_eq!(w, [(0, 2), (1, 4), (3, 5)]);
        // Upsampling 2 → 4: nearest-like windows of one pixel.
        let w: Vec<_> = (0..4).map(|i| area_window(i, 2, 4)).collect();
        assert_eq!(w, [(0, 1), (0, 1), (1, 2), (1, 2)]);
        // Identity.
        assert!((0..7).all(|i| area_window(i, 7, 7) == (i, i + 1)));
    }

    #[test]
    fn area_resize_averages() {
        let img = image::RgbImage::from_fn(4, 2, |x, y| {
            #[allow(clippy::cast_possible_truncation)]
            let v = (x * 10 + y * 100) as u8;
            image::Rgb([v, v, 255])
        });
        let p = Planar::from_rgb(&img);
        let mut dst = vec![0.0; 3 * 2];
        let mut tmp = Vec::new();
        area_resize_into(&p, (0, 0, 4, 2), (2, 1), &mut dst, 2, &mut tmp);
        let un = |v: f32| v / 0.007_812_5 + 127.5;
        // Left half: mean of 0, 10, 100, 110 = 55; right: 75.
        assert!((un(dst[0]) - 55.0).abs() < 1e-3);
        assert!((un(dst[1]) - 75.0).abs() < 1e-3);
        assert!((un(dst[4]) - 255.0).abs() < 1e-3);
    }

    #[test]
    fn max_pool_ceil_keeps_partial_window() {
        #[allow(clippy::cast_precision_loss)]
        let data: Vec<f32> = (0..25).map(|v| v as f32).collect();
        let x = Act {
            c: 1,
            b: 1,
            h: 5,
            w: 5,
            data,
        };
        let y = max_pool_ceil(&x, 2, 2);
        assert_eq!((y.h, y.w), (3, 3));
        assert_eq!(y.data, [6.0, 8.0, 9.0, 16.0, 18.0, 19.0, 21.0, 23.0, 24.0]);
        let neg = Act {
            data: x.data.iter().map(|v| -v).collect(),
            ..x
        };
        let y = max_pool_ceil(&neg, 3, 2);
        assert_eq!((y.h, y.w), (2, 2));
        assert_eq!(y.data, [0.0, -2.0, -10.0, -12.0]);
    }

    #[test]
    fn conv_matches_a_direct_sum() -> candle_core::Result<()> {
        // 2 input channels, 3 outputs, 2×2 kernel, batch of 2, on a 3×4
        // input; weights and inputs small integers (exact in f32).
        let (cin, cout, k) = (2, 3, 2);
        #[allow(clippy::cast_precision_loss)]
        let w: Vec<f32> = (0..cout * cin * k * k)
            .map(|i| (i % 5) as f32 - 2.0)
            .collect();
        let mut ts = std::collections::HashMap::new();
        ts.insert(
            "c.weight".to_owned(),
            Tensor::from_vec(w.clone(), (cout, cin, k, k), &Device::Cpu)?,
        );
        ts.insert(
            "c.bias".to_owned(),
            Tensor::from_vec(vec![0.5_f32, -1.0, 0.0], cout, &Device::Cpu)?,
        );
        ts.insert(
            "p.weight".to_owned(),
            Tensor::from_vec(vec![0.25_f32; 3], cout, &Device::Cpu)?,
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        let conv = Conv::new(cin, cout, k, &vb, "c", Some("p"))?;
        let (b, h, wd) = (2, 3, 4);
        #[allow(clippy::cast_precision_loss)]
        let data: Vec<f32> = (0..cin * b * h * wd)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let x = Act {
            c: cin,
            b,
            h,
            w: wd,
            data,
        };
        let y = conv.forward(&x)?;
        assert_eq!((y.c, y.b, y.h, y.w), (cout, b, 2, 3));
        for co in 0..cout {
            for bi in 0..b {
                for oy in 0..2 {
                    for ox in 0..3 {
                        let mut acc = [0.5_f32, -1.0, 0.0][co];
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    acc += w[((co * cin + ci) * k + ky) * k + kx]
                                        * x.data[((ci * b + bi) * h + oy + ky) * wd + ox + kx];
                                }
                            }
                        }
                        let want = if acc >= 0.0 { acc } else { 0.25 * acc };
                        let got = y.data[((co * b + bi) * 2 + oy) * 3 + ox];
                        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn conv_of_several_inputs_equals_separate_convs() -> candle_core::Result<()> {
        let vb = VarBuilder::from_tensors(
            [
                (
                    "c.weight".to_owned(),
                    Tensor::randn(0f32, 1.0, (4, 2, 3, 3), &Device::Cpu)?,
                ),
                (
                    "c.bias".to_owned(),
                    Tensor::randn(0f32, 1.0, 4, &Device::Cpu)?,
                ),
                (
                    "p.weight".to_owned(),
                    Tensor::randn(0f32, 1.0, 4, &Device::Cpu)?,
                ),
            ]
            .into_iter()
            .collect(),
            DType::F32,
            &Device::Cpu,
        );
        let conv = Conv::new(2, 4, 3, &vb, "c", Some("p"))?;
        let act = |h: usize, w: usize, seed: usize| {
            #[allow(clippy::cast_precision_loss)]
            let data = (0..2 * h * w)
                .map(|i| ((i * 31 + seed) % 17) as f32 - 8.0)
                .collect();
            Act {
                c: 2,
                b: 1,
                h,
                w,
                data,
            }
        };
        let xs = [act(5, 7, 1), act(3, 3, 2), act(9, 4, 3)];
        let many = conv.forward_many(&xs)?;
        for (x, m) in xs.iter().zip(&many) {
            let one = conv.forward(x)?;
            assert_eq!((one.h, one.w), (m.h, m.w));
            for (a, b) in one.data.iter().zip(&m.data) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
        Ok(())
    }

    #[test]
    fn bands_give_the_same_map_as_the_whole_level() -> candle_core::Result<()> {
        let bytes = include_bytes!("../../models/face/mtcnn.safetensors");
        let m = Mtcnn::from_safetensors(bytes, &Device::Cpu)?;
        for (h, w) in [(61, 40), (60, 33), (47, 20)] {
            #[allow(clippy::cast_precision_loss)]
            let data: Vec<f32> = (0..3 * h * w)
                .map(|i| (((i * 7919) % 255) as f32 - 127.5) / 128.0)
                .collect();
            let level = Act {
                c: 3,
                b: 1,
                h,
                w,
                data,
            };
            let whole = m.pnet.forward(std::slice::from_ref(&level))?;
            let (wh, ww, wp, wr) = &whole[0];
            for budget in [14 * w, 20 * w, 33 * w] {
                let bands = split_bands(vec![level.clone()], budget);
                assert!(bands.len() > 1, "{h}×{w} at {budget}");
                let outs = m
                    .pnet
                    .forward(&bands.into_iter().map(|(_, a)| a).collect::<Vec<_>>())?;
                let rows: usize = outs.iter().map(|o| o.0).sum();
                assert_eq!((rows, outs[0].1), (*wh, *ww));
                let prob: Vec<f32> = outs.iter().flat_map(|o| o.2.iter().copied()).collect();
                for (a, b) in prob.iter().zip(wp) {
                    assert!((a - b).abs() < 1e-5);
                }
                // Offsets: channel 0 of every band, in order, is channel 0
                // of the whole map.
                let reg0: Vec<f32> = outs
                    .iter()
                    .flat_map(|o| o.3[..o.2.len()].to_vec())
                    .collect();
                for (a, b) in reg0.iter().zip(&wr[..wp.len()]) {
                    assert!((a - b).abs() < 1e-4);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn flatten_is_width_height_channel() {
        // One item, 2 channels, 2×3: value = 100c + 10y + x.
        let mut data = Vec::new();
        for c in 0..2 {
            for y in 0..2 {
                for x in 0..3 {
                    #[allow(clippy::cast_precision_loss)]
                    data.push((100 * c + 10 * y + x) as f32);
                }
            }
        }
        let f = flatten_whc(&Act {
            c: 2,
            b: 1,
            h: 2,
            w: 3,
            data,
        });
        // Index ((x·H) + y)·C + c.
        assert_eq!(&f[..6], &[0.0, 100.0, 10.0, 110.0, 1.0, 101.0]);
    }

    #[test]
    fn nms_union_and_min() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
            [2.0, 2.0, 6.0, 6.0],
        ];
        let scores = [0.9, 0.8, 0.7, 0.95];
        // IoU(0,1) = 81/119 ≈ 0.68; the small box 3 is inside 0.
        assert_eq!(nms(&boxes, &scores, 0.5, Overlap::Union), [3, 0, 2]);
        assert_eq!(nms(&boxes, &scores, 0.7, Overlap::Union), [3, 0, 1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.7, Overlap::Min), [3, 2]);
        // Ties: lower index first for Union, higher index first for Min.
        let tied = [1.0, 1.0, 1.0, 1.0];
        assert_eq!(nms(&boxes, &tied, 0.5, Overlap::Union), [0, 2, 3]);
        assert_eq!(nms(&boxes, &tied, 0.7, Overlap::Min), [3, 2]);
        assert_eq!(nms(&boxes[..3], &tied[..3], 0.7, Overlap::Min), [2, 1]);
    }

    #[test]
    fn square_and_crop_window() {
        assert_eq!(square([0.0, 0.0, 10.0, 20.0]), [-5.0, 0.0, 15.0, 20.0]);
        assert_eq!(
            crop_window(&[-5.0, 0.0, 15.0, 20.0], 12, 30),
            Some((0, 0, 12, 20))
        );
        assert_eq!(
            crop_window(&[3.7, 2.2, 8.9, 9.0], 100, 100),
            Some((2, 1, 6, 8))
        );
        assert_eq!(crop_window(&[50.0, 50.0, 60.0, 60.0], 20, 20), None);
    }

    #[test]
    fn pyramid_matches_facenet() {
        let m = Mtcnn {
            pnet: dummy_pnet(),
            rnet: dummy_rnet(),
            onet: dummy_onet(),
            config: MtcnnConfig::default(),
        };
        let s = m.scales(320, 320);
        assert_eq!(s.len(), 9);
        assert!((s[0] - 0.6).abs() < 1e-12);
        assert!((s[8] - 0.6 * 0.709_f64.powi(8)).abs() < 1e-9);
        assert!(m.scales(19, 400).is_empty());
        assert_eq!(m.scales(20, 20).len(), 1);
    }

    fn zeros_vb() -> VarBuilder<'static> {
        VarBuilder::zeros(DType::F32, &Device::Cpu)
    }
    fn dummy_pnet() -> PNet {
        PNet::new(&zeros_vb()).unwrap()
    }
    fn dummy_rnet() -> RNet {
        RNet::new(&zeros_vb()).unwrap()
    }
    fn dummy_onet() -> ONet {
        ONet::new(&zeros_vb()).unwrap()
    }

    #[test]
    fn networks_have_the_expected_shapes() -> candle_core::Result<()> {
        let zeros = |c, b, h, w| Act {
            c,
            b,
            h,
            w,
            data: vec![0.0; c * b * h * w],
        };
        let levels = dummy_pnet().forward(&[zeros(3, 1, 25, 31), zeros(3, 1, 13, 14)])?;
        // 25 → 23 → 12 → 10 → 8; 31 → 29 → 15 → 13 → 11.
        let (oh, ow, prob, reg) = &levels[0];
        assert_eq!((*oh, *ow, prob.len(), reg.len()), (8, 11, 88, 4 * 88));
        // 13 → 11 → 6 → 4 → 2; 14 → 12 → 6 → 4 → 2.
        assert_eq!((levels[1].0, levels[1].1), (2, 2));
        let r = dummy_rnet().forward(&zeros(3, 2, 24, 24))?;
        assert_eq!(r.len(), 2);
        let o = dummy_onet().forward(&zeros(3, 3, 48, 48))?;
        assert_eq!(o.len(), 3);
        // Zero weights: softmax of equal logits.
        assert!(o.iter().all(|(p, _, _)| (p - 0.5).abs() < 1e-6));
        assert!(prob.iter().all(|p| (p - 0.5).abs() < 1e-6));
        Ok(())
    }

    #[test]
    fn softmax_probability() {
        assert!((face_probability(0.0, 0.0) - 0.5).abs() < 1e-7);
        assert!((face_probability(-3.0, 2.0) - 1.0 / (1.0 + (-5.0f32).exp())).abs() < 1e-7);
        assert!((face_probability(100.0, -100.0)).abs() < 1e-30);
    }
}
