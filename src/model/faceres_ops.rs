//! faceres' layers as candle custom ops on the CPU, with hand-written
//! backward passes, so that fine-tuning faceres blocks on the CPU does not
//! pay for generic autograd (the epilogue and the texture statistics serve
//! scoring too: one pass each instead of several candle operations):
//!
//! - the 3 × 3 depthwise convolution (TF "SAME" padding, stride 1 or 2,
//!   NHWC, no bias): autograd through nine shifted windows took 25 times
//!   the windows' forward (a throwaway timing, 2026-11-27;
//!   `benches/train.rs` compares the two);
//! - the epilogue of every convolution, `clamp(y + bias, 0, 6)`: autograd
//!   through `broadcast_add` and `clamp` made about twenty passes over the
//!   activations per layer, several of them single-threaded reductions
//!   (`perf` on a fine-tuning step: a quarter of its time);
//! - the texture statistics' per-channel spatial standard deviation
//!   (candle reduces over the middle axis of `[B, H·W, C]` on one thread).
//!
//! Other devices and dtypes take tensor operations ([`depthwise_windows`],
//! `broadcast_add` + `clamp`, `faceres::channel_std_tensor`), which any
//! backend differentiates.
//!
//! The CPU kernels give the same values as those tensor operations (the
//! convolution adds the taps in the windows' order); the gradients sum in a
//! fixed order too (no dependence on the thread count), which keeps
//! training deterministic.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::faceres::same_pads;

/// `x` `[B, H, W, C]` convolved with `taps` `[9, C]` (row-major over the
/// 3 × 3 window), stride `stride`, TF "SAME" padding: `[B, ⌈H/s⌉, ⌈W/s⌉, C]`.
/// Differentiable with respect to both.
///
/// # Errors
/// A tensor error (wrong shapes).
pub fn depthwise3x3(x: &Tensor, taps: &Tensor, stride: usize) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && taps.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op2(&taps.contiguous()?, DwForward { stride })
    } else {
        depthwise_windows(x, taps, stride)
    }
}

/// The same with tensor operations only (nine shifted windows): any
/// device, differentiated by candle.
///
/// # Errors
/// A tensor error (wrong shapes).
#[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), s (stride), i, j (taps)
pub fn depthwise_windows(x: &Tensor, taps: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
    let (pt, pb) = same_pads(h, 3, s);
    let (pl, pr) = same_pads(w, 3, s);
    // With stride 2 each tap takes 2*out rows from its offset and keeps
    // the even ones, so pad far enough for the last tap (the extra zero
    // rows beyond TF's padding are never selected).
    let pb = pb.max((2 + s * oh).saturating_sub(h + pt));
    let pr = pr.max((2 + s * ow).saturating_sub(w + pl));
    let xp = x.pad_with_zeros(1, pt, pb)?.pad_with_zeros(2, pl, pr)?;
    let mut acc: Option<Tensor> = None;
    for t in 0..9 {
        let (i, j) = (t / 3, t % 3);
        let mut win = xp.narrow(1, i, s * oh)?.narrow(2, j, s * ow)?;
        if s > 1 {
            win = win
                .reshape((b, oh, s, ow, s, c))?
                .narrow(2, 0, 1)?
                .narrow(4, 0, 1)?
                .reshape((b, oh, ow, c))?;
        }
        let term = win.broadcast_mul(&taps.get(t)?)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        Some(acc) => Ok(acc),
        None => bail!("depthwise convolution without taps"),
    }
}

/// The convolution's geometry: input `h × w`, output `oh × ow`, stride,
/// and the top/left padding.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    s: usize,
    pt: usize,
    pl: usize,
}

impl Geometry {
    fn new(h: usize, w: usize, s: usize) -> candle_core::Result<Self> {
        if s == 0 || h == 0 || w == 0 {
            bail!("depthwise convolution: stride {s}, input {h}x{w}");
        }
        Ok(Self {
            h,
            w,
            oh: h.div_ceil(s),
            ow: w.div_ceil(s),
            s,
            pt: same_pads(h, 3, s).0,
            pl: same_pads(w, 3, s).0,
        })
    }

