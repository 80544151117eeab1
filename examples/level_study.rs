//! Which depth of the pretrained `faceres` network tells real from fake?
//! For every face of `../shared/data`, aligned exactly as `sfam train`
//! aligns it (read from a training run's `faces.safetensors`), the output of
//! each of the 13 blocks summarised per channel by its spatial mean and
//! standard deviation, and the 14 × 14 maps of blocks 7, 9 and 11 (11: the
//! SFAM patch grid) summarised under each of the nine region masks — for the logistic-regression probe
//! of `examples/level_study.py`.
//!
//! ```text
//! cargo run --release --example level_study -- RUN_DIR/faces.safetensors OUT_DIR
//! python3 examples/level_study.py OUT_DIR
//! ```
//!
//! Writes `OUT_DIR/meta.csv` (dataset, label, split, face found),
//! `OUT_DIR/block<K>.f32` (float32 rows: the K-th block's channel means,
//! then its channel standard deviations), `OUT_DIR/pooled.f32` (the
//! network's 1024-d pooled vector), `OUT_DIR/regions{7,9,11}.f32` (9 × 512
//! mask-weighted region means of blocks 7, 9, 11, region-major) and
//! `OUT_DIR/regionstd{9,11}.f32` (the mask-weighted standard deviations). A research script: it stops
//! at the first problem.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::many_single_char_names
)]

mod common;

use candle_core::{D, Device, Tensor};
use sfam_studio::face::regions::region_masks;
use sfam_studio::model::faceres::FaceRes;
use sfam_studio::train::data::{collect_samples, prepare_faces};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn append(files: &mut [std::fs::File], k: usize, t: &Tensor) {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    files[k].write_all(&bytes).unwrap();
}

/// Mask-weighted mean and standard deviation of `rows` `[B, N, C]` under
/// `masks` `[B, R, N]`: `[B, R, C]` each.
fn region_stats(masks: &Tensor, rows: &Tensor) -> (Tensor, Tensor) {
    let sums = (masks.sum_keepdim(D::Minus1).unwrap() + 1e-6).unwrap();
    let mean = masks.matmul(rows).unwrap().broadcast_div(&sums).unwrap();
    let second = masks
        .matmul(&rows.sqr().unwrap())
        .unwrap()
        .broadcast_div(&sums)
        .unwrap();
    let var = (second - mean.sqr().unwrap()).unwrap().relu().unwrap();
    (mean, var.sqrt().unwrap())
}

fn main() {
    let cache = PathBuf::from(std::env::args().nth(1).expect("usage: FACES OUT_DIR"));
    let out = PathBuf::from(std::env::args().nth(2).expect("usage: FACES OUT_DIR"));
    std::fs::create_dir_all(&out).unwrap();
    let samples = collect_samples(&[PathBuf::from("../shared/data")], 0.2).unwrap();
    let cancel = AtomicBool::new(false);
    let (faces, _) = prepare_faces(&samples, &cache, &|_, _| {}, &cancel).unwrap();
    common::write_meta(&out, &samples, faces.iter().map(Option::is_some));
    let net = FaceRes::load(
        Path::new("models/faceres/faceres.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // Files 0..13: blocks 1..=13; 13: pooled; 14: regions of block 11;
    // 15..=18: region means of blocks 7 and 9, region standard deviations
    // of blocks 9 and 11.
    let mut files: Vec<std::fs::File> = (1..=13)
        .map(|k| format!("block{k}.f32"))
        .chain(
            [
                "pooled",
                "regions11",
                "regions7",
                "regions9",
                "regionstd9",
                "regionstd11",
            ]
            .map(|n| format!("{n}.f32")),
        )
        .map(|n| std::fs::File::create(out.join(n)).unwrap())
        .collect();
    let t = std::time::Instant::now();
    let blank = image::RgbImage::new(224, 224);
    let template = sfam_studio::face::template::TEMPLATE_LANDMARKS;
    for chunk in faces.chunks(32) {
        let b = chunk.len();
        let masks: Vec<f32> = chunk
            .iter()
            .flat_map(|f| region_masks(&f.as_ref().map_or(template, |f| f.landmarks), 224.0, 14))
            .flatten()
            .collect();
        let masks = Tensor::from_vec(masks, (b, 9, 196), &Device::Cpu).unwrap();
        let px = common::pixels(
            chunk
                .iter()
                .map(|f| f.as_ref().map_or(&blank, |f| &f.image).as_raw().as_slice()),
            224,
        );
        let mut x = net.forward_prefix(&px, 0).unwrap();
        for k in 0..13 {
            x = net.forward_blocks(&x, k, k + 1).unwrap();
            let (_, h, w, c) = x.dims4().unwrap();
            let rows = x.reshape((b, h * w, c)).unwrap();
            let mean = rows.mean(D::Minus2).unwrap();
            let var = rows
                .broadcast_sub(&mean.unsqueeze(1).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .mean(D::Minus2)
                .unwrap();
            let both = Tensor::cat(&[&mean, &var.sqrt().unwrap()], 1).unwrap();
            append(&mut files, k, &both);
            if k == 12 {
                append(&mut files, 13, &mean);
            }
            if [6, 8, 10].contains(&k) {
                let (region, std) = region_stats(&masks, &rows);
                match k {
                    6 => append(&mut files, 15, &region),
                    8 => {
                        append(&mut files, 16, &region);
                        append(&mut files, 17, &std);
                    }
                    _ => {
                        append(&mut files, 14, &region);
                        append(&mut files, 18, &std);
                    }
                }
            }
        }
    }
    eprintln!("features of {} faces in {:?}", faces.len(), t.elapsed());
}
