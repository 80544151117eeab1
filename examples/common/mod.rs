//! Shared by the research examples (`template_study`, `level_study`,
//! `res_study`, `crop_study`; `backbone_study.py` reads `res_study`'s).

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sfam_studio::face::{FaceDetector, FaceOptions};
use sfam_studio::model::faceres::FaceRes;
use sfam_studio::train::data::{Sample, collect_samples};

/// An image with its first face's five landmarks.
#[allow(dead_code)] // not every example detects
pub type Found = Option<(image::RgbImage, [[f32; 2]; 5])>;

/// Every sample's image and first face (MTCNN with the tight-crop
/// fallback, as `sfam train`), in sample order; `None` where no face was
/// found or the file did not decode.
#[allow(dead_code)] // not every example detects
pub fn detect_all(samples: &[Sample]) -> Vec<Found> {
    let det = FaceDetector::load_default().unwrap();
    let t = std::time::Instant::now();
    let found: Vec<Found> = samples
        .par_iter()
        .map(|s| {
            let bytes = sfam_studio::data::image::read_image_bytes(&s.path).ok()?;
            let img = sfam_studio::data::image::decode_rgb(&bytes, &s.path).ok()?;
            let r = det.faces_in_rgb(&img, &s.path, FaceOptions { tight_crops: true });
            Some((img, r.faces.first()?.landmarks))
        })
        .collect();
    eprintln!(
        "detected {} in {:?}",
        found.iter().filter(|f| f.is_some()).count(),
        t.elapsed()
    );
    found
}

/// `found`'s face aligned to the landmark template `tmpl` as a `size` ×
/// `size` RGB image, row-major bytes; zeros where no face was found.
#[allow(dead_code)] // not every example aligns
pub fn aligned(found: &Found, tmpl: &[[f32; 2]; 5], size: u32) -> Vec<u8> {
    use sfam_studio::face::align::{invert, similarity, warp};
    match found {
        Some((img, lm)) => {
            let to_al = similarity(lm, tmpl).unwrap();
            warp(img, &invert(&to_al).unwrap(), size).into_raw()
        }
        None => vec![0u8; (size * size * 3) as usize],
    }
}

/// Writes `out/meta.csv`: each sample's dataset, label, split, whether a
/// face was found (`found`, in sample order) and path, the rows of the
/// feature files.
pub fn write_meta(out: &Path, samples: &[Sample], found: impl Iterator<Item = bool>) {
    let mut meta = std::fs::File::create(out.join("meta.csv")).unwrap();
    writeln!(meta, "dataset,label,split,has_face,path").unwrap();
    for (s, f) in samples.iter().zip(found) {
        let path = s.path.display();
        writeln!(meta, "{},{},{:?},{f},{path}", s.dataset, s.label, s.split).unwrap();
    }
}

/// `[B, 3, size, size]` raw 0–255 pixels (faceres' input) from aligned
/// `size` × `size` RGB faces, row-major bytes each.
pub fn pixels<'a>(faces: impl Iterator<Item = &'a [u8]>, size: usize) -> candle_core::Tensor {
    let mut flat = Vec::new();
    let mut b = 0;
    for face in faces {
        flat.extend(face.iter().map(|&x| f32::from(x)));
        b += 1;
    }
    candle_core::Tensor::from_vec(flat, (b, size, size, 3), &candle_core::Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
}

/// The descriptor the SFAM global token reads — pooled vector, the patch
/// map's mean, the texture statistics: 2816 values — of `size` × `size`
/// RGB faces, as little-endian float32 bytes, a row per face.
#[allow(dead_code)] // not every example uses it
pub fn descriptor_bytes(net: &FaceRes, faces: &[Vec<u8>], size: usize) -> Vec<u8> {
    use candle_core::{D, Tensor};
    let px = pixels(faces.iter().map(Vec::as_slice), size);
    let o = net.forward_output(&px).unwrap();
    let mean = o.patch_rows.mean(D::Minus2).unwrap();
    let all = Tensor::cat(&[&o.pooled, &mean, &o.texture], 1).unwrap();
    let v = all.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Where a detecting study starts: `OUT_DIR` (created) and the values after
/// it on the command line, every face of `../shared/data` found
/// ([`detect_all`]; `OUT_DIR/meta.csv` written) and the pretrained network
/// (`models/faceres/faceres.safetensors`, or the file `SFAM_STUDY_FACERES`
/// names).
#[allow(dead_code)] // not every example detects
pub fn detecting_study<T: std::str::FromStr>() -> (PathBuf, Vec<T>, Vec<Found>, FaceRes)
where
    T::Err: std::fmt::Debug,
{
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: OUT_DIR VALUE..."));
    let values: Vec<T> = std::env::args()
        .skip(2)
        .map(|s| s.parse().unwrap())
        .collect();
    std::fs::create_dir_all(&out).unwrap();
    let samples = collect_samples(&[PathBuf::from("../shared/data")], 0.2).unwrap();
    let found = detect_all(&samples);
    write_meta(&out, &samples, found.iter().map(Option::is_some));
    // Another network of faceres' graph (`models/faceres/convert.py
    // --model faceres-deep --out FILE`) by `SFAM_STUDY_FACERES=FILE`.
    let weights = std::env::var("SFAM_STUDY_FACERES")
        .unwrap_or_else(|_| "models/faceres/faceres.safetensors".into());
    eprintln!("network: {weights}");
    let net = FaceRes::load(std::path::Path::new(&weights), &candle_core::Device::Cpu).unwrap();
    (out, values, found, net)
}
