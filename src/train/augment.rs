//! Training augmentations on aligned faces, and self-blended fakes.
//!
//! Every function takes the aligned face (`ALIGNED_SIZE`², RGB) and a
//! seeded random generator, so a training run is reproducible. The
//! augmentations are those of issue 6: horizontal flip, colour jitter,
//! JPEG re-compression, blur, downscaling — plus a random black border,
//! which every domain gets so that the black margins of aligned tight crops
//! (DFDC) cannot become a cue.
//!
//! A self-blended fake (after Shiohara & Yamasaki, "Detecting Deepfakes
//! with Self-Blended Images", CVPR 2022) is a real face blended with a
//! colour- and geometry-transformed copy of itself inside a face-shaped
//! (or region-shaped) soft mask; the mask gives the alignment target. A
//! donor blend (after Li et al., "Face X-ray for More General Face Forgery
//! Detection", CVPR 2020) takes the copy from another real face instead,
//! warped onto this face's landmarks and matched to its colour under the
//! mask — a composite of two people, as CIPLAB's edits are.

use image::{Rgb, RgbImage, imageops};
use rand::Rng;

use crate::face::align::{Affine, apply, invert, similarity, warp};
use crate::face::regions::{REGIONS, Region, region_masks};

/// How strong each augmentation is and how often it is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentOptions {
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Probability of colour jitter (brightness, contrast, saturation ±20 %).
    pub color: f64,
    /// Probability of JPEG re-compression (quality 40–95).
    pub jpeg: f64,
    /// Probability of a Gaussian blur (σ 0.4–1.4 px).
    pub blur: f64,
    /// Probability of downscaling (to 35–80 %) and upscaling back.
    pub downscale: f64,
    /// Probability of a random black border (0–25 % per side).
    pub border: f64,
    /// Probability of a geometric jitter of the aligned face before
    /// everything else (scale ±8 %, rotation ±8°, shift ±8 px: see
    /// [`geometric_jitter`]); 0 (off) by default.
    pub jitter: f64,
    /// Probability of a face cutout: one of the eyes, the nose or the
    /// mouth filled with its mean colour before the other augmentations
    /// (never the only edited region of a fake; see [`fill_region`]);
    /// 0 (off) by default.
    pub cutout: f64,
}

impl Default for AugmentOptions {
    fn default() -> Self {
        Self {
            flip: 0.5,
            color: 0.5,
            jpeg: 0.3,
            blur: 0.15,
            downscale: 0.25,
            border: 0.3,
            jitter: 0.0,
            cutout: 0.0,
        }
    }
}

impl AugmentOptions {
    /// No augmentation (validation).
    #[must_use]
    pub fn none() -> Self {
        Self {
            flip: 0.0,
            color: 0.0,
            jpeg: 0.0,
            blur: 0.0,
            downscale: 0.0,
            border: 0.0,
            jitter: 0.0,
            cutout: 0.0,
        }
    }

    /// These options with the probabilities of the degrading
    /// augmentations — JPEG re-compression, blur, downscaling — times
    /// `scale` (each capped at 1; 0 turns them off), the rest unchanged.
    #[must_use]
    pub fn with_degradations(mut self, scale: f64) -> Self {
        for p in [&mut self.jpeg, &mut self.blur, &mut self.downscale] {
            *p = (*p * scale).clamp(0.0, 1.0);
        }
        self
    }
}

/// Mirrors 5 landmarks of a `size`-wide image: x ↦ size − 1 − x, and the
/// left/right pairs (eyes, mouth corners) swap places.
#[must_use]
pub fn mirror_landmarks(l: &[[f32; 2]; 5], size: f32) -> [[f32; 2]; 5] {
    let m = |p: [f32; 2]| [size - 1.0 - p[0], p[1]];
    [m(l[1]), m(l[0]), m(l[2]), m(l[4]), m(l[3])]
}

