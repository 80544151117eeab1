//! Linear layers with bfloat16 inputs and float32 accumulation, for CPUs
//! with AVX-512 BF16 (`vdpbf16ps`: 32 multiply-adds per instruction, twice
//! the float32 rate).
//!
//! The weight `[N, K]` is converted once, at load, into 32-column panels of
//! bf16 pairs: for each pair of input features `(2q, 2q+1)`, 32 columns ×
//! 2 values = two 512-bit vectors. Each input row is converted to bf16 per
//! call (its pairs are then simply consecutive values). The micro-kernel
//! keeps an `MR × 32` block of the output in 2·MR registers and, for each
//! pair `q`, broadcasts the rows' pairs against the panel's two vectors.
//! Rows are split into chunks across the rayon pool; each chunk walks all
//! panels, so one panel is reused across the chunk's rows from cache.
//!
//! Rounding: inputs and weights are rounded to bf16 (8 bits of mantissa,
//! relative error ≤ 2⁻⁹), products and sums are exact/float32. How much a
//! model's score moves is measured, not assumed (`docs/MODEL.md`).

// The kernel is written with `std::arch` intrinsics, which are `unsafe`;
// every block states what it relies on. The rest of the crate denies
// unsafe code.
#![allow(unsafe_code)]

use half::bf16;
use rayon::prelude::*;

/// Output columns per panel (two 16-lane vectors).
const NR: usize = 32;
/// Output rows per micro-kernel call (2·MR accumulators + 2 panel vectors
/// + 1 broadcast fit in the 32 vector registers).
const MR: usize = 12;

/// Whether this CPU can run the bf16 kernel.
#[must_use]
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix `[N, K]` (PyTorch's `Linear.weight` layout) packed for
/// the kernel, with its bias.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    n: usize,
    k: usize,
    /// `ceil(K / 2)`.
    pairs: usize,
    /// `panels × pairs × NR` bf16 pairs (low half: the even feature).
    data: Vec<u32>,
    bias: Option<Vec<f32>>,
}

fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16::from_f32(lo).to_bits()) | (u32::from(bf16::from_f32(hi).to_bits()) << 16)
}

impl PackedLinear {
    /// Packs `weight` (`n × k`, row-major) and an optional bias of `n`.
    ///
    /// # Errors
    /// A message when the lengths do not match `n × k` and `n`.
    pub fn new(weight: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<Self, String> {
        if n == 0 || k == 0 || weight.len() != n * k {
            return Err(format!(
                "weight of {} values is not {n} × {k}",
                weight.len()
            ));
        }
        if let Some(b) = bias
            && b.len() != n
        {
            return Err(format!("bias of {} values for {n} outputs", b.len()));
        }
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * pairs * NR];
        for (p, panel) in data.chunks_mut(pairs * NR).enumerate() {
            for (q, lanes) in panel.chunks_mut(NR).enumerate() {
                for (j, slot) in lanes.iter_mut().enumerate() {
                    let col = p * NR + j;
                    if col >= n {
                        break;
                    }
                    let row = &weight[col * k..(col + 1) * k];
                    let lo = row[2 * q];
                    let hi = row.get(2 * q + 1).copied().unwrap_or(0.0);
                    *slot = pair(lo, hi);
                }
            }
        }
        Ok(Self {
            n,
            k,
            pairs,
            data,
            bias: bias.map(<[f32]>::to_vec),
        })
    }