    /// Calls `f(tap, input pixel, output pixel)` for every tap of every
    /// output pixel that reads inside the input, in the windows' order.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        for i in 0..self.oh {
            for j in 0..self.ow {
                let out = i * self.ow + j;
                for di in 0..3 {
                    let Some(y) = (self.s * i + di).checked_sub(self.pt) else {
                        continue;
                    };
                    if y >= self.h {
                        continue;
                    }
                    for dj in 0..3 {
                        let Some(x) = (self.s * j + dj).checked_sub(self.pl) else {
                            continue;
                        };
                        if x >= self.w {
                            continue;
                        }
                        f(di * 3 + dj, y * self.w + x, out);
                    }
                }
            }
        }
    }
}

impl Geometry {
    /// Face by face, in parallel: `dst[p] += src[q] * taps[t]` over every
    /// tap pair — `forward`: `q` an input pixel and `p` the output pixel
    /// it feeds (the convolution); else the other way round (its gradient
    /// for the input).
    fn spread(&self, dst: &mut [f32], src: &[f32], taps: &[f32], c: usize, forward: bool) {
        let (inputs, outputs) = (self.h * self.w * c, self.oh * self.ow * c);
        let (dst_face, src_face) = if forward {
            (outputs, inputs)
        } else {
            (inputs, outputs)
        };
        dst.par_chunks_mut(dst_face)
            .zip(src.par_chunks(src_face))
            .for_each(|(dst, src)| {
                self.for_each(|t, input, output| {
                    let (to, from) = if forward {
                        (output, input)
                    } else {
                        (input, output)
                    };
                    mul_add(
                        &mut dst[to * c..(to + 1) * c],
                        &src[from * c..(from + 1) * c],
                        &taps[t * c..(t + 1) * c],
                    );
                });
            });
    }
}

/// The values of a contiguous `f32` CPU tensor.
fn values<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        bail!("faceres op: f32 expected")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => bail!("faceres op: contiguous input expected"),
    }
}

/// An error naming both shapes unless `agree`.
fn shapes_agree(agree: bool, what: &str, a: &Layout, b: &Layout) -> candle_core::Result<()> {
    if agree {
        Ok(())
    } else {
        bail!(
            "faceres op: {what} do not fit: {:?}, {:?}",
            a.shape(),
            b.shape()
        )
    }
}

/// The element-wise sum of `partial` sums of length `len`, added in their
/// order (so the result does not depend on how rayon split the work).
fn add_in_order(partial: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = vec![0f32; len];
    for p in partial {
        for (a, &v) in sum.iter_mut().zip(p) {
            *a += v;
        }
    }
    sum
}

/// The last dimension of a layout (0 for a scalar).
fn last_dim(l: &Layout) -> usize {
    l.shape().dims().last().copied().unwrap_or(0)
}

/// `y[n, out] += a[n, from] * k` over the channels.
fn mul_add(y: &mut [f32], a: &[f32], k: &[f32]) {
    for ((y, &a), &k) in y.iter_mut().zip(a).zip(k) {
        *y += a * k;
    }
}

/// Forward: `(x [B,H,W,C], taps [9,C]) -> [B,OH,OW,C]`.
struct DwForward {
    stride: usize,
}

