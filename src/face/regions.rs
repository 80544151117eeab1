//! The 9 facial regions of SFAM as soft masks, computed from the 5
//! landmarks of an aligned face.
//!
//! # Geometry
//!
//! Everything is measured in a face frame built from the landmarks, so the
//! masks follow a face that is tilted or scaled in the aligned image:
//!
//! - `u`: unit vector from the left eye to the right eye (the face's
//!   horizontal); `v`: `u` turned 90° so it points from the eyes to the
//!   mouth (the face's vertical, "down").
//! - `d`: the distance between the eyes; `em`: the distance from the eyes'
//!   midpoint to the mouth corners' midpoint, measured along `v`.
//! - `w`: the distance between the mouth corners.
//!
//! Each region except the face boundary is an anisotropic Gaussian
//! `exp(-½((a/σa)² + (b/σb)²))`, where `(a, b)` are the coordinates of the
//! point relative to the region's centre along `u` and `v`:
//!
//! | region | centre | σa (along `u`) | σb (along `v`) |
//! |---|---|---|---|
//! | left / right eye | the eye landmark, `0.05·d` up | `0.30·d` | `0.20·d` |
//! | nose | 65% of the way from the eyes' midpoint to the nose tip | `0.20·d` | `0.45·‖nose − eyes' midpoint‖` |
//! | mouth | the mouth corners' midpoint | `0.45·w` | `0.25·w` |
//! | forehead | eyes' midpoint, `0.62·em` up | `0.70·d` | `0.28·em` |
//! | left / right cheek | 60% of the way from the eye to the same-side mouth corner, `0.30·d` outwards | `0.25·d` | `0.30·em` |
//! | chin / jaw | mouth corners' midpoint, `0.42·em` down | `0.60·d` | `0.20·em` |
//!
//! The **face boundary** is a ring along an ellipse fitted to the landmarks
//! with typical facial proportions — centred on the eyes' midpoint moved
//! `0.575·em` down (about the nose), semi-axes `1.15·d` along `u` and
//! `1.03·em` along `v`, so that it runs from just above the eyebrows
//! (`0.45·em` above the eyes) to the chin (`0.6·em` below the mouth) and
//! along the cheeks' outline, where face-swap methods blend the inner face
//! into the target. Its value is `exp(-½((r − 1)/0.12)²)` with `r` the
//! elliptical radius (1 on the ellipse), so it is ≈ 0 at the face centre.
//!
//! "Left" and "right" are the image's left and right (MTCNN's and
//! `ArcFace`'s landmark 0 is the left one): [`Region::LeftEye`] is the
//! subject's right eye in a frontal photo. See [`super::template`].
//!
//! # Grids
//!
//! [`region_masks`] evaluates the masks over a `grid × grid` grid of cells
//! covering a `size × size` aligned face: each cell's value is the mean of
//! the full-resolution mask over the cell, sampled at up to 8×8 points
//! inside it. With `grid == size` that is the mask at each pixel's centre;
//! with `grid = 14` it is the patch grid of a ViT-B/16 at 224×224.

use serde::Serialize;

/// A facial region of SFAM's mixture of experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// The eye on the image's left (landmark 0; the subject's right eye).
    LeftEye,
    /// The eye on the image's right (landmark 1; the subject's left eye).
    RightEye,
    /// The nose, from the bridge to the tip.
    Nose,
    /// The mouth and lips.
    Mouth,
    /// The forehead above the eyes and eyebrows.
    Forehead,
    /// The cheek on the image's left, between the left eye and mouth corner.
    LeftCheek,
    /// The cheek on the image's right.
    RightCheek,
    /// The chin and lower jaw below the mouth.
    ChinJaw,
    /// A ring along the face outline, where face swaps are blended.
    FaceBoundary,
}

/// All regions, in the order of [`region_masks`]' output.
pub const REGIONS: [Region; 9] = [
    Region::LeftEye,
    Region::RightEye,
    Region::Nose,
    Region::Mouth,
    Region::Forehead,
    Region::LeftCheek,
    Region::RightCheek,
    Region::ChinJaw,
    Region::FaceBoundary,
];

