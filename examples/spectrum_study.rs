//! Do frequency statistics of the aligned face tell real from fake on a
//! domain they were never fitted on? Writes every face of `../shared/data`,
//! aligned as `sfam score` aligns it (224 × 224, the same MTCNN detections
//! and split as `sfam train`), for `examples/spectrum_study.py`:
//!
//! ```text
//! cargo run --release --example spectrum_study -- OUT_DIR
//! python3 examples/spectrum_study.py OUT_DIR [DESCRIPTOR.f32]
//! ```
//!
//! Writes `OUT_DIR/meta.csv` and `OUT_DIR/faces224.u8` (a row of
//! 224 × 224 × 3 RGB bytes per sample; zeros where no face was found).
//! A research script: it stops at the first problem.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use rayon::prelude::*;
use sfam_studio::face::template::TEMPLATE_LANDMARKS;

fn main() {
    let (out, _, found, _) = common::detecting_study::<u32>();
    let bytes: Vec<u8> = found
        .par_iter()
        .flat_map_iter(|f| common::aligned(f, &TEMPLATE_LANDMARKS, 224))
        .collect();
    std::fs::write(out.join("faces224.u8"), bytes).unwrap();
}
