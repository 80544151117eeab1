//! The candle `faceres` network against the numpy interpreter of the
//! original TF.js graph (`models/faceres/convert.py` writes
//! `tests/fixtures/faceres/reference.json`).
//!
//! Tolerance: every compared value `a` (candle, f32) and its reference `r`
//! (numpy, f64) satisfy `|a - r| <= 1e-3 * max(|r|, s)`, with `s` the largest
//! magnitude of the compared quantity (the pooled vector, or the map's
//! maximum for single map values and mean/std): relative error on large
//! values, and no division by values that are nearly zero.

// Helpers unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use sfam_studio::data::image::load_rgb;
use sfam_studio::model::faceres::FaceRes;

const TOL: f64 = 1e-3;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn weights() -> PathBuf {
    root().join("models/faceres/faceres.safetensors")
}

fn fixture() -> serde_json::Value {
    let path = root().join("tests/fixtures/faceres/reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// NHWC u8 RGB → `[1, 3, H, W]` raw 0–255 f32.
fn to_tensor(img: &image::RgbImage) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v)).collect();
    Tensor::from_vec(data, (1, h, w, 3), &Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
}

/// The synthetic input of the fixture:
/// `v[y][x][c] = (7*x + 13*y + 50*c + (x*y) % 31) % 256`.
fn synthetic() -> Tensor {
    let mut data = vec![0f32; 3 * 224 * 224];
    for c in 0..3usize {
        for y in 0..224usize {
            for x in 0..224usize {
                let v = (7 * x + 13 * y + 50 * c + (x * y) % 31) % 256;
                #[allow(clippy::cast_precision_loss)]
                {
                    data[(c * 224 + y) * 224 + x] = v as f32;
                }
            }
        }
    }
    Tensor::from_vec(data, (1, 3, 224, 224), &Device::Cpu).unwrap()
}

fn case_input(case: &serde_json::Value) -> Tensor {
    if let Some(png) = case["png"].as_str() {
        let img = load_rgb(&root().join("tests/fixtures/faceres").join(png)).unwrap();
        assert_eq!((img.width(), img.height()), (224, 224));
        to_tensor(&img)
    } else {
        assert_eq!(
            case["formula"].as_str().unwrap(),
            "v[y][x][c] = (7*x + 13*y + 50*c + (x*y) % 31) % 256"
        );
        synthetic()
    }
}

fn as_f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Largest `|a - r| / max(|r|, scale)`.
fn worst(a: &[f64], r: &[f64], scale: f64) -> f64 {
    a.iter()
        .zip(r)
        .map(|(a, r)| (a - r).abs() / r.abs().max(scale))
        .fold(0.0, f64::max)
}

#[test]
fn faceres_matches_the_tfjs_graph() {
    let model = FaceRes::load(&weights(), &Device::Cpu).unwrap();
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    let inputs: Vec<Tensor> = cases.iter().map(case_input).collect();
    let batch = Tensor::cat(&inputs, 0).unwrap();
    let (patch, pooled) = model.forward(&batch).unwrap();
    assert_eq!(patch.dims(), &[4, 512, 14, 14]);
    assert_eq!(pooled.dims(), &[4, 1024]);
    let patch = patch.to_dtype(candle_core::DType::F64).unwrap();
    let pooled: Vec<Vec<f64>> = pooled
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut overall: f64 = 0.0;
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        // Pooled descriptor.
        let r = as_f64s(&case["pooled"]);
        let scale = r.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let e_pool = worst(&pooled[i], &r, scale);
        // Map values at fixed positions, mean, std.
        let map = patch.get(i).unwrap();
        let map_max = case["patch_max"].as_f64().unwrap();
        let mut got = Vec::new();
        let mut want = Vec::new();
        for p in case["patch_values"].as_array().unwrap() {
            let p = as_f64s(p);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (c, y, x) = (p[0] as usize, p[1] as usize, p[2] as usize);
            got.push(
                map.get(c)
                    .unwrap()
                    .get(y)
                    .unwrap()
                    .get(x)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap(),
            );
            want.push(p[3]);
        }
        let flat = map.flatten_all().unwrap();
        let mean = flat.mean_all().unwrap().to_scalar::<f64>().unwrap();
        let var = flat
            .broadcast_sub(&Tensor::new(mean, &Device::Cpu).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        got.extend([mean, var.sqrt()]);
        want.extend([
            case["patch_mean"].as_f64().unwrap(),
            case["patch_std"].as_f64().unwrap(),
        ]);
        let e_map = worst(&got, &want, map_max);
        println!("{name}: pooled rel err {e_pool:.2e}, map values/mean/std rel err {e_map:.2e}");
        assert!(e_pool <= TOL, "{name}: pooled rel err {e_pool}");
        assert!(e_map <= TOL, "{name}: map rel err {e_map}");
        overall = overall.max(e_pool).max(e_map);
    }
    println!("worst relative error over all cases: {overall:.2e}");
}