/// A random similarity transform of an aligned face about its centre —
/// scale × 0.92–1.08, rotation ±8°, shift ±8 px (half a patch) — with its
/// landmarks moved alike, so that every target computed from them after
/// (region masks, CIPLAB codes, self-blend masks) follows the face. What
/// comes into view at the edges is black, as the black-border
/// augmentation's margins. Against learning training faces by heart: the
/// alignment puts every face at the same place to the pixel.
#[must_use]
pub fn geometric_jitter<R: Rng>(
    img: &RgbImage,
    landmarks: &[[f32; 2]; 5],
    rng: &mut R,
) -> (RgbImage, [[f32; 2]; 5]) {
    let scale = rng.random_range(0.92..1.08_f32);
    let angle = rng.random_range(-8.0..8.0_f32).to_radians();
    let (dx, dy) = (
        rng.random_range(-8.0..8.0_f32),
        rng.random_range(-8.0..8.0_f32),
    );
    let (w, h) = img.dimensions();
    #[allow(clippy::cast_precision_loss)]
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = angle.sin_cos();
    let (a, b) = (scale * cos, scale * sin);
    // face → jittered: p' = s·R·(p − c) + c + d
    let forward: Affine = [
        [a, -b, cx + dx - a * cx + b * cy],
        [b, a, cy + dy - b * cx - a * cy],
    ];
    let Some(back) = invert(&forward) else {
        return (img.clone(), *landmarks);
    };
    (warp(img, &back, w), landmarks.map(|p| apply(&forward, p)))
}

/// Brightness, contrast and saturation factors applied in one pass.
pub fn color_jitter(img: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32) {
    #[allow(clippy::cast_precision_loss)]
    let mean = {
        let n = (img.width() * img.height()).max(1) as f32;
        img.pixels()
            .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
            .sum::<f32>()
            / n
    };
    for p in img.pixels_mut() {
        let c = p.0.map(|v| f32::from(v) * brightness);
        let gray = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let out = c.map(|v| {
            let v = gray + (v - gray) * saturation;
            let v = mean * brightness + (v - mean * brightness) * contrast;
            v.round().clamp(0.0, 255.0) as u8
        });
        p.0 = out;
    }
}

/// Re-encodes as JPEG at `quality` and decodes again (unchanged when
/// encoding fails, which it does not for RGB8).
#[must_use]
pub fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
    let mut bytes = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    if img.write_with_encoder(enc).is_err() {
        return img.clone();
    }
    match image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg) {
        Ok(d) => d.to_rgb8(),
        Err(_) => img.clone(),
    }
}

/// Downscales by `factor` (bilinear) and back to the original size.
#[must_use]
pub fn downscale(img: &RgbImage, factor: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let (sw, sh) = (
        ((w as f32 * factor).round() as u32).max(8),
        ((h as f32 * factor).round() as u32).max(8),
    );
    let small = imageops::resize(img, sw, sh, imageops::FilterType::Triangle);
    imageops::resize(&small, w, h, imageops::FilterType::Triangle)
}

/// Fills the pixels of `img` where `mask` (one value per pixel, row-major:
/// [`region_masks`] with one cell per pixel) exceeds one half with their
/// mean colour, a hard-edged flat patch; returns how many it filled. The
/// face cutout of `--cutout` (after Das et al., "Towards Solving the
/// `DeepFake` Problem: An Analysis on Improving `DeepFake` Detection using
/// Dynamic Face Augmentation", ICCV Workshops 2021, and the DFDC winner's
/// landmark-based part removal): a model that cannot see one part of a
/// face must find evidence in the others, which is meant against
/// learning training faces by their most telling part. Flat, not black
/// (the black border is its own augmentation) and not noise (fakes'
/// high-frequency energy is a cue; see docs/MODEL.md).
pub fn fill_region(img: &mut RgbImage, mask: &[f32]) -> usize {
    let inside: Vec<bool> = mask.iter().map(|&m| m > 0.5).collect();
    let mut sum = [0u64; 3];
    let mut n = 0u64;
    for (p, &on) in img.pixels().zip(&inside) {
        if on {
            for (s, &v) in sum.iter_mut().zip(&p.0) {
                *s += u64::from(v);
            }
            n += 1;
        }
    }
    if n == 0 {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation)] // a mean of u8 values
    let mean = Rgb(sum.map(|s| ((s + n / 2) / n) as u8));
    for (p, &on) in img.pixels_mut().zip(&inside) {
        if on {
            *p = mean;
        }
    }
    #[allow(clippy::cast_possible_truncation)] // at most the image's pixels
    let filled = n as usize;
    filled
}

