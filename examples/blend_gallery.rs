//! What the trainer's synthetic fakes look like: for each real photo given,
//! the aligned face, three self-blends and three donor blends (the copy
//! taken from the next photo in the list), side by side in one PNG row per
//! photo, with the blending mask under each.
//!
//! ```text
//! cargo run --release --example blend_gallery -- OUT.png PHOTO...
//! ```
//!
//! A research script: it stops at the first problem.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use image::{GenericImage, Rgb, RgbImage};
use rand::SeedableRng;
use sfam_studio::face::{FaceDetector, FaceOptions};
use sfam_studio::train::augment::self_blend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 3,
        "usage: blend_gallery OUT.png PHOTO PHOTO..."
    );
    let det = FaceDetector::load_default().expect("face detector");
    let faces: Vec<(RgbImage, [[f32; 2]; 5])> = args[1..]
        .iter()
        .map(|p| {
            let r = det.faces_in_image(std::path::Path::new(p), FaceOptions::default());
            let f = r.aligned.into_iter().next().expect("a face");
            (f.image, f.landmarks_aligned)
        })
        .collect();
    let n = faces.len();
    let cols = 7u32;
    let mut out = RgbImage::from_pixel(cols * 224, n as u32 * 448, Rgb([0, 0, 0]));
    for (row, (img, lm)) in faces.iter().enumerate() {
        let (donor, dlm) = &faces[(row + 1) % n];
        out.copy_from(img, 0, row as u32 * 448).unwrap();
        for k in 0..6u32 {
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(k % 3) + 10 * row as u64);
            let sb = if k < 3 {
                self_blend(img, lm, None, &mut rng)
            } else {
                self_blend(img, lm, Some((donor, dlm)), &mut rng)
            };
            let x = (k + 1) * 224;
            out.copy_from(&sb.image, x, row as u32 * 448).unwrap();
            let mask = RgbImage::from_fn(224, 224, |u, v| {
                let m = sb.mask[(v * 224 + u) as usize];
                let g = (m * 255.0).round().clamp(0.0, 255.0) as u8;
                Rgb([g, g, g])
            });
            out.copy_from(&mask, x, row as u32 * 448 + 224).unwrap();
        }
    }
    out.save(&args[0]).expect("write the gallery");
}