impl Region {
    /// The region's `snake_case` name (`"left_eye"` … `"face_boundary"`),
    /// the same as its serde form.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::LeftEye => "left_eye",
            Self::RightEye => "right_eye",
            Self::Nose => "nose",
            Self::Mouth => "mouth",
            Self::Forehead => "forehead",
            Self::LeftCheek => "left_cheek",
            Self::RightCheek => "right_cheek",
            Self::ChinJaw => "chin_jaw",
            Self::FaceBoundary => "face_boundary",
        }
    }

    /// A short human-readable label ("left eye", "chin / jaw" …).
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::LeftEye => "left eye",
            Self::RightEye => "right eye",
            Self::Nose => "nose",
            Self::Mouth => "mouth",
            Self::Forehead => "forehead",
            Self::LeftCheek => "left cheek",
            Self::RightCheek => "right cheek",
            Self::ChinJaw => "chin / jaw",
            Self::FaceBoundary => "face boundary",
        }
    }

    /// The region's index in [`REGIONS`].
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Relative width of the face-boundary ring (in units of the elliptical
/// radius).
const RING_SIGMA: f32 = 0.12;

/// An anisotropic Gaussian in the face frame.
#[derive(Debug, Clone, Copy)]
struct Blob {
    centre: [f32; 2],
    sigma_u: f32,
    sigma_v: f32,
}

/// The face frame and the region shapes derived from 5 landmarks.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    u: [f32; 2],
    v: [f32; 2],
    blobs: [Blob; 8],
    ellipse_centre: [f32; 2],
    ellipse_axes: [f32; 2],
}

fn add(p: [f32; 2], q: [f32; 2]) -> [f32; 2] {
    [p[0] + q[0], p[1] + q[1]]
}

fn sub(p: [f32; 2], q: [f32; 2]) -> [f32; 2] {
    [p[0] - q[0], p[1] - q[1]]
}

fn scale(p: [f32; 2], s: f32) -> [f32; 2] {
    [p[0] * s, p[1] * s]
}

fn lerp(p: [f32; 2], q: [f32; 2], t: f32) -> [f32; 2] {
    add(p, scale(sub(q, p), t))
}

fn dot(p: [f32; 2], q: [f32; 2]) -> f32 {
    p[0] * q[0] + p[1] * q[1]
}

fn norm(p: [f32; 2]) -> f32 {
    dot(p, p).sqrt()
}

/// Smallest length used for the frame's scales, so that degenerate
/// landmarks (all in one point) still give finite masks.
const MIN_LEN: f32 = 1e-3;

impl Geometry {
    fn new(lm: &[[f32; 2]; 5]) -> Self {
        let [le, re, nose, lm_l, lm_r] = *lm;
        let eye_vec = sub(re, le);
        let d = norm(eye_vec).max(MIN_LEN);
        let u = if norm(eye_vec) > MIN_LEN {
            scale(eye_vec, 1.0 / d)
        } else {
            [1.0, 0.0]
        };
        // Image y points down: turning u = (1, 0) by +90° gives (0, 1), down.
        let v = [-u[1], u[0]];
        let eyes = lerp(le, re, 0.5);
        let mouth = lerp(lm_l, lm_r, 0.5);
        let em = dot(sub(mouth, eyes), v).max(MIN_LEN);
        let w = norm(sub(lm_r, lm_l)).max(MIN_LEN);
        let nose_len = norm(sub(nose, eyes)).max(MIN_LEN);

        let up = |p: [f32; 2], by: f32| sub(p, scale(v, by));
        let eye = |p: [f32; 2]| Blob {
            centre: up(p, 0.05 * d),
            sigma_u: 0.30 * d,
            sigma_v: 0.20 * d,
        };
        let cheek = |eye_pt: [f32; 2], mouth_pt: [f32; 2], outwards: f32| Blob {
            centre: add(lerp(eye_pt, mouth_pt, 0.6), scale(u, outwards * 0.30 * d)),
            sigma_u: 0.25 * d,
            sigma_v: 0.30 * em,
        };
        let blobs = [
            eye(le),
            eye(re),
            Blob {
                centre: lerp(eyes, nose, 0.65),
                sigma_u: 0.20 * d,
                sigma_v: 0.45 * nose_len,
            },
            Blob {
                centre: mouth,
                sigma_u: 0.45 * w,
                sigma_v: 0.25 * w,
            },
            Blob {
                centre: up(eyes, 0.62 * em),
                sigma_u: 0.70 * d,
                sigma_v: 0.28 * em,
            },
            cheek(le, lm_l, -1.0),
            cheek(re, lm_r, 1.0),
            Blob {
                centre: add(mouth, scale(v, 0.42 * em)),
                sigma_u: 0.60 * d,
                sigma_v: 0.20 * em,
            },
        ];
        Self {
            u,
            v,
            blobs,
            ellipse_centre: add(eyes, scale(v, 0.575 * em)),
            ellipse_axes: [1.15 * d, 1.03 * em],
        }
    }