/// Blacks out everything outside `[x0, x1) × [y0, y1)`.
pub fn black_border(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) {
    for (x, y, p) in img.enumerate_pixels_mut() {
        if x < x0 || x >= x1 || y < y0 || y >= y1 {
            *p = Rgb([0, 0, 0]);
        }
    }
}

/// Applies the augmentations of `opts` to an aligned face; returns whether
/// it was flipped (the caller mirrors landmarks and left/right targets).
pub fn augment<R: Rng>(img: &mut RgbImage, opts: &AugmentOptions, rng: &mut R) -> bool {
    let flipped = rng.random_bool(opts.flip.clamp(0.0, 1.0));
    if flipped {
        imageops::flip_horizontal_in_place(img);
    }
    if rng.random_bool(opts.color.clamp(0.0, 1.0)) {
        let b = rng.random_range(0.8..1.2);
        let c = rng.random_range(0.8..1.2);
        let s = rng.random_range(0.8..1.2);
        color_jitter(img, b, c, s);
    }
    if rng.random_bool(opts.downscale.clamp(0.0, 1.0)) {
        *img = downscale(img, rng.random_range(0.35..0.8));
    }
    if rng.random_bool(opts.blur.clamp(0.0, 1.0)) {
        *img = imageops::blur(img, rng.random_range(0.4..1.4));
    }
    if rng.random_bool(opts.jpeg.clamp(0.0, 1.0)) {
        *img = jpeg(img, rng.random_range(40..=95));
    }
    if rng.random_bool(opts.border.clamp(0.0, 1.0)) {
        let (w, h) = img.dimensions();
        let m = w / 4;
        let x0 = rng.random_range(0..=m);
        let y0 = rng.random_range(0..=m);
        let x1 = w - rng.random_range(0..=m);
        let y1 = h - rng.random_range(0..=m);
        black_border(img, x0, y0, x1, y1);
    }
    flipped
}

/// What a self-blended fake was blended over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlendKind {
    /// The whole inner face (an ellipse through the landmarks).
    Face,
    /// One region (eyes, nose or mouth), like a local edit.
    Region(Region),
}

/// A self-blended fake: the image and its soft blending mask (one value in
/// [0, 1] per pixel, row-major).
#[derive(Debug, Clone)]
pub struct SelfBlend {
    /// The blended face.
    pub image: RgbImage,
    /// The blending mask, `width × height`, row-major.
    pub mask: Vec<f32>,
    /// Where it was blended.
    pub kind: BlendKind,
}

