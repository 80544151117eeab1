//! How large should the face be in the aligned crop? Features of the
//! pretrained `faceres` network for every face of `../shared/data`, aligned
//! to the `ArcFace` template at several scales (the same MTCNN detections,
//! the same split as `sfam train`), for the logistic-regression probe of
//! `examples/template_study.py`. Behind `src/face/template.rs`'s choice.
//!
//! ```text
//! cargo run --release --example template_study -- OUT_DIR 1.4 1.8 2.2
//! python3 examples/template_study.py OUT_DIR scale1.4 scale1.8 scale2.2
//! ```
//!
//! Writes `OUT_DIR/meta.csv` (dataset, label, split, face found) and per
//! scale `OUT_DIR/scale<S>.f32`: float32 rows of 2048 values — the pooled
//! 1024-d feature, then the mean and the max over the 14×14 map's 512
//! channels — and `example_<S>.png`, the first face at that scale.
//! A research script: it stops at the first problem.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::many_single_char_names
)]

mod common;

use candle_core::{D, Tensor};
use rayon::prelude::*;
use sfam_studio::face::template::ARCFACE_112;
use sfam_studio::model::faceres::FaceRes;

fn feats(net: &FaceRes, imgs: &[Vec<u8>]) -> Vec<f32> {
    let mut out = Vec::new();
    for chunk in imgs.chunks(32) {
        let px = common::pixels(chunk.iter().map(Vec::as_slice), 224);
        let (patch, pooled) = net.forward_nhwc(&px).unwrap();
        let (b, h, w, c) = patch.dims4().unwrap();
        let p = patch.reshape((b, h * w, c)).unwrap();
        let mean = p.mean(D::Minus2).unwrap();
        let max = p.max(D::Minus2).unwrap();
        let all = Tensor::cat(&[&pooled, &mean, &max], 1).unwrap();
        out.extend(all.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn main() {
    let (out, scales, found, net) = common::detecting_study::<f32>();
    for s in scales {
        // Centred horizontally; vertically shifted up in proportion to the
        // scale (8 px at 1.4, as the first template was).
        let shift = 8.0 * s / 1.4;
        let tmpl =
            ARCFACE_112.map(|[x, y]| [x * s + 112.0 - 56.0 * s, y * s + 112.0 - 56.0 * s - shift]);
        let imgs: Vec<Vec<u8>> = found
            .par_iter()
            .map(|f| common::aligned(f, &tmpl, 224))
            .collect();
        if let Some(i) = found.iter().position(Option::is_some) {
            image::RgbImage::from_raw(224, 224, imgs[i].clone())
                .unwrap()
                .save(out.join(format!("example_{s}.png")))
                .unwrap();
        }
        let t = std::time::Instant::now();
        let v = feats(&net, &imgs);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(out.join(format!("scale{s}.f32")), bytes).unwrap();
        eprintln!("scale {s}: {:?}", t.elapsed());
    }
}
