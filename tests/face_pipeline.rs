//! The face pipeline on tricky inputs: no face, several faces, tiny faces,
//! grayscale and EXIF-rotated photos, tight crops, bad files; alignment
//! and region masks of detected faces. Images come from `assets/samples/`
//! and `tests/fixtures/face/`, or are built here.

// Helpers may unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::many_single_char_names, clippy::float_cmp)]

use std::path::{Path, PathBuf};

use image::{GrayImage, Rgb, RgbImage, imageops};
use sfam_studio::data::image::load_rgb;
use sfam_studio::face::regions::{REGIONS, Region, region_masks};
use sfam_studio::face::{
    ALIGNED_SIZE, Face, FaceDetector, FaceOptions, ImageFacesError, TEMPLATE_LANDMARKS,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample(name: &str) -> RgbImage {
    load_rgb(&root().join("assets/samples").join(name)).unwrap()
}

fn detector() -> FaceDetector {
    FaceDetector::load_default().unwrap()
}

/// The face's landmarks are upright: eyes left to right above the nose,
/// above the mouth corners.
fn upright(f: &Face) -> bool {
    let l = f.landmarks;
    l[0][0] < l[1][0]
        && l[3][0] < l[4][0]
        && l[0][1].max(l[1][1]) < l[2][1]
        && l[2][1] < l[3][1].min(l[4][1])
}

fn inside(f: &Face, w: u32, h: u32) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let (w, h) = (w as f32, h as f32);
    f.landmarks
        .iter()
        .all(|p| (0.0..w).contains(&p[0]) && (0.0..h).contains(&p[1]))
}

#[test]
fn no_face_in_gradient_or_noise() {
    let det = detector();
    let gradient = RgbImage::from_fn(320, 240, |x, y| {
        #[allow(clippy::cast_possible_truncation)]
        Rgb([(x * 255 / 319) as u8, (y * 255 / 239) as u8, 128])
    });
    // A fixed xorshift stream: reproducible noise without a dependency.
    let mut s: u32 = 0x9E37_79B9;
    let noise = RgbImage::from_fn(320, 320, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            *c = s.to_le_bytes()[0];
        }
        Rgb(px)
    });
    let flat = RgbImage::from_pixel(64, 64, Rgb([30, 30, 30]));
    for (name, img) in [("gradient", &gradient), ("noise", &noise), ("flat", &flat)] {
        assert!(det.detect(img).unwrap().is_empty(), "{name}");
        let r = det.faces_in_rgb(img, Path::new(name), FaceOptions::default());
        assert!(r.faces.is_empty() && r.aligned.is_empty() && !r.precropped);
        let e = r.error.unwrap();
        assert!(matches!(e, ImageFacesError::NoFace { .. }));
        assert_eq!(e.to_string(), format!("no face found: {name}"));
    }
    // Degenerate sizes are no face, not an error.
    assert!(det.detect(&RgbImage::new(0, 0)).unwrap().is_empty());
    assert!(det.detect(&RgbImage::new(1, 500)).unwrap().is_empty());
    assert!(det.detect(&RgbImage::new(11, 11)).unwrap().is_empty());
}