/// Blends `img` (an aligned face with landmarks `landmarks`) with a
/// transformed copy of itself — or, with `donor` (another aligned face and
/// its landmarks), of the donor warped onto `landmarks` by the similarity
/// between the two landmark sets: colour shift, slight scale and shift,
/// blur or sharpening, inside a soft mask over the face or over one region.
/// A donor's colour is then matched to `img`'s under the mask (the mean of
/// each channel, times the colour shift drawn for the copy), so that the
/// blend differs by a skin-tone step no larger than a self-blend's.
/// Without a donor the random numbers drawn are the same as before donors
/// existed.
#[must_use]
#[allow(clippy::many_single_char_names, clippy::too_many_lines)] // w, h, t (transform), cx, cy
pub fn self_blend<R: Rng>(
    img: &RgbImage,
    landmarks: &[[f32; 2]; 5],
    donor: Option<(&RgbImage, &[[f32; 2]; 5])>,
    rng: &mut R,
) -> SelfBlend {
    let (w, h) = img.dimensions();
    // The source: a transformed copy (of the donor, moved onto this face).
    let donor_src = donor.and_then(|(d, dl)| {
        let to_donor = similarity(landmarks, dl)?;
        Some(warp(d, &to_donor, w))
    });
    let donated = donor_src.is_some();
    let mut src = donor_src.unwrap_or_else(|| img.clone());
    let gains = [
        rng.random_range(0.9..1.1_f32),
        rng.random_range(0.9..1.1_f32),
        rng.random_range(0.9..1.1_f32),
    ];
    let bright = rng.random_range(0.9..1.1_f32);
    for p in src.pixels_mut() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let out = [0, 1, 2].map(|c| {
            (f32::from(p[c]) * gains[c] * bright)
                .round()
                .clamp(0.0, 255.0) as u8
        });
        p.0 = out;
    }
    let scale = rng.random_range(0.96..1.04_f32);
    let (dx, dy) = (
        rng.random_range(-3.0..3.0_f32),
        rng.random_range(-3.0..3.0_f32),
    );
    #[allow(clippy::cast_precision_loss)]
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    // aligned → source: x' = (x − c)/s + c + d
    let t: Affine = [
        [1.0 / scale, 0.0, cx - cx / scale + dx],
        [0.0, 1.0 / scale, cy - cy / scale + dy],
    ];
    src = warp(&src, &t, w);
    match rng.random_range(0..3) {
        0 => src = imageops::blur(&src, rng.random_range(0.5..1.5)),
        1 => src = imageops::unsharpen(&src, rng.random_range(0.5..1.5), 2),
        _ => {}
    }
    if rng.random_bool(0.3) {
        src = jpeg(&src, rng.random_range(50..=90));
    }

    // The mask.
    let kind = if rng.random_bool(0.5) {
        BlendKind::Face
    } else {
        BlendKind::Region(
            [
                Region::LeftEye,
                Region::RightEye,
                Region::Nose,
                Region::Mouth,
            ][rng.random_range(0..4)],
        )
    };
    #[allow(clippy::cast_precision_loss)]
    let mut mask = match kind {
        BlendKind::Face => {
            let eye_dist = ((landmarks[1][0] - landmarks[0][0]).powi(2)
                + (landmarks[1][1] - landmarks[0][1]).powi(2))
            .sqrt()
            .max(4.0);
            let centre = [
                landmarks.iter().map(|p| p[0]).sum::<f32>() / 5.0,
                landmarks.iter().map(|p| p[1]).sum::<f32>() / 5.0 - 0.1 * eye_dist,
            ];
            let rx = eye_dist * rng.random_range(0.95..1.25);
            let ry = eye_dist * rng.random_range(1.25..1.6);
            let mut m = vec![0.0_f32; (w * h) as usize];
            for y in 0..h {
                for x in 0..w {
                    let u = (x as f32 - centre[0]) / rx;
                    let v = (y as f32 - centre[1]) / ry;
                    if u * u + v * v <= 1.0 {
                        m[(y * w + x) as usize] = 1.0;
                    }
                }
            }
            m
        }
        BlendKind::Region(r) => {
            let masks = region_masks(landmarks, w as f32, w as usize);
            let idx = REGIONS.iter().position(|q| *q == r).unwrap_or(0);
            masks.get(idx).map_or_else(
                || vec![0.0; (w * h) as usize],
                |m| m.iter().map(|&v| if v > 0.3 { 1.0 } else { 0.0 }).collect(),
            )
        }
    };
    // Soften the edge.
    let sigma = rng.random_range(2.0..6.0_f32);
    mask = blur_mask(&mask, w, h, sigma);
    if donated {
        match_colour(&mut src, img, &mask, [0, 1, 2].map(|c| gains[c] * bright));
    }
    let ratio = if rng.random_bool(0.5) {
        1.0
    } else {
        rng.random_range(0.5..1.0_f32)
    };
    let mut out = img.clone();
    for ((p, s), &m) in out.pixels_mut().zip(src.pixels()).zip(&mask) {
        let a = m * ratio;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = [0, 1, 2].map(|c| {
            (f32::from(s[c]) * a + f32::from(p[c]) * (1.0 - a))
                .round()
                .clamp(0.0, 255.0) as u8
        });
        p.0 = v;
    }
    for m in &mut mask {
        *m *= ratio;
    }
    SelfBlend {
        image: out,
        mask,
        kind,
    }
}

