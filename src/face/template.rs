//! The aligned-face template: where the 5 landmarks land in the 224×224
//! face the model sees.
//!
//! # Landmark order and "left"
//!
//! The 5 landmarks are, in this order: left eye, right eye, nose tip, left
//! mouth corner, right mouth corner — the order of MTCNN's O-Net and of the
//! `ArcFace` template. "Left" is the **image's** left (the viewer's left,
//! smaller `x`), which is the *subject's right* eye in a frontal photo.
//! Landmark 0 is always the eye with the smaller `x` in an upright face;
//! every region name in [`super::regions`] follows the same convention.
//!
//! # Why this template
//!
//! It is the `ArcFace` 112×112 template (insightface's
//! `arcface_dst`) scaled by 1.8, centred horizontally in 224×224 and
//! placed 10 px higher than centred vertically:
//!
//! `template = arcface × 1.8 + (11.2, 1.2)`.
//!
//! `ArcFace`'s own template (scale 2 here) is tight: the chin and the sides
//! of the jaw fall outside the image. SFAM needs the face outline — the
//! ring where face swaps are blended — inside the crop. With the usual
//! facial proportions (hairline about 1.06 eye–mouth distances above the
//! eyes, chin about 0.6 below the mouth, face width about 2.3 inter-ocular
//! distances) this template puts the eyes at `y ≈ 94`, the mouth at
//! `y ≈ 167`, the chin near `y ≈ 211`, the hairline near `y ≈ 16` and the
//! cheeks' outline near `x ≈ 39` and `x ≈ 185`: the whole face, centred
//! (the 10 px shift centres the hairline–chin span), as large as it fits.
//! The 14×14 patch grid then puts about 4 patches between the eyes and
//! about 4.6 between the eye line and the mouth.
//!
//! Measured, not guessed: a logistic regression on the pretrained `faceres`
//! pooled features of `../shared/data` (same training/validation split as
//! `sfam train`, same detections; the study shifts the template up by
//! 8 px × scale / 1.4, i.e. 10.3 px at 1.8 where this one uses 10) gave
//! validation AUC ciplab / dfdc / `ffhq_stylegan2` 0.577 / 0.627 / 0.826 at
//! scale 1.4 (this module's first template, with ≥ 30 px of margin),
//! 0.607 / 0.673 / 0.878 at 1.8 and 0.587 / 0.669 / 0.854 at 2.2
//! (docs/MODEL.md, "Face pipeline"). A face drawn small throws away the
//! pixels where the artifacts are.

/// Width and height of an aligned face, in pixels.
pub const ALIGNED_SIZE: u32 = 224;

/// The `ArcFace` 112×112 template (insightface `arcface_dst`), in the same
/// landmark order.
pub const ARCFACE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Scale from [`ARCFACE_112`] to [`TEMPLATE_LANDMARKS`].
pub const TEMPLATE_SCALE: f32 = 1.8;

/// Offset (x, y) from the scaled [`ARCFACE_112`] to [`TEMPLATE_LANDMARKS`].
pub const TEMPLATE_OFFSET: [f32; 2] = [11.2, 1.2];

/// The 5 template landmarks (left eye, right eye, nose tip, left mouth
/// corner, right mouth corner) in the 224×224 aligned face, pixel
/// coordinates (`x` right, `y` down; the centre of pixel `(i, j)` is the
/// point `(i, j)`, as everywhere in this module).
///
/// Equal to `ARCFACE_112 × 1.8 + (11.2, 1.2)` (see the module docs).
pub const TEMPLATE_LANDMARKS: [[f32; 2]; 5] = [
    [80.130_28, 94.253_34],
    [143.557_24, 93.902_52],
    [112.045_36, 130.325_88],
    [85.988_74, 167.457_9],
    [138.513_82, 167.167_38],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_scaled_arcface() {
        for (t, a) in TEMPLATE_LANDMARKS.iter().zip(ARCFACE_112.iter()) {
            for k in 0..2 {
                let want = a[k] * TEMPLATE_SCALE + TEMPLATE_OFFSET[k];
                assert!((t[k] - want).abs() < 1e-3, "{t:?} vs {a:?}");
            }
        }
    }

    #[test]
    fn template_is_centred_and_upright() {
        let t = TEMPLATE_LANDMARKS;
        let cx = t.iter().map(|p| p[0]).sum::<f32>() / 5.0;
        assert!((cx - 112.0).abs() < 1.0, "{cx}");
        // Left eye has the smaller x; eyes above nose above mouth.
        assert!(t[0][0] < t[1][0] && t[3][0] < t[4][0]);
        assert!(t[0][1] < t[2][1] && t[2][1] < t[3][1]);
        // The estimated face outline (see module docs) is inside, with a
        // margin of at least 8 px.
        let eye_y = f32::midpoint(t[0][1], t[1][1]);
        let mouth_y = f32::midpoint(t[3][1], t[4][1]);
        let em = mouth_y - eye_y;
        let d = t[1][0] - t[0][0];
        let hairline = eye_y - 1.06 * em;
        let chin = mouth_y + 0.6 * em;
        assert!(hairline > 8.0 && chin < 216.0, "{hairline} {chin}");
        assert!(112.0 - 1.15 * d > 8.0 && 112.0 + 1.15 * d < 216.0);
    }
}