impl CustomOp2 for DwForward {
    fn name(&self) -> &'static str {
        "faceres-depthwise3x3"
    }

    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), g (geometry)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l1.shape().dims4()?;
        shapes_agree(l2.shape().dims() == [9, c], "input and taps", l1, l2)?;
        let g = Geometry::new(h, w, self.stride)?;
        let (x, taps) = (values(s1, l1)?, values(s2, l2)?);
        let mut out = vec![0f32; b * g.oh * g.ow * c];
        g.spread(&mut out, x, taps, c, true);
        Ok((CpuStorage::F32(out), Shape::from((b, g.oh, g.ow, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        taps: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, h, w, _) = x.dims4()?;
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(
            &taps.contiguous()?,
            &DwGradInput {
                stride: self.stride,
                h,
                w,
            },
        )?;
        let gt = x.contiguous()?.apply_op2_no_bwd(
            &grad,
            &DwGradTaps {
                stride: self.stride,
            },
        )?;
        Ok((Some(gx), Some(gt)))
    }
}

/// Gradient for the input: `(grad [B,OH,OW,C], taps [9,C]) -> [B,H,W,C]`.
struct DwGradInput {
    stride: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for DwGradInput {
    fn name(&self) -> &'static str {
        "faceres-depthwise3x3-grad-input"
    }

    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), g (geometry)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, oh, ow, c) = l1.shape().dims4()?;
        let g = Geometry::new(self.h, self.w, self.stride)?;
        shapes_agree(
            (oh, ow) == (g.oh, g.ow) && l2.shape().dims() == [9, c],
            "gradient and taps",
            l1,
            l2,
        )?;
        let (grad, taps) = (values(s1, l1)?, values(s2, l2)?);
        let mut gx = vec![0f32; b * g.h * g.w * c];
        g.spread(&mut gx, grad, taps, c, false);
        Ok((CpuStorage::F32(gx), Shape::from((b, g.h, g.w, c))))
    }
}

/// Gradient for the taps: `(x [B,H,W,C], grad [B,OH,OW,C]) -> [9,C]`.
struct DwGradTaps {
    stride: usize,
}

impl CustomOp2 for DwGradTaps {
    fn name(&self) -> &'static str {
        "faceres-depthwise3x3-grad-taps"
    }

    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), g (geometry)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l1.shape().dims4()?;
        let g = Geometry::new(h, w, self.stride)?;
        shapes_agree(
            l2.shape().dims() == [b, g.oh, g.ow, c],
            "input and gradient",
            l1,
            l2,
        )?;
        let (x, grad) = (values(s1, l1)?, values(s2, l2)?);
        // One partial sum per face, added up in face order afterwards: the
        // result does not depend on how rayon splits the batch.
        let partial: Vec<Vec<f32>> = x
            .par_chunks(h * w * c)
            .zip(grad.par_chunks(g.oh * g.ow * c))
            .map(|(x, grad)| {
                let mut acc = vec![0f32; 9 * c];
                g.for_each(|t, from, to| {
                    mul_add(
                        &mut acc[t * c..(t + 1) * c],
                        &x[from * c..(from + 1) * c],
                        &grad[to * c..(to + 1) * c],
                    );
                });
                acc
            })
            .collect();
        Ok((
            CpuStorage::F32(add_in_order(&partial, 9 * c)),
            Shape::from((9, c)),
        ))
    }
}

/// `clamp(y + bias, 0, 6)` with `bias` `[C]` added along the last
/// dimension of `y`: the epilogue of every faceres convolution (folded
/// batch-norm bias, relu6). Differentiable with respect to both; the
/// gradient is zero where the output is clamped (as PyTorch's relu6; on
/// other devices candle's `clamp` gives half of it at an exact tie).
///
/// # Errors
/// A tensor error (wrong shapes).
pub fn bias_relu6(y: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if y.device().is_cpu() && y.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        y.contiguous()?.apply_op2(&bias.contiguous()?, BiasRelu6)
    } else {
        y.broadcast_add(bias)?.clamp(0f32, 6f32)
    }
}

/// relu6 with the comparisons of candle's `maximum` and `minimum`, so the
/// values match `clamp` to the bit (signed zeros included).
fn relu6(v: f32) -> f32 {
    let v = if v < 0.0 { 0.0 } else { v };
    if v > 6.0 { 6.0 } else { v }
}

/// The number of channels of a `[…, C]` tensor and a `[C]` one, or an error.
fn channels(l1: &Layout, l2: &Layout, what: &str) -> candle_core::Result<usize> {
    let c = last_dim(l1);
    shapes_agree(c > 0 && l2.shape().dims() == [c], what, l1, l2)?;
    Ok(c)
}

/// Forward: `(y [..., C], bias [C]) -> clamp(y + bias, 0, 6)`.
struct BiasRelu6;

