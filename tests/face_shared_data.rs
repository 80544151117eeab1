//! Detection rates on `../shared/data` (not in a fresh clone, hence
//! ignored; `.ci/run` includes ignored tests when the folder exists):
//! at least 99% of the CIPLAB and FFHQ/StyleGAN2 images must give a face.
//! Prints each domain's rate, DFDC's precropped fraction (tight-crop
//! fallback) and the mean landmark positions of the faces detected in the
//! DFDC crops, which `TIGHT_CROP_LANDMARKS` is taken from.
//!
//! ```text
//! cargo test --release --test face_shared_data -- --ignored --nocapture
//! ```

// Helpers may unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sfam_studio::data::is_image_path;
use sfam_studio::face::{FaceDetector, FaceOptions};

fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

fn images(domain: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(domain)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && is_image_path(e.path()))
        .map(walkdir::DirEntry::into_path)
        .collect();
    out.sort();
    out
}

struct Rates {
    n: usize,
    detected: usize,
    precropped: usize,
    errors: Vec<String>,
    /// Sum of landmark positions as fractions of the image size, over
    /// images with exactly one face.
    landmark_sum: [[f64; 2]; 5],
    single: usize,
}

fn measure(det: &FaceDetector, domain: &str, options: FaceOptions) -> Rates {
    let paths = images(&shared_data().join(domain));
    assert!(!paths.is_empty(), "no images in {domain}");
    let results: Vec<_> = paths
        .par_iter()
        .map(|p| {
            let r = det.faces_in_image(p, options);
            let lm = (r.faces.len() == 1 && !r.precropped).then(|| {
                let (w, h) = r.size.unwrap_or((1, 1));
                r.faces[0].landmarks.map(|[x, y]| {
                    [
                        f64::from(x + 0.5) / f64::from(w),
                        f64::from(y + 0.5) / f64::from(h),
                    ]
                })
            });
            let err = match &r.error {
                Some(sfam_studio::face::ImageFacesError::NoFace { .. }) | None => None,
                Some(e) => Some(e.to_string()),
            };
            (!r.faces.is_empty() && !r.precropped, r.precropped, err, lm)
        })
        .collect();
    let mut rates = Rates {
        n: results.len(),
        detected: 0,
        precropped: 0,
        errors: Vec::new(),
        landmark_sum: [[0.0; 2]; 5],
        single: 0,
    };
    for (detected, precropped, err, lm) in results {
        rates.detected += usize::from(detected);
        rates.precropped += usize::from(precropped);
        rates.errors.extend(err);
        if let Some(lm) = lm {
            rates.single += 1;
            for (s, p) in rates.landmark_sum.iter_mut().zip(lm) {
                s[0] += p[0];
                s[1] += p[1];
            }
        }
    }
    rates
}

#[allow(clippy::cast_precision_loss)]
fn pct(a: usize, n: usize) -> f64 {
    100.0 * a as f64 / n as f64
}

#[test]
#[ignore = "needs ../shared/data (not in a fresh clone)"]
fn detection_rates_per_domain() {
    let det = FaceDetector::load_default().unwrap();
    let mut report = Vec::new();
    for (domain, tight) in [("ciplab", false), ("ffhq_stylegan2", false), ("dfdc", true)] {
        let r = measure(&det, domain, FaceOptions { tight_crops: tight });
        assert!(r.errors.is_empty(), "{domain}: {:?}", r.errors);
        println!(
            "{domain}: {} images, face detected in {} ({:.2}%), precropped {} ({:.2}%)",
            r.n,
            r.detected,
            pct(r.detected, r.n),
            r.precropped,
            pct(r.precropped, r.n)
        );
        if r.single > 0 {
            #[allow(clippy::cast_precision_loss)]
            let mean = r
                .landmark_sum
                .map(|[x, y]| [x / r.single as f64, y / r.single as f64]);
            println!(
                "  mean landmarks (fractions of the image), {} faces: {mean:.3?}",
                r.single
            );
        }
        report.push((domain, pct(r.detected, r.n), r.n, r.detected + r.precropped));
    }
    for (domain, rate, n, covered) in report {
        if domain == "dfdc" {
            assert_eq!(
                covered, n,
                "every DFDC crop gives a face or a precropped stand-in"
            );
        } else {
            assert!(
                rate >= 99.0,
                "{domain}: faces in only {rate:.2}% of the images"
            );
        }
    }
}
