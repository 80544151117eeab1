//! Pictures for the Inspect view, as plain functions on pixels: the colour
//! map of the alignment heatmaps, grid maps upsampled over the aligned face,
//! heatmap and region overlays composited onto it, thumbnails, PNG bytes.
//! Nothing here draws; the view turns the results into egui textures.

use egui::{Color32, ColorImage};
use image::RgbImage;

/// Stops of the heatmap colour map (matplotlib's "inferno", sampled at
/// 0, ¼, ½, ¾, 1): dark purple for low, yellow-white for high; its
/// lightness rises monotonically, so it reads in grey too.
const INFERNO: [[u8; 3]; 5] = [
    [0, 0, 4],
    [87, 16, 110],
    [188, 55, 84],
    [249, 142, 9],
    [252, 255, 164],
];

/// One colour per facial region, in `face::REGIONS` order (Tableau 10).
pub const REGION_COLORS: [Color32; 9] = [
    Color32::from_rgb(31, 119, 180),
    Color32::from_rgb(255, 127, 14),
    Color32::from_rgb(44, 160, 44),
    Color32::from_rgb(214, 39, 40),
    Color32::from_rgb(148, 103, 189),
    Color32::from_rgb(140, 86, 75),
    Color32::from_rgb(227, 119, 194),
    Color32::from_rgb(188, 189, 34),
    Color32::from_rgb(23, 190, 207),
];

/// The colour of region `r` (colours repeat past the ninth).
#[must_use]
pub fn region_color(r: usize) -> Color32 {
    REGION_COLORS[r % REGION_COLORS.len()]
}

fn lerp_u8(a: u8, b: u8, k: f32) -> u8 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // in [0, 255]
    let v = (f32::from(a) + (f32::from(b) - f32::from(a)) * k)
        .round()
        .clamp(0.0, 255.0) as u8;
    v
}

/// The heatmap colour of `t` in `[0, 1]` (clamped; NaN counts as 0).
#[must_use]
#[allow(clippy::many_single_char_names)]
pub fn colormap(t: f32) -> Color32 {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    #[allow(clippy::cast_precision_loss)]
    let x = t * (INFERNO.len() - 1) as f32;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // x in [0, 4]
    let i = (x.floor() as usize).min(INFERNO.len() - 2);
    #[allow(clippy::cast_precision_loss)]
    let k = x - i as f32;
    let (a, b) = (INFERNO[i], INFERNO[i + 1]);
    Color32::from_rgb(
        lerp_u8(a[0], b[0], k),
        lerp_u8(a[1], b[1], k),
        lerp_u8(a[2], b[2], k),
    )
}

/// The value range a heatmap is coloured over: the map's own minimum and
/// maximum (`stretch`), or the fixed `[0, 1]` of a probability.
#[must_use]
pub fn map_range(values: &[f32], stretch: bool) -> (f32, f32) {
    if !stretch {
        return (0.0, 1.0);
    }
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else if lo.is_finite() {
        (lo, lo + f32::EPSILON.max(lo.abs() * 1e-6))
    } else {
        (0.0, 1.0)
    }
}

