//! Should tight face crops (DFDC's) be used whole instead of shrunk into
//! the alignment template? The pretrained `faceres` descriptor (as
//! `res_study`: pooled vector, map mean, texture statistics; 2816 values)
//! of every face of `../shared/data`, aligned to the shipped template
//! (`aligned.f32`) and as the whole image, centre square resized to 224
//! (`whole.f32`), with each face's eye distance over the image's shorter
//! side (`tightness.csv`), for `examples/crop_study.py`.
//!
//! ```text
//! cargo run --release --example crop_study -- OUT_DIR
//! python3 examples/crop_study.py OUT_DIR
//! ```
//!
//! A research script: it stops at the first problem.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::many_single_char_names
)]

mod common;

use rayon::prelude::*;
use sfam_studio::face::align::warp;
use sfam_studio::face::template::TEMPLATE_LANDMARKS;
use std::io::Write;

fn main() {
    let (out, _, found, net) = common::detecting_study::<u32>();
    let mut tight = std::fs::File::create(out.join("tightness.csv")).unwrap();
    writeln!(tight, "tightness").unwrap();
    for f in &found {
        let t = f.as_ref().map_or(0.0, |(img, lm)| {
            let d = ((lm[0][0] - lm[1][0]).powi(2) + (lm[0][1] - lm[1][1]).powi(2)).sqrt();
            d / img.width().min(img.height()) as f32
        });
        writeln!(tight, "{t}").unwrap();
    }
    for mode in ["aligned", "whole"] {
        let t = std::time::Instant::now();
        let mut bytes = Vec::new();
        for chunk in found.chunks(32) {
            let imgs: Vec<Vec<u8>> = chunk
                .par_iter()
                .map(|f| match f {
                    Some(_) if mode == "aligned" => common::aligned(f, &TEMPLATE_LANDMARKS, 224),
                    Some((img, _)) => {
                        let side = img.width().min(img.height()) as f32;
                        let s = side / 224.0;
                        let ox = (img.width() as f32 - side) / 2.0;
                        let oy = (img.height() as f32 - side) / 2.0;
                        // Output pixel centres onto the source's.
                        let to_original =
                            [[s, 0.0, ox + 0.5 * s - 0.5], [0.0, s, oy + 0.5 * s - 0.5]];
                        warp(img, &to_original, 224).into_raw()
                    }
                    None => vec![0u8; 224 * 224 * 3],
                })
                .collect();
            bytes.extend(common::descriptor_bytes(&net, &imgs, 224));
        }
        std::fs::write(out.join(format!("{mode}.f32")), bytes).unwrap();
        eprintln!("{mode}: {:?}", t.elapsed());
    }
}