impl CustomOp2 for BiasRelu6 {
    fn name(&self) -> &'static str {
        "faceres-bias-relu6"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = channels(l1, l2, "activations and bias")?;
        let (y, bias) = (values(s1, l1)?, values(s2, l2)?);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(ROWS * c)
            .zip(y.par_chunks(ROWS * c))
            .for_each(|(out, y)| {
                for (out, y) in out.chunks_mut(c).zip(y.chunks(c)) {
                    for ((o, &v), &b) in out.iter_mut().zip(y).zip(bias) {
                        *o = relu6(v + b);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = res
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &Relu6Grad)?;
        let gb = gy.apply_op1_no_bwd(&SumRows)?;
        Ok((Some(gy), Some(gb)))
    }
}

/// Rows of `[..., C]` per parallel task of the epilogue's kernels (fixed,
/// so the bias gradient's partial sums do not depend on the thread count).
const ROWS: usize = 64;

/// Gradient through relu6: `(out, grad) -> grad` where `0 < out < 6`, else 0.
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "faceres-relu6-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        shapes_agree(l1.shape() == l2.shape(), "output and gradient", l1, l2)?;
        let (out, grad) = (values(s1, l1)?, values(s2, l2)?);
        let mut g = vec![0f32; out.len()];
        g.par_chunks_mut(1 << 14)
            .zip(out.par_chunks(1 << 14).zip(grad.par_chunks(1 << 14)))
            .for_each(|(g, (out, grad))| {
                for ((g, &o), &d) in g.iter_mut().zip(out).zip(grad) {
                    if o > 0.0 && o < 6.0 {
                        *g = d;
                    }
                }
            });
        Ok((CpuStorage::F32(g), l1.shape().clone()))
    }
}

/// The bias gradient: `[..., C] -> [C]`, the sum over all rows (partial
/// sums of [`ROWS`] rows each, added up in order).
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "faceres-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = last_dim(l);
        if c == 0 {
            bail!("faceres op: no channels to sum: {:?}", l.shape());
        }
        let g = values(s, l)?;
        let partial: Vec<Vec<f32>> = g
            .par_chunks(ROWS * c)
            .map(|rows| {
                let mut acc = vec![0f32; c];
                for row in rows.chunks(c) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                acc
            })
            .collect();
        Ok((CpuStorage::F32(add_in_order(&partial, c)), Shape::from(c)))
    }
}

/// Per-channel spatial standard deviation of `x` `[B, H, W, C]`:
/// `sqrt(mean((x - mean)²) + eps)` → `[B, C]`, two passes per face (the
/// same formula as the tensor version), differentiable with respect to `x`.
///
/// # Errors
/// A tensor error (not four-dimensional, or not f32 on the CPU).
pub fn channel_std_op(x: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(ChannelStd { eps })
}

/// Forward: `x [B,H,W,C] -> [B,C]`.
struct ChannelStd {
    eps: f32,
}

/// `1 / n` for averaging over `n` pixels (a map's pixel count is far below
/// f32's exact-integer range).
#[allow(clippy::cast_precision_loss)]
fn inv_count(n: usize) -> f32 {
    1.0 / n as f32
}

/// Per face: the channel means of `x` (`n` pixels of `c` channels).
fn channel_means(x: &[f32], c: usize, n: usize) -> Vec<f32> {
    let mut mean = vec![0f32; c];
    for px in x.chunks(c) {
        for (m, &v) in mean.iter_mut().zip(px) {
            *m += v;
        }
    }
    let inv = inv_count(n);
    for m in &mut mean {
        *m *= inv;
    }
    mean
}