    /// Input features.
    #[must_use]
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Output features.
    #[must_use]
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `x · Wᵀ + b` for `x` of `rows × K` (row-major); returns `rows × N`.
    ///
    /// # Errors
    /// A message when `x` is not a whole number of rows, or the CPU lacks
    /// AVX-512 BF16.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>, String> {
        if !supported() {
            return Err("this CPU has no AVX-512 BF16".into());
        }
        if !x.len().is_multiple_of(self.k) {
            return Err(format!("{} inputs are not rows of {}", x.len(), self.k));
        }
        let rows = x.len() / self.k;
        let mut out = vec![0f32; rows * self.n];
        if rows == 0 {
            return Ok(out);
        }
        // Rows per task: enough tasks for the pool, a whole number of MR.
        let tasks = rayon::current_num_threads().max(1) * 4;
        let chunk = rows.div_ceil(tasks).div_ceil(MR).max(1) * MR;
        out.par_chunks_mut(chunk * self.n)
            .zip(x.par_chunks(chunk * self.k))
            .for_each(|(out, x)| self.rows(x, out));
        Ok(out)
    }

    /// One chunk of rows (called only when [`supported`]).
    fn rows(&self, x: &[f32], out: &mut [f32]) {
        let rows = x.len() / self.k;
        // The rows as bf16 pairs, zero-padded to an even length.
        let mut a = vec![0u32; rows * self.pairs];
        for (src, dst) in x.chunks(self.k).zip(a.chunks_mut(self.pairs)) {
            // 32 values at a time with the conversion instruction, the rest
            // one pair at a time (same rounding: to nearest, ties to even).
            #[cfg(target_arch = "x86_64")]
            let done = {
                // SAFETY: `supported()` was checked by `forward`.
                unsafe { convert_row(src, dst) }
            };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            for (q, d) in dst.iter_mut().enumerate().skip(done) {
                *d = pair(src[2 * q], src.get(2 * q + 1).copied().unwrap_or(0.0));
            }
        }
        let panels = self.n.div_ceil(NR);
        for p in 0..panels {
            let panel = &self.data[p * self.pairs * NR..(p + 1) * self.pairs * NR];
            let first = p * NR;
            let cols = NR.min(self.n - first);
            let bias = self.bias.as_ref().map(|b| &b[first..first + cols]);
            let mut r = 0;
            while r < rows {
                let mr = MR.min(rows - r);
                let a_rows = &a[r * self.pairs..(r + mr) * self.pairs];
                let c = &mut out[r * self.n + first..];
                // SAFETY: `supported()` was checked by `forward`; the slices
                // cover what the kernel reads (`mr` rows of `pairs` pairs, a
                // panel of `pairs × NR`) and writes (`mr` rows of `cols`
                // values at stride `n`, the last row ending within `c`).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    dispatch(mr, a_rows, self.pairs, panel, c, self.n, cols, bias);
                }
                r += mr;
            }
        }
    }
}

/// Converts the leading multiple of 32 values of `src` into bf16 pairs in
/// `dst`; returns how many pairs were written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row(src: &[f32], dst: &mut [u32]) -> usize {
    use std::arch::x86_64::{
        __m512bh, __m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512,
    };
    let blocks = src.len() / 32;
    debug_assert!(dst.len() >= blocks * 16);
    for i in 0..blocks {
        // SAFETY: 32 values from 32·i are inside `src`; 16 pairs from 16·i
        // inside `dst` (it holds ceil(len / 2) pairs).
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * i + 16));
            let v: __m512bh = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                dst.as_mut_ptr().add(16 * i).cast(),
                std::mem::transmute::<__m512bh, __m512i>(v),
            );
        }
    }
    blocks * 16
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    mr: usize,
    a: &[u32],
    pairs: usize,
    panel: &[u32],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
    bias: Option<&[f32]>,
) {
    macro_rules! call {
        ($($m:literal)*) => {
            match mr {
                $($m => unsafe { kernel::<$m>(a, pairs, panel, c, ldc, cols, bias) },)*
                _ => {}
            }
        };
    }
    call!(1 2 3 4 5 6 7 8 9 10 11 12);
}

