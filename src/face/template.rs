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
//! `arcface_dst`) scaled by 1.4, centred horizontally in 224×224 and
//! placed 8 px higher than centred vertically:
//!
//! `template = arcface × 1.4 + (33.6, 25.6)`.
//!
//! `ArcFace`'s template is tight: in its 112×112 crop the chin and the sides
//! of the jaw fall outside the image. SFAM needs the whole face outline —
//! the ring where face swaps are blended — inside the crop, with context
//! around it. With the usual facial proportions (hairline about 1.06
//! eye–mouth distances above the eyes, chin about 0.6 below the mouth, face
//! width about 2.3 inter-ocular distances) the scaled template puts the
//! eyes at `y ≈ 98`, the mouth at `y ≈ 155`, the chin near `y ≈ 190`, the
//! hairline near `y ≈ 38` and the cheeks' outline near `x ≈ 55` and
//! `x ≈ 169`: at least about 30 px of margin on every side, and the face
//! centred (the 8 px shift centres the hairline–chin span, which the
//! centred `ArcFace` box leaves bottom-heavy). The 14×14 patch grid of a
//! ViT-B/16 then puts about 3 patches between the eyes and about 3.5
//! between the eye line and the mouth.

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
pub const TEMPLATE_SCALE: f32 = 1.4;

/// Offset (x, y) from the scaled [`ARCFACE_112`] to [`TEMPLATE_LANDMARKS`].
pub const TEMPLATE_OFFSET: [f32; 2] = [33.6, 25.6];

/// The 5 template landmarks (left eye, right eye, nose tip, left mouth
/// corner, right mouth corner) in the 224×224 aligned face, pixel
/// coordinates (`x` right, `y` down; the centre of pixel `(i, j)` is the
/// point `(i, j)`, as everywhere in this module).
///
/// Equal to `ARCFACE_112 × 1.4 + (33.6, 25.6)` (see the module docs).
pub const TEMPLATE_LANDMARKS: [[f32; 2]; 5] = [
    [87.212_44, 97.974_82],
    [136.544_52, 97.701_96],
    [112.035_28, 126.031_24],
    [91.769_02, 154.911_7],
    [132.621_86, 154.685_74],
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
        // The estimated face outline (see module docs) is inside with margin.
        let eye_y = f32::midpoint(t[0][1], t[1][1]);
        let mouth_y = f32::midpoint(t[3][1], t[4][1]);
        let em = mouth_y - eye_y;
        let d = t[1][0] - t[0][0];
        let hairline = eye_y - 1.06 * em;
        let chin = mouth_y + 0.6 * em;
        assert!(hairline > 20.0 && chin < 204.0, "{hairline} {chin}");
        assert!(112.0 - 1.15 * d > 20.0 && 112.0 + 1.15 * d < 204.0);
    }
}