/// Shifts each channel of `src` so that its mean under `mask` (weights in
/// [0, 1]) equals `target`'s times `gain`.
fn match_colour(src: &mut RgbImage, target: &RgbImage, mask: &[f32], gain: [f32; 3]) {
    let (mut from, mut to, mut weight) = ([0.0_f64; 3], [0.0_f64; 3], 0.0_f64);
    for ((s, t), &m) in src.pixels().zip(target.pixels()).zip(mask) {
        let m = f64::from(m);
        for c in 0..3 {
            from[c] += m * f64::from(s[c]);
            to[c] += m * f64::from(t[c]);
        }
        weight += m;
    }
    if weight < 1e-6 {
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let shift = [0, 1, 2].map(|c| ((to[c] * f64::from(gain[c]) - from[c]) / weight) as f32);
    for p in src.pixels_mut() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = [0, 1, 2].map(|c| (f32::from(p[c]) + shift[c]).round().clamp(0.0, 255.0) as u8);
        p.0 = v;
    }
}

/// Gaussian blur of a single-channel mask (through the image crate's blur
/// on a 16-bit luma buffer).
fn blur_mask(mask: &[f32], w: u32, h: u32, sigma: f32) -> Vec<f32> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let buf: Vec<u16> = mask
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let Some(img) = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(w, h, buf) else {
        return mask.to_vec();
    };
    let b = imageops::blur(&img, sigma);
    b.into_raw()
        .into_iter()
        .map(|v| f32::from(v) / 65535.0)
        .collect()
}

