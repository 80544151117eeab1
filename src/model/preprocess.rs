//! CLIP's image preprocessing, in one place: resize the shorter side to the
//! input size with bicubic filtering, centre-crop a square, scale to [0, 1],
//! normalise with CLIP's mean and standard deviation.
//!
//! The resampling reproduces Pillow's `Image.resize(…, BICUBIC)` exactly
//! (its separable, antialiased two-pass filter with 22-bit fixed-point
//! coefficients and rounding to 8 bits after each pass), which is what
//! `OpenAI`'s CLIP `preprocess` and transformers' CLIP image processor use;
//! the tests compare with transformers' PIL processor bit for bit. The crop
//! offset is `(side − size) / 2` rounded down, as transformers (torchvision
//! rounds half-pixels to even; the two differ by one pixel for odd margins).
//! An image whose shorter side already equals the input size is not
//! resampled.

use candle_core::{Device, Tensor};
use image::RgbImage;

/// CLIP's per-channel mean (`OpenAI`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (`OpenAI`).
#[allow(clippy::excessive_precision)] // the published constants, as transformers writes them
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Preprocesses one image into normalised pixels, channel-major
/// `[3, size, size]`.
#[must_use]
pub fn preprocess_clip(img: &RgbImage, size: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    normalize(&resize_crop(img, size), mean, std)
}

/// Stacks preprocessed images (each `[3, size, size]`) into a `[B, 3, size, size]` tensor.
///
/// # Errors
/// A tensor error when an image has another length.
pub fn to_tensor(images: &[Vec<f32>], size: usize, device: &Device) -> candle_core::Result<Tensor> {
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (images.len(), 3, size, size), device)
}

/// Resizes the shorter side to `size` (Pillow bicubic; not when it already
/// is `size`) and crops the central `size × size` square.
#[must_use]
pub fn resize_crop(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let resized;
    let src = if short == size || short == 0 {
        img
    } else {
        // transformers / torchvision: the long side is truncated.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let new_long = (size as f64 * long as f64 / short as f64) as usize;
        let (nw, nh) = if w <= h {
            (size, new_long)
        } else {
            (new_long, size)
        };
        resized = resize_bicubic(img, nw, nh);
        &resized
    };
    let (w, h) = (src.width() as usize, src.height() as usize);
    let top = h.saturating_sub(size) / 2;
    let left = w.saturating_sub(size) / 2;
    let mut out = RgbImage::new(to_u32(size), to_u32(size));
    for y in 0..size.min(h) {
        for x in 0..size.min(w) {
            out.put_pixel(
                to_u32(x),
                to_u32(y),
                *src.get_pixel(to_u32(x + left), to_u32(y + top)),
            );
        }
    }
    out
}

fn to_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// `[3, H, W]` floats: `(v / 255 − mean) / std` per channel.
#[must_use]
pub fn normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0.0_f32; 3 * w * h];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * w * h + i] = (f32::from(p.0[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

/// Pillow's bicubic kernel (a = −0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output
/// index, the first input index and the fixed-point weights.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as usize).min(in_size);
            let n = xmax.saturating_sub(xmin);
            let mut k: Vec<f64> = (0..n)
                .map(|x| bicubic(((x + xmin) as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                for v in &mut k {
                    *v /= ww;
                }
            }
            let fixed = k
                .iter()
                .map(|&v| {
                    let s = v * f64::from(1_u32 << PRECISION_BITS);
                    if v < 0.0 {
                        (-0.5 + s) as i32
                    } else {
                        (0.5 + s) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    u8::try_from((v >> PRECISION_BITS).clamp(0, 255)).unwrap_or(u8::MAX)
}

/// Resizes to `nw × nh` exactly as Pillow's `resize(…, Image.BICUBIC)`:
/// horizontal pass first (rounded to 8 bits), then vertical; a pass whose
/// size does not change is skipped.
#[must_use]
pub fn resize_bicubic(img: &RgbImage, nw: usize, nh: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src: Vec<u8> = img.as_raw().clone();
    let half = 1_i64 << (PRECISION_BITS - 1);
    // Horizontal pass: [h, w] → [h, nw].
    let (tmp, tw) = if nw == w {
        (src, w)
    } else {
        let coeffs = coefficients(w, nw);
        let mut out = vec![0_u8; h * nw * 3];
        for y in 0..h {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss = half;
                    for (i, &kv) in k.iter().enumerate() {
                        ss += i64::from(src[(y * w + xmin + i) * 3 + c]) * i64::from(kv);
                    }
                    out[(y * nw + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (out, nw)
    };
    // Vertical pass: [h, tw] → [nh, tw].
    let data = if nh == h {
        tmp
    } else {
        let coeffs = coefficients(h, nh);
        let mut out = vec![0_u8; nh * tw * 3];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..tw {
                for c in 0..3 {
                    let mut ss = half;
                    for (i, &kv) in k.iter().enumerate() {
                        ss += i64::from(tmp[((ymin + i) * tw + x) * 3 + c]) * i64::from(kv);
                    }
                    out[(yy * tw + x) * 3 + c] = clip8(ss);
                }
            }
        }
        out
    };
    RgbImage::from_raw(to_u32(tw), to_u32(nh), data).unwrap_or_else(|| RgbImage::new(0, 0))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_is_not_resampled() {
        let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
        assert_eq!(resize_crop(&img, 8), img);
        // Shorter side already the size: only cropped.
        let wide = RgbImage::from_fn(12, 8, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 30) as u8, 7])
        });
        let out = resize_crop(&wide, 8);
        assert_eq!(out.get_pixel(0, 0), wide.get_pixel(2, 0));
    }

    #[test]
    fn constant_image_stays_constant_and_normalises() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([200, 100, 50]));
        let out = resize_crop(&img, 16);
        assert_eq!(out.dimensions(), (16, 16));
        assert!(out.pixels().all(|p| p.0 == [200, 100, 50]));
        let v = normalize(&out, CLIP_MEAN, CLIP_STD);
        assert!((v[0] - (200.0 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert_eq!(v.len(), 3 * 16 * 16);
    }
}
