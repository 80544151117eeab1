//! Alignment: a similarity transform (rotation, uniform scale,
//! translation; no reflection or shear) from a face's 5 landmarks to the
//! template of [`super::template`], a bilinear warp to 224×224, and the
//! inverse transform that maps anything drawn on the aligned face (region
//! masks, heatmaps) back onto the original photo.
//!
//! Coordinates: the centre of pixel `(i, j)` is the point `(i, j)`, in the
//! photo and in the aligned face alike. An affine transform `[[a, b, c],
//! [d, e, f]]` maps `(x, y)` to `(a·x + b·y + c, d·x + e·y + f)`.

use image::{Rgb, RgbImage};

use super::template::{ALIGNED_SIZE, TEMPLATE_LANDMARKS};

/// A 2×3 affine transform, row-major (see the module docs).
pub type Affine = [[f32; 3]; 2];

/// Applies an affine transform to a point.
#[must_use]
pub fn apply(t: &Affine, p: [f32; 2]) -> [f32; 2] {
    [
        t[0][0] * p[0] + t[0][1] * p[1] + t[0][2],
        t[1][0] * p[0] + t[1][1] * p[1] + t[1][2],
    ]
}

/// The inverse of an affine transform; `None` when it is singular.
#[must_use]
#[allow(clippy::many_single_char_names)] // the matrix entries a … f
pub fn invert(t: &Affine) -> Option<Affine> {
    let [[a, b, c], [d, e, f]] = t.map(|r| r.map(f64::from));
    let det = a * e - b * d;
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    let out = [[ia, ib, -(ia * c + ib * f)], [id, ie, -(id * c + ie * f)]];
    #[allow(clippy::cast_possible_truncation)]
    Some(out.map(|r| r.map(|v| v as f32)))
}

/// The least-squares similarity transform mapping `src` onto `dst`
/// (closed form: with both point sets centred, `a = Σ p·q / Σ |p|²`,
/// `b = Σ p×q / Σ |p|²`, the transform is `[[a, −b], [b, a]]` plus the
/// translation between the centroids). `None` when the source points
/// coincide (no scale can be estimated) or are not finite.
#[must_use]
pub fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> Option<Affine> {
    let n = 5.0_f64;
    let mean = |pts: &[[f32; 2]; 5]| {
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(sx, sy), p| {
            (sx + f64::from(p[0]), sy + f64::from(p[1]))
        });
        (sx / n, sy / n)
    };
    let (mx, my) = mean(src);
    let (nx, ny) = mean(dst);
    let (mut dot, mut cross, mut norm) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (p, q) in src.iter().zip(dst.iter()) {
        let (px, py) = (f64::from(p[0]) - mx, f64::from(p[1]) - my);
        let (qx, qy) = (f64::from(q[0]) - nx, f64::from(q[1]) - ny);
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
        norm += px * px + py * py;
    }
    if !norm.is_finite() || norm < 1e-9 || !dot.is_finite() || !cross.is_finite() {
        return None;
    }
    let a = dot / norm;
    let b = cross / norm;
    if a.hypot(b) < 1e-9 {
        return None;
    }
    let tx = nx - (a * mx - b * my);
    let ty = ny - (b * mx + a * my);
    #[allow(clippy::cast_possible_truncation)]
    Some([[a, -b, tx], [b, a, ty]].map(|r| r.map(|v| v as f32)))
}

/// A face warped to the template.
#[derive(Debug, Clone)]
pub struct AlignedFace {
    /// The aligned face, [`ALIGNED_SIZE`]² pixels. Parts that fall outside
    /// the photo are black.
    pub image: RgbImage,
    /// Maps aligned-face coordinates to the original photo's.
    pub to_original: Affine,
    /// Maps the original photo's coordinates to the aligned face's.
    pub to_aligned: Affine,
    /// The face's 5 landmarks in the aligned face (close to, but not
    /// exactly, the template's: a similarity cannot fit 5 points exactly).
    pub landmarks_aligned: [[f32; 2]; 5],
}

impl AlignedFace {
    /// Maps a point of the aligned face to the original photo.
    #[must_use]
    pub fn point_to_original(&self, p: [f32; 2]) -> [f32; 2] {
        apply(&self.to_original, p)
    }

    /// The scale from the original photo to the aligned face (aligned
    /// pixels per original pixel).
    #[must_use]
    pub fn scale(&self) -> f32 {
        self.to_aligned[0][0].hypot(self.to_aligned[1][0])
    }
}