/// The pipeline a caller uses (decode with `load_rgb`, resize with the
/// `image` crate's Triangle filter) against PIL's bilinear resize of the
/// fixture: pixels and descriptors stay close, though not within the 1e-3
/// of the exact-input test (JPEG decoders and resampling rounding differ).
#[test]
fn triangle_resize_is_close_to_pil_bilinear() {
    let model = FaceRes::load(&weights(), &Device::Cpu).unwrap();
    let fx = fixture();
    for case in fx["cases"].as_array().unwrap() {
        let Some(src) = case["source"].as_str() else {
            continue;
        };
        let img = load_rgb(&root().join(src)).unwrap();
        let img = if img.dimensions() == (224, 224) {
            img
        } else {
            image::imageops::resize(&img, 224, 224, FilterType::Triangle)
        };
        let png = root()
            .join("tests/fixtures/faceres")
            .join(case["png"].as_str().unwrap());
        let pil = load_rgb(&png).unwrap();
        let (mut max_d, mut sum_d) = (0u8, 0u64);
        for (a, b) in img.as_raw().iter().zip(pil.as_raw()) {
            let d = a.abs_diff(*b);
            max_d = max_d.max(d);
            sum_d += u64::from(d);
        }
        #[allow(clippy::cast_precision_loss)]
        let mean_d = sum_d as f64 / img.as_raw().len() as f64;
        let (_, pooled) = model.forward(&to_tensor(&img)).unwrap();
        let a: Vec<f64> = pooled
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let r = as_f64s(&case["pooled"]);
        let dot: f64 = a.iter().zip(&r).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nr: f64 = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (na * nr);
        println!(
            "{src}: pixel |diff| max {max_d} mean {mean_d:.3}; pooled cosine {cos:.5}, rel err {:.2e}",
            worst(&a, &r, r.iter().fold(0.0f64, |m, v| m.max(v.abs())))
        );
        assert!(cos > 0.99, "{src}: cosine {cos}");
    }
}

#[test]
fn load_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    // A file with a missing tensor names the file and the tensor.
    let bad = dir.path().join("bad.safetensors");
    let t = Tensor::zeros((32, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("conv1.weight".to_owned(), t)]),
        &bad,
    )
    .unwrap();
    let err = FaceRes::load(&bad, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("conv1.bias") && err.contains("bad.safetensors"),
        "{err}"
    );
    // A missing file is an I/O error naming it.
    let err = FaceRes::load(Path::new("/nonexistent/faceres.safetensors"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/faceres.safetensors"), "{err}");
}

/// Forward time on a batch of 8 (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore = "timing only"]
fn faceres_forward_time_batch_8() {
    let model = FaceRes::load(&weights(), &Device::Cpu).unwrap();
    let x = synthetic().repeat((8, 1, 1, 1)).unwrap();
    model.forward(&x).unwrap();
    // Best and mean of 7 runs (the best is the least disturbed by other load).
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        model.forward(&x).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    #[allow(clippy::cast_precision_loss)]
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "faceres forward, batch 8: best {:.1} ms per batch = {:.1} ms per face ({:.0} faces/s); mean {:.1} ms per batch",
        best * 1e3,
        best * 1e3 / 8.0,
        8.0 / best,
        mean * 1e3
    );
}