/// A `rows × cols` grid map (row-major) upsampled to `width × height`
/// pixels covering the same square: bilinear between cell centres, the
/// edge cells' values out to the border. Wrong sizes give zeros.
#[must_use]
pub fn upsample(values: &[f32], grid: [usize; 2], width: usize, height: usize) -> Vec<f32> {
    let [rows, cols] = grid;
    let mut out = vec![0.0_f32; width * height];
    if rows == 0 || cols == 0 || values.len() != rows * cols || width == 0 || height == 0 {
        return out;
    }
    #[allow(clippy::cast_precision_loss)] // small sizes
    let (cw, ch) = (width as f32 / cols as f32, height as f32 / rows as f32);
    #[allow(clippy::cast_precision_loss)]
    let (last_col, last_row) = ((cols - 1) as f32, (rows - 1) as f32);
    for y in 0..height {
        #[allow(clippy::cast_precision_loss)]
        let cv = ((y as f32 + 0.5) / ch - 0.5).clamp(0.0, last_row);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let r0 = cv.floor() as usize;
        let r1 = (r0 + 1).min(rows - 1);
        #[allow(clippy::cast_precision_loss)]
        let fy = cv - r0 as f32;
        for x in 0..width {
            #[allow(clippy::cast_precision_loss)]
            let cu = ((x as f32 + 0.5) / cw - 0.5).clamp(0.0, last_col);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let c0 = cu.floor() as usize;
            let c1 = (c0 + 1).min(cols - 1);
            #[allow(clippy::cast_precision_loss)]
            let fx = cu - c0 as f32;
            let top = values[r0 * cols + c0] * (1.0 - fx) + values[r0 * cols + c1] * fx;
            let bottom = values[r1 * cols + c0] * (1.0 - fx) + values[r1 * cols + c1] * fx;
            out[y * width + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// `base` blended towards `over` by `alpha` in `[0, 1]`.
#[must_use]
pub fn blend(base: Color32, over: Color32, alpha: f32) -> Color32 {
    let a = if alpha.is_nan() {
        0.0
    } else {
        alpha.clamp(0.0, 1.0)
    };
    Color32::from_rgb(
        lerp_u8(base.r(), over.r(), a),
        lerp_u8(base.g(), over.g(), a),
        lerp_u8(base.b(), over.b(), a),
    )
}

/// An RGB image as an egui image (opaque).
#[must_use]
pub fn to_color_image(img: &RgbImage) -> ColorImage {
    let size = [img.width() as usize, img.height() as usize];
    ColorImage::from_rgb(size, img.as_raw())
}

/// The face with a heatmap over it: each pixel blended by `opacity`
/// towards the colour of the map's value, scaled from `range` to `[0, 1]`.
#[must_use]
pub fn heatmap_overlay(
    face: &RgbImage,
    map: &[f32],
    grid: [usize; 2],
    range: (f32, f32),
    opacity: f32,
) -> ColorImage {
    let (w, h) = (face.width() as usize, face.height() as usize);
    let values = upsample(map, grid, w, h);
    let span = (range.1 - range.0).max(f32::MIN_POSITIVE);
    let pixels = face
        .pixels()
        .zip(values)
        .map(|(p, v)| {
            let base = Color32::from_rgb(p[0], p[1], p[2]);
            blend(base, colormap((v - range.0) / span), opacity)
        })
        .collect();
    ColorImage::new([w, h], pixels)
}

/// The face with the region masks over it: each pixel takes the
/// mask-weighted mean of the region colours, blended by `opacity` times
/// the strongest mask there (so the face shows through outside the
/// regions).
#[must_use]
pub fn region_overlay(
    face: &RgbImage,
    masks: &[Vec<f32>],
    grid: [usize; 2],
    opacity: f32,
) -> ColorImage {
    let (w, h) = (face.width() as usize, face.height() as usize);
    let up: Vec<Vec<f32>> = masks.iter().map(|m| upsample(m, grid, w, h)).collect();
    let pixels = face
        .pixels()
        .enumerate()
        .map(|(i, p)| {
            let base = Color32::from_rgb(p[0], p[1], p[2]);
            let (mut acc, mut total, mut strongest) = ([0.0_f32; 3], 0.0_f32, 0.0_f32);
            for (r, m) in up.iter().enumerate() {
                let v = m[i].max(0.0);
                let c = region_color(r);
                acc[0] += v * f32::from(c.r());
                acc[1] += v * f32::from(c.g());
                acc[2] += v * f32::from(c.b());
                total += v;
                strongest = strongest.max(v);
            }
            if total <= 0.0 {
                return base;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let mean = acc.map(|a| (a / total).round().clamp(0.0, 255.0) as u8);
            blend(
                base,
                Color32::from_rgb(mean[0], mean[1], mean[2]),
                opacity * strongest.min(1.0),
            )
        })
        .collect();
    ColorImage::new([w, h], pixels)
}

/// Draws small filled squares (side `2·radius + 1`) at `points` (pixel
/// coordinates, may lie outside).
pub fn mark_points(img: &mut ColorImage, points: &[[f32; 2]], radius: i64, color: Color32) {
    let [w, h] = img.size;
    let (Ok(w), Ok(h)) = (i64::try_from(w), i64::try_from(h)) else {
        return;
    };
    for p in points {
        if !(p[0].is_finite() && p[1].is_finite()) {
            continue;
        }
        #[allow(clippy::cast_possible_truncation)]
        let (cx, cy) = (p[0].round() as i64, p[1].round() as i64);
        for y in (cy - radius).max(0)..=(cy + radius).min(h - 1) {
            for x in (cx - radius).max(0)..=(cx + radius).min(w - 1) {
                #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
                let k = (y * w + x) as usize;
                img.pixels[k] = color;
            }
        }
    }
}

/// A horizontal strip of the colour map, `width × height` pixels, low on
/// the left (the heatmap's legend).
#[must_use]
pub fn legend_strip(width: usize, height: usize) -> ColorImage {
    let row: Vec<Color32> = (0..width)
        .map(|x| {
            #[allow(clippy::cast_precision_loss)]
            let t = x as f32 / (width.max(2) - 1) as f32;
            colormap(t)
        })
        .collect();
    let pixels = (0..height).flat_map(|_| row.iter().copied()).collect();
    ColorImage::new([width, height], pixels)
}

/// An image shrunk (triangle filter) so that neither side exceeds
/// `max_side`; unchanged when it is already small enough.
#[must_use]
pub fn shrink(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w <= max_side && h <= max_side {
        return img.clone();
    }
    let s = f64::from(max_side) / f64::from(w.max(h));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (nw, nh) = (
        ((f64::from(w) * s).round() as u32).max(1),
        ((f64::from(h) * s).round() as u32).max(1),
    );
    image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle)
}

/// An egui image as PNG bytes.
///
/// # Errors
/// A message when the image is too large or the encoder fails.
pub fn png_bytes(img: &ColorImage) -> Result<Vec<u8>, String> {
    let [w, h] = img.size;
    let (Ok(w), Ok(h)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err("image too large".into());
    };
    let rgba: Vec<u8> = img.pixels.iter().flat_map(Color32::to_array).collect();
    let buffer = image::RgbaImage::from_raw(w, h, rgba).ok_or("image has the wrong size")?;
    let mut cursor = std::io::Cursor::new(Vec::new());
    buffer
        .write_to(&mut cursor, image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(cursor.into_inner())
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_runs_dark_to_light_and_clamps() {
        assert_eq!(colormap(0.0), Color32::from_rgb(0, 0, 4));
        assert_eq!(colormap(1.0), Color32::from_rgb(252, 255, 164));
        assert_eq!(colormap(0.5), Color32::from_rgb(188, 55, 84));
        assert_eq!(colormap(-3.0), colormap(0.0));
        assert_eq!(colormap(7.0), colormap(1.0));
        assert_eq!(colormap(f32::NAN), colormap(0.0));
        let lum = |c: Color32| {
            0.2126 * f32::from(c.r()) + 0.7152 * f32::from(c.g()) + 0.0722 * f32::from(c.b())
        };
        let mut prev = -1.0;
        for k in 0..=100 {
            let l = lum(colormap(k as f32 / 100.0));
            assert!(l >= prev, "lightness falls at {k}");
            prev = l;
        }
    }

    #[test]
    fn upsampling_keeps_constants_and_hits_cell_centres() {
        let up = upsample(&[0.3; 4], [2, 2], 8, 8);
        assert!(up.iter().all(|&v| (v - 0.3).abs() < 1e-6));
        // 2×2 grid over 4×4 pixels: cell centres fall between pixels 0/1
        // and 2/3; the corner pixels take their cell's value.
        let up = upsample(&[0.0, 1.0, 2.0, 3.0], [2, 2], 4, 4);
        assert_eq!(up[0], 0.0);
        assert_eq!(up[3], 1.0);
        assert_eq!(up[12], 2.0);
        assert_eq!(up[15], 3.0);
        // Halfway between left and right cells in the middle columns.
        assert!((up[1] - 0.25).abs() < 1e-6 && (up[2] - 0.75).abs() < 1e-6);
        // Wrong sizes: zeros, no panic.
        assert!(upsample(&[1.0; 3], [2, 2], 4, 4).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn heatmap_overlay_blends_by_opacity() {
        let face = RgbImage::from_pixel(4, 4, image::Rgb([10, 20, 30]));
        let map = [1.0_f32; 4];
        let none = heatmap_overlay(&face, &map, [2, 2], (0.0, 1.0), 0.0);
        assert!(
            none.pixels
                .iter()
                .all(|&c| c == Color32::from_rgb(10, 20, 30))
        );
        let full = heatmap_overlay(&face, &map, [2, 2], (0.0, 1.0), 1.0);
        assert!(full.pixels.iter().all(|&c| c == colormap(1.0)));
        let half = heatmap_overlay(&face, &[0.0; 4], [2, 2], (0.0, 1.0), 0.5);
        assert_eq!(half.pixels[0], Color32::from_rgb(5, 10, 17));
        assert_eq!(half.size, [4, 4]);
    }

    #[test]
    fn ranges_stretch_to_the_map_or_stay_fixed() {
        assert_eq!(map_range(&[0.2, 0.4, f32::NAN], true), (0.2, 0.4));
        assert_eq!(map_range(&[0.2, 0.4], false), (0.0, 1.0));
        let (lo, hi) = map_range(&[0.5, 0.5], true);
        assert!(lo == 0.5 && hi > lo);
        assert_eq!(map_range(&[], true), (0.0, 1.0));
    }

    #[test]
    fn region_overlay_colours_only_inside_masks() {
        let face = RgbImage::from_pixel(2, 2, image::Rgb([0, 0, 0]));
        // Region 0 fills the top row of a 2×2 grid, region 1 is empty.
        let masks = vec![vec![1.0, 1.0, 0.0, 0.0], vec![0.0; 4]];
        let img = region_overlay(&face, &masks, [2, 2], 1.0);
        assert_eq!(img.pixels[0], region_color(0));
        assert_eq!(img.pixels[3], Color32::BLACK);
    }

    #[test]
    fn points_are_marked_and_clipped() {
        let mut img = ColorImage::filled([5, 5], Color32::BLACK);
        mark_points(
            &mut img,
            &[[0.0, 0.0], [f32::NAN, 1.0], [99.0, 2.0]],
            1,
            Color32::RED,
        );
        assert_eq!(img.pixels[0], Color32::RED);
        assert_eq!(img.pixels[6], Color32::RED);
        assert_eq!(img.pixels[12], Color32::BLACK);
    }

    #[test]
    fn shrinking_and_png() {
        let img = RgbImage::from_pixel(400, 200, image::Rgb([1, 2, 3]));
        assert_eq!(shrink(&img, 100).dimensions(), (100, 50));
        assert_eq!(shrink(&img, 1000).dimensions(), (400, 200));
        let png = png_bytes(&to_color_image(&shrink(&img, 8))).unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (8, 4));
        assert_eq!(legend_strip(10, 2).size, [10, 2]);
    }
}