/// Averages a full-resolution mask over a `grid × grid` patch grid.
#[must_use]
pub fn mask_to_grid(mask: &[f32], w: u32, h: u32, grid: usize) -> Vec<f32> {
    let mut sums = vec![0.0_f32; grid * grid];
    let mut counts = vec![0_u32; grid * grid];
    for y in 0..h {
        for x in 0..w {
            let gy = (y as usize * grid) / h as usize;
            let gx = (x as usize * grid) / w as usize;
            sums[gy * grid + gx] += mask[(y * w + x) as usize];
            counts[gy * grid + gx] += 1;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    sums.iter()
        .zip(&counts)
        .map(|(&s, &c)| if c == 0 { 0.0 } else { s / c as f32 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::template::TEMPLATE_LANDMARKS;
    use rand::SeedableRng;

    fn face() -> RgbImage {
        RgbImage::from_fn(224, 224, |x, y| {
            #[allow(clippy::cast_possible_truncation)]
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    /// The cutout fills exactly the pixels its mask covers by more than
    /// one half, with their mean colour, and leaves the rest; an empty
    /// mask changes nothing.
    #[test]
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)] // 224² pixels
    fn fill_region_flattens_the_masked_pixels_only() {
        let img = face();
        let masks = region_masks(&TEMPLATE_LANDMARKS, 224.0, 224);
        let nose = &masks[2];
        let mut out = img.clone();
        let n = fill_region(&mut out, nose);
        let inside: Vec<usize> = (0..nose.len()).filter(|&i| nose[i] > 0.5).collect();
        assert_eq!(n, inside.len());
        assert!(n > 200, "the nose covers {n} pixels");
        let px = |im: &RgbImage, i: usize| *im.get_pixel((i % 224) as u32, (i / 224) as u32);
        let first = px(&out, inside[0]);
        for &i in &inside {
            assert_eq!(px(&out, i), first);
        }
        let mean_x = inside.iter().map(|&i| (i % 224) as f64).sum::<f64>() / n as f64;
        assert!(
            (f64::from(first.0[0]) - mean_x).abs() <= 1.0,
            "{first:?} {mean_x}"
        );
        for (i, &v) in nose.iter().enumerate() {
            if v <= 0.5 {
                assert_eq!(px(&out, i), px(&img, i));
            }
        }
        let mut same = img.clone();
        assert_eq!(fill_region(&mut same, &vec![0.0; 224 * 224]), 0);
        assert_eq!(same, img);
    }

    #[test]
    fn mirroring_twice_is_identity_and_swaps_eyes() {
        let m = mirror_landmarks(&TEMPLATE_LANDMARKS, 224.0);
        assert!(m[0][0] < m[1][0], "left eye stays on the left");
        let back = mirror_landmarks(&m, 224.0);
        for (a, b) in back.iter().zip(&TEMPLATE_LANDMARKS) {
            assert!((a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4);
        }
    }

    #[test]
    #[allow(clippy::float_cmp)] // 0.25 × 3 and the cap at 1 are exact
    fn degradations_scale_only_jpeg_blur_and_downscaling() {
        let d = AugmentOptions::default();
        assert_eq!(d.with_degradations(1.0), d);
        let off = d.with_degradations(0.0);
        assert_eq!((off.jpeg, off.blur, off.downscale), (0.0, 0.0, 0.0));
        assert_eq!(
            (off.flip, off.color, off.border, off.jitter),
            (d.flip, d.color, d.border, d.jitter)
        );
        let more = d.with_degradations(3.0);
        assert!((more.jpeg - 0.9).abs() < 1e-12);
        assert_eq!(more.downscale, 0.75);
        assert_eq!(d.with_degradations(5.0).jpeg, 1.0);
        // Off, and nothing else on: a face comes back as it was, whatever
        // the draw; on, the same draws change it.
        let only = AugmentOptions {
            jpeg: 1.0,
            blur: 1.0,
            downscale: 1.0,
            ..AugmentOptions::none()
        };
        let img = face();
        for seed in 0..8 {
            let mut a = img.clone();
            augment(
                &mut a,
                &only.with_degradations(0.0),
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            );
            assert_eq!(a, img);
            let mut b = img.clone();
            augment(
                &mut b,
                &only,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            );
            assert_ne!(b, img);
        }
    }

    #[test]
    fn augmentation_is_seeded() {
        let opts = AugmentOptions {
            flip: 0.5,
            color: 1.0,
            jpeg: 1.0,
            blur: 1.0,
            downscale: 1.0,
            border: 1.0,
            jitter: 0.0,
            cutout: 0.0,
        };
        let run = |seed| {
            let mut img = face();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            augment(&mut img, &opts, &mut rng);
            img
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert_ne!(run(3), face());
    }

    /// A bright dot on each landmark lands, after the jitter, where the
    /// jittered landmarks say; the transforms vary with the seed.
    #[test]
    fn geometric_jitter_moves_landmarks_with_the_face() {
        let marks = TEMPLATE_LANDMARKS.map(|p| p.map(f32::round));
        let mut img = RgbImage::new(224, 224);
        for p in marks {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (x, y) = (p[0] as u32, p[1] as u32);
            for (dx, dy) in [0, 1, 2].into_iter().flat_map(|a| [(a, 0), (a, 1), (a, 2)]) {
                img.put_pixel(x + dx - 1, y + dy - 1, Rgb([255, 255, 255]));
            }
        }
        let mut moved = Vec::new();
        for seed in 0..8 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (out, lm) = geometric_jitter(&img, &marks, &mut rng);
            assert_eq!(out.dimensions(), (224, 224));
            for (p, q) in lm.iter().zip(&marks) {
                // Within the ranges: at most 8 % · 130 px + 8° · 130 px + 11 px.
                assert!((p[0] - q[0]).hypot(p[1] - q[1]) < 40.0, "{p:?} from {q:?}");
                // The dot's centroid (of the 9 × 9 window around the
                // jittered landmark) is on it.
                #[allow(clippy::cast_possible_truncation)]
                let (cx, cy) = (p[0].round() as i64, p[1].round() as i64);
                let (mut sum, mut sx, mut sy) = (0.0_f32, 0.0_f32, 0.0_f32);
                for y in cy - 4..=cy + 4 {
                    for x in cx - 4..=cx + 4 {
                        #[allow(
                            clippy::cast_possible_truncation,
                            clippy::cast_sign_loss,
                            clippy::cast_precision_loss
                        )]
                        {
                            let v = f32::from(out.get_pixel(x as u32, y as u32)[0]);
                            sum += v;
                            sx += v * x as f32;
                            sy += v * y as f32;
                        }
                    }
                }
                assert!(sum > 1000.0, "no dot near {p:?} (seed {seed})");
                let d = (sx / sum - p[0]).hypot(sy / sum - p[1]);
                assert!(d < 0.5, "dot {d} px from {p:?} (seed {seed})");
            }
            moved.push(lm[0]);
        }
        assert!(
            moved
                .windows(2)
                .all(|w| (w[0][0] - w[1][0]).abs() + (w[0][1] - w[1][1]).abs() > 1e-3),
            "{moved:?}"
        );
    }

    /// A donor blend shows the donor's texture inside the mask, in this
    /// face's colour (up to the drawn shift), and leaves the rest alone.
    #[test]
    fn donor_blend_takes_the_donor_texture_in_this_face_colour() {
        let target = RgbImage::from_pixel(224, 224, Rgb([100, 120, 140]));
        // Stripes of 100 and 250 (mean 175), far from the target's colour.
        let donor = RgbImage::from_fn(224, 224, |x, _| {
            if (x / 4) % 2 == 0 {
                Rgb([100, 100, 100])
            } else {
                Rgb([250, 250, 250])
            }
        });
        for seed in 0..8 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let donated = Some((&donor, &TEMPLATE_LANDMARKS));
            let sb = self_blend(&target, &TEMPLATE_LANDMARKS, donated, &mut rng);
            let (mut lo, mut hi, mut sum, mut n) = (255u8, 0u8, 0.0_f64, 0.0_f64);
            for (p, &m) in sb.image.pixels().zip(&sb.mask) {
                if m < 1e-4 {
                    assert_eq!(p.0, [100, 120, 140], "seed {seed}");
                }
                // The mask is the blend's weight: 0.45 or more of the copy.
                if m > 0.45 {
                    lo = lo.min(p[0]);
                    hi = hi.max(p[0]);
                    sum += f64::from(p[0]);
                    n += 1.0;
                }
            }
            assert!(n > 20.0, "seed {seed}: {n}");
            assert!(hi - lo > 40, "no stripes inside (seed {seed}): {lo}..{hi}");
            // Matched: 100 times the drawn shift (0.81–1.21); unmatched the
            // inside would average 100 + 0.45 × 75 or more.
            let mean = sum / n;
            assert!((75.0..128.0).contains(&mean), "seed {seed}: mean {mean}");
            // Without a donor the same draw keeps the uniform face uniform.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let own = self_blend(&target, &TEMPLATE_LANDMARKS, None, &mut rng);
            assert_eq!(own.kind, sb.kind);
            assert_eq!(own.mask, sb.mask);
        }
    }

    #[test]
    fn self_blend_changes_only_inside_the_mask() {
        let img = face();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..6 {
            let sb = self_blend(&img, &TEMPLATE_LANDMARKS, None, &mut rng);
            assert_eq!(sb.mask.len(), 224 * 224);
            let inside = sb.mask.iter().filter(|&&m| m > 0.5).count();
            assert!(inside > 50, "{:?}: {inside}", sb.kind);
            for ((a, b), &m) in sb.image.pixels().zip(img.pixels()).zip(&sb.mask) {
                if m < 1e-4 {
                    assert_eq!(a, b);
                }
            }
            let grid = mask_to_grid(&sb.mask, 224, 224, 14);
            assert_eq!(grid.len(), 196);
            assert!(grid.iter().any(|&v| v > 0.2));
        }
    }

    #[test]
    fn black_border_keeps_the_window() {
        let mut img = face();
        black_border(&mut img, 10, 20, 200, 210);
        assert_eq!(img.get_pixel(5, 100).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(100, 100).0, face().get_pixel(100, 100).0);
    }
}