    /// The value of every region's mask at point `p`, in [`REGIONS`] order.
    #[allow(clippy::many_single_char_names)] // p, q, a, b, r, t as in the docs
    fn values_at(&self, p: [f32; 2]) -> [f32; 9] {
        let mut out = [0.0; 9];
        for (o, blob) in out.iter_mut().zip(self.blobs.iter()) {
            let q = sub(p, blob.centre);
            let a = dot(q, self.u) / blob.sigma_u;
            let b = dot(q, self.v) / blob.sigma_v;
            *o = (-0.5 * (a * a + b * b)).exp();
        }
        let q = sub(p, self.ellipse_centre);
        let a = dot(q, self.u) / self.ellipse_axes[0];
        let b = dot(q, self.v) / self.ellipse_axes[1];
        let r = (a * a + b * b).sqrt();
        let t = (r - 1.0) / RING_SIGMA;
        out[Region::FaceBoundary.index()] = (-0.5 * t * t).exp();
        out
    }
}

/// Soft masks (values in \[0,1\]) of the 9 regions over a grid×grid patch
/// grid of a size×size aligned face, from its 5 landmarks; row-major, one
/// Vec of grid*grid per region, in [`REGIONS`] order.
///
/// Landmarks are in the aligned face's pixel coordinates (left eye, right
/// eye, nose tip, left mouth corner, right mouth corner; see
/// [`super::template`]). Each cell holds the mean of the region's
/// full-resolution mask over the cell (see the module docs for the
/// shapes). `grid == 0` gives 9 empty vectors.
#[must_use]
pub fn region_masks(landmarks: &[[f32; 2]; 5], size: f32, grid: usize) -> Vec<Vec<f32>> {
    let mut masks = vec![vec![0.0_f32; grid * grid]; REGIONS.len()];
    if grid == 0 {
        return masks;
    }
    let geometry = Geometry::new(landmarks);
    #[allow(clippy::cast_precision_loss)] // grids are small
    let cell = size / grid as f32;
    // Up to 8×8 samples per cell, about one per pixel.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let samples = (cell.round().clamp(1.0, 8.0)) as usize;
    #[allow(clippy::cast_precision_loss)]
    let inv_samples = 1.0 / (samples * samples) as f32;
    #[allow(clippy::cast_precision_loss)]
    let step = cell / samples as f32;
    for row in 0..grid {
        for col in 0..grid {
            let mut acc = [0.0_f32; 9];
            for sy in 0..samples {
                for sx in 0..samples {
                    // Pixel centres are at integer coordinates: the pixel
                    // grid's cell `col` spans [col·cell − ½, (col+1)·cell − ½].
                    #[allow(clippy::cast_precision_loss)]
                    let p = [
                        col as f32 * cell + (sx as f32 + 0.5) * step - 0.5,
                        row as f32 * cell + (sy as f32 + 0.5) * step - 0.5,
                    ];
                    for (a, v) in acc.iter_mut().zip(geometry.values_at(p)) {
                        *a += v;
                    }
                }
            }
            for (mask, a) in masks.iter_mut().zip(acc) {
                mask[row * grid + col] = (a * inv_samples).clamp(0.0, 1.0);
            }
        }
    }
    masks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::template::TEMPLATE_LANDMARKS;

    fn argmax(mask: &[f32], grid: usize) -> (usize, usize) {
        let (i, _) =
            mask.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            );
        (i % grid, i / grid)
    }

    #[test]
    fn names_and_order() {
        let names: Vec<_> = REGIONS.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "left_eye",
                "right_eye",
                "nose",
                "mouth",
                "forehead",
                "left_cheek",
                "right_cheek",
                "chin_jaw",
                "face_boundary"
            ]
        );
        for (i, r) in REGIONS.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(
                serde_json::to_string(r).unwrap(),
                format!("\"{}\"", r.name())
            );
        }
    }

    #[test]
    fn shapes_and_range() {
        for grid in [0, 1, 7, 14, 224] {
            let masks = region_masks(&TEMPLATE_LANDMARKS, 224.0, grid);
            assert_eq!(masks.len(), 9);
            for m in &masks {
                assert_eq!(m.len(), grid * grid);
                assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
            }
        }
    }

    #[test]
    fn peaks_are_inside_their_regions() {
        let t = TEMPLATE_LANDMARKS;
        let masks = region_masks(&t, 224.0, 224);
        let peak = |r: Region| {
            let (x, y) = argmax(&masks[r.index()], 224);
            #[allow(clippy::cast_precision_loss)]
            [x as f32, y as f32]
        };
        let near = |p: [f32; 2], q: [f32; 2], tol: f32| norm(sub(p, q)) < tol;
        assert!(near(peak(Region::LeftEye), t[0], 8.0));
        assert!(near(peak(Region::RightEye), t[1], 8.0));
        let mouth = lerp(t[3], t[4], 0.5);
        assert!(near(peak(Region::Mouth), mouth, 3.0));
        let nose = peak(Region::Nose);
        assert!(nose[1] > t[0][1] && nose[1] < t[2][1] + 2.0);
        assert!((nose[0] - t[2][0]).abs() < 4.0);
        let fh = peak(Region::Forehead);
        assert!(fh[1] < t[0][1] - 20.0 && fh[1] > 20.0);
        let lc = peak(Region::LeftCheek);
        let rc = peak(Region::RightCheek);
        assert!(lc[0] < t[0][0] && lc[1] > t[0][1] && lc[1] < t[3][1]);
        assert!(rc[0] > t[1][0] && rc[1] > t[1][1] && rc[1] < t[4][1]);
        let chin = peak(Region::ChinJaw);
        assert!(chin[1] > mouth[1] + 15.0 && chin[1] < 215.0);
        // Every peak reaches ~1 at full resolution.
        for m in &masks[..8] {
            assert!(m.iter().copied().fold(0.0, f32::max) > 0.9);
        }
    }

    #[test]
    fn boundary_ring_excludes_centre_and_is_inside_image() {
        let t = TEMPLATE_LANDMARKS;
        let masks = region_masks(&t, 224.0, 224);
        let ring = &masks[Region::FaceBoundary.index()];
        let at = |x: usize, y: usize| ring[y * 224 + x];
        // The nose tip (face centre) is far from the ring.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let (nx, ny) = (t[2][0] as usize, t[2][1] as usize);
        assert!(at(nx, ny) < 1e-6);
        // The ring reaches ~1 somewhere left and right of the face on the
        // nose row and below it on the nose column (the outline itself is
        // inside the image), and is ~0 at the left, right and top borders;
        // below the chin the template leaves less room than the ring's
        // width, so only its outer flank reaches the bottom border.
        let row_max_left = (0..nx).map(|x| at(x, ny)).fold(0.0, f32::max);
        let row_max_right = (nx..224).map(|x| at(x, ny)).fold(0.0, f32::max);
        let col_max_below = (ny..224).map(|y| at(nx, y)).fold(0.0, f32::max);
        assert!(row_max_left > 0.95 && row_max_right > 0.95 && col_max_below > 0.95);
        assert!(at(nx, 223) < 0.6 * col_max_below);
        for i in 0..224 {
            for v in [at(i, 0), at(0, i), at(223, i)] {
                assert!(v < 0.01, "ring touches the border: {v}");
            }
        }
    }

    #[test]
    fn eye_masks_are_mirror_images() {
        let masks = region_masks(&TEMPLATE_LANDMARKS, 224.0, 14);
        let (l, r) = (&masks[0], &masks[1]);
        let l_sum: f32 = l.iter().sum();
        let r_sum: f32 = r.iter().sum();
        assert!((l_sum - r_sum).abs() / l_sum < 0.05);
        let (lx, _) = argmax(l, 14);
        let (rx, _) = argmax(r, 14);
        assert!(lx < 7 && rx >= 7);
    }

    #[test]
    fn patch_grid_is_mean_of_full_resolution() {
        let full = region_masks(&TEMPLATE_LANDMARKS, 224.0, 224);
        let coarse = region_masks(&TEMPLATE_LANDMARKS, 224.0, 14);
        for (f, c) in full.iter().zip(coarse.iter()) {
            for row in 0..14 {
                for col in 0..14 {
                    let mut s = 0.0;
                    for y in 0..16 {
                        for x in 0..16 {
                            s += f[(row * 16 + y) * 224 + col * 16 + x];
                        }
                    }
                    let mean = s / 256.0;
                    assert!(
                        (mean - c[row * 14 + col]).abs() < 0.02,
                        "{mean} vs {}",
                        c[row * 14 + col]
                    );
                }
            }
        }
    }

    #[test]
    fn masks_follow_a_rotated_face() {
        // Rotate the template by 90° about the image centre: the masks
        // rotate with it.
        let t = TEMPLATE_LANDMARKS;
        let rot = t.map(|[x, y]| [223.0 - y, x]);
        let a = region_masks(&t, 224.0, 224);
        let b = region_masks(&rot, 224.0, 224);
        for (ma, mb) in a.iter().zip(b.iter()) {
            for y in (0..224).step_by(7) {
                for x in (0..224).step_by(7) {
                    let va = ma[y * 224 + x];
                    let vb = mb[x * 224 + (223 - y)];
                    assert!((va - vb).abs() < 1e-3);
                }
            }
        }
    }

    #[test]
    fn degenerate_landmarks_are_finite() {
        let masks = region_masks(&[[50.0, 50.0]; 5], 100.0, 10);
        assert!(masks.iter().flatten().all(|v| v.is_finite()));
    }
}