#[test]
fn several_faces_largest_first() {
    let det = detector();
    let a = sample("ciplab_real_real_00394.jpg");
    let b = sample("ffhq_stylegan2_fake_fake_77.jpg");
    // Three faces: a at full size in the middle, b smaller on both sides.
    let small = imageops::resize(&b, 160, 160, imageops::FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(700, 340, Rgb([110, 110, 110]));
    imageops::replace(&mut canvas, &small, 10, 90);
    imageops::replace(&mut canvas, &a, 190, 10);
    let flipped = imageops::flip_horizontal(&small);
    imageops::replace(&mut canvas, &flipped, 530, 20);
    let faces = det.detect(&canvas).unwrap();
    assert_eq!(faces.len(), 3, "{faces:?}");
    assert!(faces.windows(2).all(|w| w[0].area() >= w[1].area()));
    // The largest is the full-size face in the middle.
    let c = f32::midpoint(faces[0].bbox[0], faces[0].bbox[2]);
    assert!((190.0..510.0).contains(&c), "{faces:?}");
    assert!(faces.iter().all(upright));
    let r = det.faces_in_rgb(&canvas, Path::new("three.png"), FaceOptions::default());
    assert_eq!(r.faces.len(), 3);
    assert_eq!(r.aligned.len(), 3);
    assert!(r.error.is_none() && !r.precropped);
}

#[test]
fn tiny_faces_down_to_the_minimum_size() {
    let det = detector();
    let img = sample("ffhq_stylegan2_real_136.jpg");
    let full = det.detect(&img).unwrap();
    assert_eq!(full.len(), 1);
    let face_side = full[0].bbox[2] - full[0].bbox[0];
    // Shrink until the face is about 24 px, on a larger canvas.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let side = (320.0 * 24.0 / face_side).round() as u32;
    let tiny = imageops::resize(&img, side, side, imageops::FilterType::Lanczos3);
    let mut canvas = RgbImage::from_pixel(160, 120, Rgb([128, 128, 128]));
    imageops::replace(&mut canvas, &tiny, 40, 30);
    let faces = det.detect(&canvas).unwrap();
    assert_eq!(
        faces.len(),
        1,
        "face of ~24 px in a {side} px image: {faces:?}"
    );
    let s = faces[0].bbox[2] - faces[0].bbox[0];
    assert!((14.0..40.0).contains(&s), "{s}");
    assert!(upright(&faces[0]));
    // Far below the 20 px minimum: nothing.
    let speck = imageops::resize(&img, 14, 14, imageops::FilterType::Lanczos3);
    let mut canvas = RgbImage::from_pixel(160, 120, Rgb([128, 128, 128]));
    imageops::replace(&mut canvas, &speck, 40, 30);
    assert!(det.detect(&canvas).unwrap().is_empty());
}

#[test]
fn large_photo_same_face_at_five_times_the_size() {
    // 1600×1600: the first pyramid levels are searched in bands.
    let det = detector();
    let img = sample("ciplab_fake_mid_66_1100.jpg");
    let small = det.detect(&img).unwrap();
    let big = imageops::resize(&img, 1600, 1600, imageops::FilterType::Triangle);
    let large = det.detect(&big).unwrap();
    assert_eq!(small.len(), 1);
    assert_eq!(large.len(), 1, "{large:?}");
    for (p, q) in large[0].landmarks.iter().zip(small[0].landmarks.iter()) {
        assert!((p[0] / 5.0 - q[0]).abs() < 4.0 && (p[1] / 5.0 - q[1]).abs() < 4.0);
    }
}

#[test]
fn grayscale_photos() {
    let det = detector();
    // A single-channel PNG written here, and the grayscale JPEG fixture.
    let rgb = sample("ciplab_real_real_00311.jpg");
    let gray: GrayImage = imageops::grayscale(&rgb);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gray.png");
    gray.save(&path).unwrap();
    for p in [path, root().join("tests/fixtures/face/gray.jpg")] {
        let r = det.faces_in_image(&p, FaceOptions::default());
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.faces.len(), 1, "{}", p.display());
        assert!(upright(&r.faces[0]));
        let px = r.aligned[0].image.get_pixel(112, 112).0;
        assert!(px[0] == px[1] && px[1] == px[2], "gray stays gray");
    }
}

#[test]
fn exif_rotated_photo_is_detected_upright() {
    let det = detector();
    let path = root().join("tests/fixtures/face/exif_rotate6.jpg");
    let r = det.faces_in_image(&path, FaceOptions::default());
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.faces.len(), 1);
    assert!(upright(&r.faces[0]), "{:?}", r.faces[0]);
    // The same face as in the upright original (320×320 both ways, so
    // compare with it directly).
    let upright_img = sample("ffhq_stylegan2_real_15.jpg");
    let direct = det.detect(&upright_img).unwrap();
    for (p, q) in r.faces[0].landmarks.iter().zip(direct[0].landmarks.iter()) {
        assert!((p[0] - q[0]).abs() < 3.0 && (p[1] - q[1]).abs() < 3.0);
    }
}

