//! Can fakes made without a generator teach what a generator leaves? An
//! auto-encoder with a generator's upsampling path (transposed
//! convolutions from a 28 × 28 code), trained on real training faces of the
//! chosen domains only, re-draws every face; its reconstructions are fakes
//! with a decoder's traces and none of a blend's (the idea of `AutoGAN`,
//! Zhang et al. 2019). Writes the reconstructions and their `faceres`
//! descriptors for `examples/ae_study.py`, which asks whether a probe
//! fitted with them ranks a generator it never saw:
//!
//! ```text
//! cargo run --release --example spectrum_study -- FACES_DIR
//! cargo run --release --example ae_study -- FACES_DIR OUT_DIR STEPS ciplab dfdc
//! python3 examples/ae_study.py FACES_DIR OUT_DIR ORIGINAL_DESCRIPTORS.f32
//! ```
//!
//! Reads `FACES_DIR/meta.csv` and `FACES_DIR/faces224.u8`; writes
//! `OUT_DIR/recon224.u8` (every row re-drawn), `OUT_DIR/recon.f32` (their
//! 2816-value descriptors) and `OUT_DIR/ae.log`. A research script: it
//! stops at the first problem.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod common;

use std::io::Write;
use std::path::PathBuf;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{
    AdamW, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Optimizer, ParamsAdamW,
    VarBuilder, VarMap,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 224;
const ROW: usize = SIZE * SIZE * 3;

struct Ae {
    enc: Vec<Conv2d>,
    dec: Vec<ConvTranspose2d>,
    to_code: Conv2d,
    from_code: Conv2d,
}

impl Ae {
    fn new(vb: &VarBuilder) -> Self {
        let down = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Conv2dConfig::default()
        };
        let up = ConvTranspose2dConfig {
            padding: 1,
            stride: 2,
            ..ConvTranspose2dConfig::default()
        };
        let widths = [3, 32, 64, 128];
        let enc = (0..3)
            .map(|i| {
                candle_nn::conv2d(widths[i], widths[i + 1], 4, down, vb.pp(format!("enc{i}")))
                    .unwrap()
            })
            .collect();
        let dec = (0..3)
            .map(|i| {
                candle_nn::conv_transpose2d(
                    widths[3 - i],
                    widths[2 - i],
                    4,
                    up,
                    vb.pp(format!("dec{i}")),
                )
                .unwrap()
            })
            .collect();
        let one = Conv2dConfig::default();
        Self {
            enc,
            dec,
            to_code: candle_nn::conv2d(128, 32, 1, one, vb.pp("to_code")).unwrap(),
            from_code: candle_nn::conv2d(32, 128, 1, one, vb.pp("from_code")).unwrap(),
        }
    }

    /// `x`: `[B, 3, 224, 224]` in [0, 1]; the reconstruction, same shape.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.clone();
        for c in &self.enc {
            h = c.forward(&h).unwrap().relu().unwrap();
        }
        h = self.to_code.forward(&h).unwrap();
        h = self.from_code.forward(&h).unwrap().relu().unwrap();
        for (i, c) in self.dec.iter().enumerate() {
            h = c.forward(&h).unwrap();
            if i < 2 {
                h = h.relu().unwrap();
            }
        }
        candle_nn::ops::sigmoid(&h).unwrap()
    }
}

fn batch(faces: &[u8], rows: &[usize]) -> Tensor {
    let mut flat = Vec::with_capacity(rows.len() * ROW);
    for &r in rows {
        flat.extend(
            faces[r * ROW..(r + 1) * ROW]
                .iter()
                .map(|&v| f32::from(v) / 255.0),
        );
    }
    Tensor::from_vec(flat, (rows.len(), SIZE, SIZE, 3), &Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
}

fn to_bytes(t: &Tensor) -> Vec<Vec<u8>> {
    let t = t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    let b = t.dim(0).unwrap();
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..b)
        .map(|i| {
            v[i * ROW..(i + 1) * ROW]
                .iter()
                .map(|x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
                .collect()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let faces_dir = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    let steps: usize = args[3].parse().unwrap();
    let domains: Vec<&str> = args[4..].iter().map(String::as_str).collect();
    std::fs::create_dir_all(&out).unwrap();
    let mut log = std::fs::File::create(out.join("ae.log")).unwrap();

    let meta = std::fs::read_to_string(faces_dir.join("meta.csv")).unwrap();
    let rows: Vec<Vec<String>> = meta
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let faces = std::fs::read(faces_dir.join("faces224.u8")).unwrap();
    assert_eq!(faces.len(), rows.len() * ROW);
    // Real training faces of the chosen domains, with a face found.
    let train: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            domains.contains(&r[0].as_str()) && r[1] == "real" && r[2] == "Train" && r[3] == "true"
        })
        .map(|(i, _)| i)
        .collect();
    writeln!(log, "{} real training faces of {domains:?}", train.len()).unwrap();

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let ae = Ae::new(&vb);
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 2e-3,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let t0 = std::time::Instant::now();
    let bsz = 16;
    let mut order = train.clone();
    let mut at = order.len();
    for step in 0..steps {
        let mut pick = Vec::with_capacity(bsz);
        while pick.len() < bsz {
            if at == order.len() {
                order.shuffle(&mut rng);
                at = 0;
            }
            pick.push(order[at]);
            at += 1;
        }
        let x = batch(&faces, &pick);
        // A random horizontal flip per batch.
        let x = if rng.random_bool(0.5) {
            x.flip(&[3]).unwrap()
        } else {
            x
        };
        let y = ae.forward(&x);
        let loss = (y - &x).unwrap().abs().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
        if step % 20 == 0 || step + 1 == steps {
            let l = loss.to_scalar::<f32>().unwrap();
            writeln!(
                log,
                "step {step} L1 {l:.4} {:.0} s",
                t0.elapsed().as_secs_f32()
            )
            .unwrap();
            eprintln!("step {step} L1 {l:.4} {:.0} s", t0.elapsed().as_secs_f32());
        }
    }
    varmap.save(out.join("ae.safetensors")).unwrap();

    // Every row re-drawn (rows without a face stay zeros), then described.
    let weights = std::env::var("SFAM_STUDY_FACERES")
        .unwrap_or_else(|_| "models/faceres/faceres.safetensors".into());
    let net =
        sfam_studio::model::faceres::FaceRes::load(std::path::Path::new(&weights), &Device::Cpu)
            .unwrap();
    let mut recon = std::fs::File::create(out.join("recon224.u8")).unwrap();
    let mut desc = std::fs::File::create(out.join("recon.f32")).unwrap();
    let all: Vec<usize> = (0..rows.len()).collect();
    for chunk in all.chunks(32) {
        let y = ae.forward(&batch(&faces, chunk));
        let mut imgs = to_bytes(&y);
        for (img, &r) in imgs.iter_mut().zip(chunk) {
            if rows[r][3] != "true" {
                img.fill(0);
            }
            recon.write_all(img).unwrap();
        }
        desc.write_all(&common::descriptor_bytes(&net, &imgs, SIZE))
            .unwrap();
    }
    writeln!(log, "done in {:.0} s", t0.elapsed().as_secs_f32()).unwrap();
}