/// Samples `img` at `(x, y)` bilinearly; pixels outside the image count as
/// black.
fn bilinear(img: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (img.width(), img.height());
    let x0 = x.floor();
    let y0 = y.floor();
    let (fx, fy) = (x - x0, y - y0);
    let mut out = [0.0_f32; 3];
    #[allow(clippy::cast_possible_truncation)]
    let (x0, y0) = (x0 as i64, y0 as i64);
    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
            let (xi, yi) = (x0 + dx, y0 + dy);
            let wgt = wx * wy;
            if wgt == 0.0 || xi < 0 || yi < 0 || xi >= i64::from(w) || yi >= i64::from(h) {
                continue;
            }
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
            let px = img.get_pixel(xi as u32, yi as u32);
            for (o, &v) in out.iter_mut().zip(px.0.iter()) {
                *o += wgt * f32::from(v);
            }
        }
    }
    out
}

/// Warps `img` with `to_original` (aligned → original) into a
/// `size × size` image, bilinear, black outside the photo.
#[must_use]
pub fn warp(img: &RgbImage, to_original: &Affine, size: u32) -> RgbImage {
    RgbImage::from_fn(size, size, |u, v| {
        #[allow(clippy::cast_precision_loss)]
        let [x, y] = apply(to_original, [u as f32, v as f32]);
        if !(x.is_finite() && y.is_finite()) {
            return Rgb([0, 0, 0]);
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let px = bilinear(img, x, y).map(|c| c.round().clamp(0.0, 255.0) as u8);
        Rgb(px)
    })
}

/// Aligns the face with these landmarks (image coordinates) to the
/// template: the aligned image, both transforms and the landmarks in the
/// aligned face. `None` when the landmarks are degenerate (all in one
/// point, or not finite).
#[must_use]
pub fn align(img: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Option<AlignedFace> {
    let to_aligned = similarity(landmarks, &TEMPLATE_LANDMARKS)?;
    let to_original = invert(&to_aligned)?;
    Some(AlignedFace {
        image: warp(img, &to_original, ALIGNED_SIZE),
        to_original,
        to_aligned,
        landmarks_aligned: landmarks.map(|p| apply(&to_aligned, p)),
    })
}

/// Draws a `grid × grid` map over the aligned face (a region mask, a
/// heatmap; row-major, values as given) onto the original photo: one value
/// per photo pixel (`width × height`, row-major), bilinear between cell
/// centres, 0 outside the aligned square.
#[must_use]
pub fn grid_to_original(
    values: &[f32],
    grid: usize,
    to_aligned: &Affine,
    width: u32,
    height: u32,
) -> Vec<f32> {
    let mut out = vec![0.0_f32; width as usize * height as usize];
    if grid == 0 || values.len() != grid * grid {
        return out;
    }
    #[allow(clippy::cast_precision_loss)]
    let (g, size) = (grid as f32, ALIGNED_SIZE as f32);
    let cell = size / g;
    for y in 0..height {
        for x in 0..width {
            #[allow(clippy::cast_precision_loss)]
            let [u, v] = apply(to_aligned, [x as f32, y as f32]);
            if !(-0.5..size - 0.5).contains(&u) || !(-0.5..size - 0.5).contains(&v) {
                continue;
            }
            // Cell coordinates, cell centres at integers.
            let cu = ((u + 0.5) / cell - 0.5).clamp(0.0, g - 1.0);
            let cv = ((v + 0.5) / cell - 0.5).clamp(0.0, g - 1.0);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (c0, r0) = (cu.floor() as usize, cv.floor() as usize);
            let (c1, r1) = ((c0 + 1).min(grid - 1), (r0 + 1).min(grid - 1));
            #[allow(clippy::cast_precision_loss)]
            let (fu, fv) = (cu - c0 as f32, cv - r0 as f32);
            let at = |r: usize, c: usize| values[r * grid + c];
            let top = at(r0, c0) * (1.0 - fu) + at(r0, c1) * fu;
            let bottom = at(r1, c0) * (1.0 - fu) + at(r1, c1) * fu;
            out[y as usize * width as usize + x as usize] = top * (1.0 - fv) + bottom * fv;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 2], b: [f32; 2], tol: f32) -> bool {
        (a[0] - b[0]).abs() < tol && (a[1] - b[1]).abs() < tol
    }

    #[test]
    fn similarity_recovers_a_known_transform() {
        // Rotate 30°, scale 0.5, translate (10, -4).
        let (s, c) = (
            0.5 * 30f32.to_radians().sin(),
            0.5 * 30f32.to_radians().cos(),
        );
        let t: Affine = [[c, -s, 10.0], [s, c, -4.0]];
        let src = TEMPLATE_LANDMARKS;
        let dst = src.map(|p| apply(&t, p));
        let est = similarity(&src, &dst).unwrap();
        for (r, e) in t.iter().zip(est.iter()) {
            for (a, b) in r.iter().zip(e.iter()) {
                assert!((a - b).abs() < 1e-3, "{t:?} vs {est:?}");
            }
        }
    }

    #[test]
    fn inverse_round_trips() {
        let t: Affine = [[1.3, -0.4, 12.0], [0.4, 1.3, -7.0]];
        let inv = invert(&t).unwrap();
        for p in [[0.0, 0.0], [100.0, 50.0], [-3.0, 220.0]] {
            assert!(close(apply(&inv, apply(&t, p)), p, 1e-3));
        }
        assert!(invert(&[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]).is_none());
    }

    #[test]
    fn degenerate_landmarks_are_refused() {
        assert!(similarity(&[[5.0, 5.0]; 5], &TEMPLATE_LANDMARKS).is_none());
        let mut lm = TEMPLATE_LANDMARKS;
        lm[2][0] = f32::NAN;
        assert!(similarity(&lm, &TEMPLATE_LANDMARKS).is_none());
    }

    #[test]
    fn aligning_the_template_is_the_identity() {
        let img = RgbImage::from_fn(224, 224, |x, y| {
            #[allow(clippy::cast_possible_truncation)]
            Rgb([x as u8, y as u8, 7])
        });
        let a = align(&img, &TEMPLATE_LANDMARKS).unwrap();
        assert_eq!(a.image.dimensions(), (224, 224));
        assert_eq!(a.image, img);
        assert!((a.scale() - 1.0).abs() < 1e-4);
        for (p, q) in a.landmarks_aligned.iter().zip(TEMPLATE_LANDMARKS.iter()) {
            assert!(close(*p, *q, 1e-3));
        }
    }

    #[test]
    fn aligning_a_shifted_scaled_face_maps_landmarks_to_the_template() {
        // A face twice the template's size, moved by (40, 30), in a
        // 600×600 photo: the aligned face samples every other pixel.
        let lm = TEMPLATE_LANDMARKS.map(|[x, y]| [2.0 * x + 40.0, 2.0 * y + 30.0]);
        let img = RgbImage::from_fn(600, 600, |x, y| {
            #[allow(clippy::cast_possible_truncation)]
            Rgb([(x / 3) as u8, (y / 3) as u8, 0])
        });
        let a = align(&img, &lm).unwrap();
        assert!((a.scale() - 0.5).abs() < 1e-4);
        for (p, q) in a.landmarks_aligned.iter().zip(TEMPLATE_LANDMARKS.iter()) {
            assert!(close(*p, *q, 1e-2));
        }
        for (p, q) in TEMPLATE_LANDMARKS.iter().zip(lm.iter()) {
            assert!(close(a.point_to_original(*p), *q, 1e-2));
        }
        // Pixel (10, 20) of the aligned face is photo pixel (60, 70).
        let px = a.image.get_pixel(10, 20);
        assert_eq!(px.0, [20, 23, 0]);
    }

    #[test]
    fn outside_the_photo_is_black() {
        let img = RgbImage::from_pixel(50, 50, Rgb([200, 200, 200]));
        let lm = TEMPLATE_LANDMARKS.map(|[x, y]| [x * 0.2 + 30.0, y * 0.2 + 30.0]);
        let a = align(&img, &lm).unwrap();
        // The aligned face covers 30..75 of the photo, partly outside.
        assert_eq!(a.image.get_pixel(223, 223).0, [0, 0, 0]);
        assert_eq!(a.image.get_pixel(10, 10).0, [200, 200, 200]);
    }

    #[test]
    fn grid_maps_back_onto_the_photo() {
        let lm = TEMPLATE_LANDMARKS.map(|[x, y]| [x * 0.5 + 100.0, y * 0.5 + 20.0]);
        let img = RgbImage::new(300, 200);
        let a = align(&img, &lm).unwrap();
        // A 2×2 grid with only the top-left cell set.
        let map = grid_to_original(&[1.0, 0.0, 0.0, 0.0], 2, &a.to_aligned, 300, 200);
        let at = |x: usize, y: usize| map[y * 300 + x];
        // The aligned square covers x 100..212, y 20..132 of the photo.
        assert!((at(110, 30) - 1.0).abs() < 1e-3);
        assert!(at(205, 125) < 1e-3);
        assert!(at(50, 50).abs() < 1e-6 && at(250, 150).abs() < 1e-6);
        assert!(at(156, 76) > 0.1 && at(156, 76) < 0.9);
    }
}