/// `c[r][j] = Σ_q dot(a[r][q], panel[q][j]) (+ bias[j])` for `M` rows and
/// `cols ≤ 32` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const M: usize>(
    a: &[u32],
    pairs: usize,
    panel: &[u32],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
    bias: Option<&[f32]>,
) {
    use std::arch::x86_64::{
        __m512, __m512bh, __m512i, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_si512,
        _mm512_mask_loadu_ps, _mm512_mask_storeu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
    };
    debug_assert!(a.len() >= M * pairs && panel.len() >= pairs * NR && cols <= NR);
    debug_assert!(c.len() >= (M - 1) * ldc + cols);
    let bh = |v: __m512i| -> __m512bh { unsafe { std::mem::transmute::<__m512i, __m512bh>(v) } };
    let mut acc = [[_mm512_setzero_ps(); 2]; M];
    let ap = a.as_ptr();
    let bp = panel.as_ptr();
    for q in 0..pairs {
        // SAFETY: q < pairs and the panel holds pairs × NR values.
        let (b0, b1) = unsafe {
            (
                bh(_mm512_loadu_si512(bp.add(q * NR).cast())),
                bh(_mm512_loadu_si512(bp.add(q * NR + 16).cast())),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < M rows of `pairs` values each.
            #[allow(clippy::cast_possible_wrap)]
            let av = bh(_mm512_set1_epi32(unsafe { *ap.add(r * pairs + q) } as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    let m0: u16 = if cols >= 16 {
        0xFFFF
    } else {
        (1u16 << cols) - 1
    };
    let m1: u16 = if cols >= 32 {
        0xFFFF
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    let (bias0, bias1): (__m512, __m512) = match bias {
        // SAFETY: masked loads read only the `cols` valid bias values.
        Some(b) => unsafe {
            (
                _mm512_mask_loadu_ps(_mm512_setzero_ps(), m0, b.as_ptr()),
                _mm512_mask_loadu_ps(_mm512_setzero_ps(), m1, b.as_ptr().wrapping_add(16)),
            )
        },
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    let cp = c.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: masked stores write only the `cols` valid values of row r.
        unsafe {
            _mm512_mask_storeu_ps(cp.add(r * ldc), m0, _mm512_add_ps(acc[0], bias0));
            _mm512_mask_storeu_ps(
                cp.add(r * ldc).wrapping_add(16),
                m1,
                _mm512_add_ps(acc[1], bias1),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::many_single_char_names)]
    fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, k: usize) -> Vec<f32> {
        let rows = x.len() / k;
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut s = f64::from(b.map_or(0.0, |b| b[j]));
                for i in 0..k {
                    // The kernel's inputs are rounded to bf16.
                    let xi = bf16::from_f32(x[r * k + i]).to_f32();
                    let wi = bf16::from_f32(w[j * k + i]).to_f32();
                    s += f64::from(xi) * f64::from(wi);
                }
                #[allow(clippy::cast_possible_truncation)]
                {
                    out[r * n + j] = s as f32;
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                #[allow(clippy::cast_precision_loss)]
                let v = (state % 20_001) as f32 / 10_000.0 - 1.0;
                v
            })
            .collect()
    }

    #[test]
    fn matches_a_reference_product_on_odd_shapes() {
        if !supported() {
            eprintln!("skipped: no AVX-512 BF16 on this CPU");
            return;
        }
        // Odd K (padding), N not a multiple of 32 (masked stores), row
        // counts around MR and the task split.
        for &(rows, n, k) in &[
            (1, 1, 1),
            (5, 33, 7),
            (13, 64, 64),
            (197, 40, 77),
            (30, 96, 768),
        ] {
            let x = values(rows * k, 1);
            let w = values(n * k, 2);
            let b = values(n, 3);
            for bias in [None, Some(b.as_slice())] {
                let p = PackedLinear::new(&w, n, k, bias).unwrap();
                let got = p.forward(&x).unwrap();
                let want = reference(&x, &w, bias, n, k);
                for (g, w) in got.iter().zip(&want) {
                    // f32 accumulation against f64 on bf16-rounded inputs.
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{rows}x{n}x{k}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// With an identity weight the output is the input rounded to bf16:
    /// the vector conversion rounds exactly as `half` does (ties to even).
    #[test]
    fn input_rounding_is_to_nearest_even() {
        if !supported() {
            eprintln!("skipped: no AVX-512 BF16 on this CPU");
            return;
        }
        let k = 70; // two vector blocks and a scalar tail
        let mut eye = vec![0f32; k * k];
        for i in 0..k {
            eye[i * k + i] = 1.0;
        }
        let p = PackedLinear::new(&eye, k, k, None).unwrap();
        let mut x = values(3 * k, 7);
        // Halfway cases between two bf16 values, both parities.
        x[0] = f32::from_bits(0x3F80_8000);
        x[1] = f32::from_bits(0x3F81_8000);
        x[69] = f32::from_bits(0x3F80_8000);
        let got = p.forward(&x).unwrap();
        for (g, v) in got.iter().zip(&x) {
            assert_eq!(g.to_bits(), bf16::from_f32(*v).to_f32().to_bits(), "{v}");
        }
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert!(PackedLinear::new(&[0.0; 6], 2, 2, None).is_err());
        assert!(PackedLinear::new(&[0.0; 4], 2, 2, Some(&[0.0])).is_err());
        if supported() {
            let p = PackedLinear::new(&[1.0; 4], 2, 2, None).unwrap();
            assert!(p.forward(&[1.0; 3]).is_err());
            assert_eq!(p.forward(&[1.0, 2.0]).unwrap(), vec![3.0, 3.0]);
        }
    }
}