impl CustomOp1 for ChannelStd {
    fn name(&self) -> &'static str {
        "faceres-channel-std"
    }

    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), n (pixels)
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l.shape().dims4()?;
        let n = h * w;
        if n == 0 || c == 0 {
            bail!("faceres op: empty map {:?}", l.shape());
        }
        let x = values(s, l)?;
        let eps = self.eps;
        let mut out = vec![0f32; b * c];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(n * c))
            .for_each(|(out, x)| {
                let mean = channel_means(x, c, n);
                for px in x.chunks(c) {
                    for ((o, &v), &m) in out.iter_mut().zip(px).zip(&mean) {
                        let d = v - m;
                        *o += d * d;
                    }
                }
                let inv = inv_count(n);
                for o in out.iter_mut() {
                    *o = (*o * inv + eps).sqrt();
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d std / d x = (x - mean) / (H·W · std): the mean's own gradient
        // term vanishes (the deviations sum to zero).
        let scale = (grad / res)?.contiguous()?;
        let gx = x.contiguous()?.apply_op2_no_bwd(&scale, &ChannelStdGrad)?;
        Ok(Some(gx))
    }
}

/// Gradient: `(x [B,H,W,C], grad / std [B,C]) -> (x - mean) · (grad / std) / (H·W)`.
struct ChannelStdGrad;

impl CustomOp2 for ChannelStdGrad {
    fn name(&self) -> &'static str {
        "faceres-channel-std-grad"
    }

    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), n (pixels)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l1.shape().dims4()?;
        let n = h * w;
        shapes_agree(
            n > 0 && c > 0 && l2.shape().dims() == [b, c],
            "map and gradient",
            l1,
            l2,
        )?;
        let (x, scale) = (values(s1, l1)?, values(s2, l2)?);
        let mut gx = vec![0f32; x.len()];
        gx.par_chunks_mut(n * c)
            .zip(x.par_chunks(n * c).zip(scale.par_chunks(c)))
            .for_each(|(gx, (x, scale))| {
                let mean = channel_means(x, c, n);
                let inv = inv_count(n);
                let k: Vec<f32> = scale.iter().map(|s| s * inv).collect();
                for (g, px) in gx.chunks_mut(c).zip(x.chunks(c)) {
                    for (((g, &v), &m), &k) in g.iter_mut().zip(px).zip(&mean).zip(&k) {
                        *g = (v - m) * k;
                    }
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::faceres::tests::max_diff;
    use candle_core::backprop::GradStore;
    use candle_core::{Device, Var};

    /// The gradients of a loss that weighs every output differently.
    fn grads_of(out: Tensor, weight: &Tensor) -> GradStore {
        (out * weight)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// The largest difference of `v`'s gradients, relative to the larger
    /// of 1 and the reference's largest magnitude.
    fn grad_diff(got: &GradStore, reference: &GradStore, v: &Var) -> f32 {
        let (a, b) = (
            got.get(v.as_tensor()).unwrap(),
            reference.get(v.as_tensor()).unwrap(),
        );
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        max_diff(a, b) / scale.to_scalar::<f32>().unwrap().max(1.0)
    }

    /// The custom op and the windows agree on the values and on both
    /// gradients, for both strides and even and odd sizes.
    #[test]
    #[allow(clippy::many_single_char_names)] // c, h, w (NHWC), a, b (the two paths)
    fn custom_op_matches_the_windows_and_their_gradients() {
        let dev = Device::Cpu;
        let c = 6;
        for stride in [1, 2] {
            for (h, w) in [(8, 8), (7, 9), (1, 2), (14, 14)] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (3, h, w, c), &dev).unwrap())
                    .unwrap();
                let taps =
                    Var::from_tensor(&Tensor::randn(0f32, 1f32, (9, c), &dev).unwrap()).unwrap();
                // A loss that weighs every output differently.
                let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
                let weight = Tensor::randn(0f32, 1f32, (3, oh, ow, c), &dev).unwrap();
                let a = depthwise3x3(x.as_tensor(), taps.as_tensor(), stride).unwrap();
                let b = depthwise_windows(x.as_tensor(), taps.as_tensor(), stride).unwrap();
                assert_eq!(a.dims(), &[3, oh, ow, c]);
                let d = max_diff(&a, &b);
                assert!(d <= 0.0, "values, stride {stride}, {h}x{w}: {d}");
                let (ga, gb) = (grads_of(a, &weight), grads_of(b, &weight));
                for (name, v) in [("input", &x), ("taps", &taps)] {
                    let d = grad_diff(&ga, &gb, v);
                    assert!(d < 1e-5, "{name} gradient, stride {stride}, {h}x{w}: {d}");
                }
            }
        }
    }

    /// The fused epilogue gives `clamp(y + bias, 0, 6)` to the bit, and the
    /// gradients of autograd through those tensor operations (away from
    /// exact ties at 0 and 6, where candle's `clamp` halves the gradient).
    #[test]
    #[allow(clippy::many_single_char_names)] // c, y (the op's names), a, b (the two paths), g
    fn bias_relu6_matches_the_tensor_ops_and_their_gradients() {
        let dev = Device::Cpu;
        for shape in [vec![3, 5, 7, 6], vec![130, 4], vec![1, 1]] {
            let c = shape[shape.len() - 1];
            // Values spread over (-4, 10): below 0, inside, above 6.
            let y = Var::from_tensor(
                &Tensor::rand(0f32, 1f32, shape.as_slice(), &dev)
                    .unwrap()
                    .affine(14.0, -4.0)
                    .unwrap(),
            )
            .unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1f32, c, &dev).unwrap()).unwrap();
            let weight = Tensor::randn(0f32, 1f32, shape.as_slice(), &dev).unwrap();
            let a = bias_relu6(y.as_tensor(), bias.as_tensor()).unwrap();
            let b = y
                .as_tensor()
                .broadcast_add(bias.as_tensor())
                .unwrap()
                .clamp(0f32, 6f32)
                .unwrap();
            assert_eq!(a.dims(), shape.as_slice());
            assert!(max_diff(&a, &b) <= 0.0, "values {shape:?}");
            let (ga, gb) = (grads_of(a, &weight), grads_of(b, &weight));
            for (name, v) in [("activations", &y), ("bias", &bias)] {
                let d = grad_diff(&ga, &gb, v);
                assert!(d < 1e-5, "{name} gradient {shape:?}: {d}");
            }
        }
        // Clamped outputs pass no gradient.
        let y = Var::from_tensor(&Tensor::new(&[[-1f32, 3.0, 7.0]], &dev).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::zeros(3, DType::F32, &dev).unwrap()).unwrap();
        let g = bias_relu6(y.as_tensor(), bias.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gy = g.get(y.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gy, vec![vec![0.0, 1.0, 0.0]]);
    }

    /// The custom op gives the tensor formula's values and gradient.
    #[test]
    #[allow(clippy::many_single_char_names)] // x, w (weights), a, b (the two paths)
    fn channel_std_matches_the_tensor_ops_and_their_gradient() {
        let dev = Device::Cpu;
        for shape in [(3, 5, 7, 6), (2, 1, 1, 4), (1, 14, 14, 33)] {
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 2f32, shape, &dev)
                    .unwrap()
                    .affine(1.0, 3.0)
                    .unwrap(),
            )
            .unwrap();
            let w = Tensor::randn(0f32, 1f32, (shape.0, shape.3), &dev).unwrap();
            let a = channel_std_op(x.as_tensor(), 1e-6).unwrap();
            let b = crate::model::faceres::channel_std_tensor(x.as_tensor()).unwrap();
            assert_eq!(a.dims(), &[shape.0, shape.3]);
            let d = max_diff(&a, &b);
            assert!(d < 1e-5, "values {shape:?}: {d}");
            let d = grad_diff(&grads_of(a, &w), &grads_of(b, &w), &x);
            assert!(d < 1e-5, "gradient {shape:?}: {d}");
        }
        assert!(channel_std_op(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap(), 1e-6).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 4, 3), DType::F32, &dev).unwrap();
        let taps = Tensor::zeros((9, 4), DType::F32, &dev).unwrap();
        assert!(depthwise3x3(&x, &taps, 1).is_err());
        let taps = Tensor::zeros((9, 3), DType::F32, &dev).unwrap();
        assert!(depthwise3x3(&x, &taps, 0).is_err());
        assert!(bias_relu6(&x, &Tensor::zeros(4, DType::F32, &dev).unwrap()).is_err());
        assert!(bias_relu6(&x, &Tensor::zeros((1, 3), DType::F32, &dev).unwrap()).is_err());
    }
}