#[test]
fn tight_crops_fall_back_to_the_whole_crop_only_when_asked() {
    let det = detector();
    // A DFDC crop in which MTCNN (here and in facenet-pytorch) finds no face.
    let path = root().join("assets/samples/dfdc_fake_mbmruhrpfd.jpg");
    let r = det.faces_in_image(&path, FaceOptions::default());
    assert!(r.faces.is_empty() && !r.precropped);
    assert!(matches!(r.error, Some(ImageFacesError::NoFace { .. })));
    let r = det.faces_in_image(&path, FaceOptions { tight_crops: true });
    assert!(r.precropped && r.error.is_none());
    assert_eq!(r.faces.len(), 1);
    assert_eq!(r.faces[0].bbox, [0.0, 0.0, 224.0, 224.0]);
    assert_eq!(
        r.aligned[0].image.dimensions(),
        (ALIGNED_SIZE, ALIGNED_SIZE)
    );
    // A crop in which the face is found is not precropped.
    let path = root().join("assets/samples/dfdc_real_kbodjivgqu.jpg");
    let r = det.faces_in_image(&path, FaceOptions { tight_crops: true });
    assert!(!r.precropped && r.error.is_none());
    assert_eq!(r.faces.len(), 1);
    assert!(r.faces[0].score > 0.7);
}

#[test]
fn bad_files_give_errors_naming_the_file() {
    let det = detector();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jpg");
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not an image").unwrap();
    let truncated = dir.path().join("truncated.jpg");
    let bytes = std::fs::read(root().join("assets/samples/ciplab_real_real_00128.jpg")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 5]).unwrap();
    for p in [&missing, &text] {
        // Even as a tight crop, an unreadable file is an error, never a
        // precropped stand-in.
        let r = det.faces_in_image(p, FaceOptions { tight_crops: true });
        assert!(r.faces.is_empty() && !r.precropped && r.size.is_none());
        let e = r.error.unwrap();
        let msg = e.to_string();
        assert!(matches!(e, ImageFacesError::Image(_)), "{msg}");
        assert!(msg.ends_with(&p.display().to_string()), "{msg}");
    }
    // A truncated JPEG either fails naming the file or decodes partly.
    let r = det.faces_in_image(&truncated, FaceOptions::default());
    if let Some(ImageFacesError::Image(e)) = &r.error {
        assert!(e.to_string().contains("truncated.jpg"), "{e}");
    }
}

#[test]
fn aligned_faces_put_landmarks_on_the_template() {
    let det = detector();
    for name in [
        "ciplab_fake_mid_109_1111.jpg",
        "ffhq_stylegan2_real_323.jpg",
        "dfdc_real_vyaxwjevgp.jpg",
    ] {
        let img = sample(name);
        let r = det.faces_in_rgb(&img, Path::new(name), FaceOptions::default());
        assert_eq!(r.faces.len(), 1, "{name}");
        let (f, a) = (&r.faces[0], &r.aligned[0]);
        assert!(inside(f, img.width(), img.height()));
        // A similarity transform fits 5 landmarks up to expression and
        // pose: within a quarter of the template's eye distance.
        let eyes = TEMPLATE_LANDMARKS[1][0] - TEMPLATE_LANDMARKS[0][0];
        for (p, t) in a.landmarks_aligned.iter().zip(TEMPLATE_LANDMARKS.iter()) {
            let d = (p[0] - t[0]).hypot(p[1] - t[1]);
            assert!(d < 0.25 * eyes, "{name}: {p:?} vs {t:?}");
        }
        // The inverse transform maps the aligned landmarks back.
        for (p, q) in a.landmarks_aligned.iter().zip(f.landmarks.iter()) {
            let o = a.point_to_original(*p);
            assert!((o[0] - q[0]).abs() < 0.05 && (o[1] - q[1]).abs() < 0.05);
        }
        // Region masks from the aligned landmarks: the eye masks are
        // largest near the detected eyes, mapped back.
        let masks = region_masks(&a.landmarks_aligned, 224.0, 14);
        assert_eq!(masks.len(), REGIONS.len());
        let eye = &masks[Region::LeftEye.index()];
        let (best, _) = eye
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        #[allow(clippy::cast_precision_loss)]
        let centre = [
            (best % 14) as f32 * 16.0 + 7.5,
            (best / 14) as f32 * 16.0 + 7.5,
        ];
        let o = a.point_to_original(centre);
        let d = (o[0] - f.landmarks[0][0]).hypot(o[1] - f.landmarks[0][1]);
        assert!(
            d < 16.0 / a.scale(),
            "{name}: eye mask peak {d} px from the eye"
        );
    }
}
