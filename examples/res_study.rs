//! Does a larger aligned face help? The pretrained `faceres` descriptor that
//! the SFAM global token reads (pooled vector, the patch map's mean, the
//! texture statistics: 2816 values) for every face of `../shared/data`,
//! aligned to the shipped template scaled to several output sizes (224 is
//! what `sfam score` does; 448 keeps a DFDC crop at its own resolution) —
//! the same MTCNN detections and split as `sfam train` — for the
//! logistic-regression probe of `examples/template_study.py`.
//!
//! ```text
//! cargo run --release --example res_study -- OUT_DIR 224 320 448
//! python3 examples/template_study.py OUT_DIR size224 size320 size448
//! ```
//!
//! Writes `OUT_DIR/meta.csv` and per size `OUT_DIR/size<S>.f32` (float32
//! rows of 2816 values). A research script: it stops at the first problem.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::many_single_char_names
)]

mod common;

use rayon::prelude::*;
use sfam_studio::face::template::TEMPLATE_LANDMARKS;

fn main() {
    let (out, sizes, found, net) = common::detecting_study::<u32>();
    for size in sizes {
        let k = size as f32 / 224.0;
        let tmpl = TEMPLATE_LANDMARKS.map(|[x, y]| [x * k, y * k]);
        let s = size as usize;
        let t = std::time::Instant::now();
        let mut bytes = Vec::new();
        for chunk in found.chunks(32) {
            let imgs: Vec<Vec<u8>> = chunk
                .par_iter()
                .map(|f| common::aligned(f, &tmpl, size))
                .collect();
            bytes.extend(common::descriptor_bytes(&net, &imgs, s));
        }
        std::fs::write(out.join(format!("size{size}.f32")), bytes).unwrap();
        eprintln!("size {size}: {:?}", t.elapsed());
    }
}
