//! Training the SFAM heads on a backbone (issue 6): balanced sampling over
//! (dataset, label), augmentations and self-blended fakes, the losses of
//! `../shared/docs/SFAM.md` (cross-entropy, patch alignment, router load
//! balance), validation AUC and Cross-AUC every epoch, checkpoints, resume.
//!
//! A run writes into its output folder:
//! - `faces.safetensors`: the aligned faces of every sample (computed once
//!   by the face pipeline, reused by a resumed run);
//! - `split.csv`: every sample's split (`path,dataset,label,group,split`);
//! - `checkpoint/`: the model folder after the last finished epoch, with
//!   `state.json` (epochs done, log rows, best epoch) — a killed run
//!   resumes from it;
//! - `best/`: the model folder of the epoch with the best mean validation
//!   AUC, with its `val_scores.csv`;
//! - `train_log.csv`: one row per epoch.

pub mod augment;
pub mod data;
pub mod net;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Label;
use crate::data::scores::{ScoreFormat, ScoreRecord, write_scores};
use crate::face::regions::{REGIONS, region_masks};
use crate::metrics::{Evaluation, EvaluationOptions};
use crate::model::ModelError;
use crate::model::heads::{HEAD_FORMAT, HEAD_VERSION, HeadConfig, HeadOutput};
use crate::model::preprocess::preprocess_clip;
use augment::{AugmentOptions, BlendKind, augment, mask_to_grid, mirror_landmarks, self_blend};
use data::{PreparedFace, RegionCode, Sample, Split};
pub use net::{BackboneChoice, TrainNet};

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data cannot be used.
    #[error("{message}: {}", path.display())]
    Data {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be written or read back.
    #[error("cannot write or read ({message}): {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The model could not be built or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor computation failed.
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// Bad options.
    #[error("invalid option: {0}")]
    Options(String),
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// The prompts of a trained head; the first describes a genuine face.
pub const PROMPTS: [&str; 9] = [
    "a genuine, unmanipulated face",
    "a blending boundary around a swapped face",
    "unnatural skin texture",
    "inconsistent or distorted eyes",
    "artifacts around the mouth and teeth",
    "a distorted nose",
    "a colour mismatch between the face and its surroundings",
    "over-smoothed, blurry skin",
    "inconsistent lighting on the face",
];
const P_GENUINE: u8 = 0;
const P_BLEND: u8 = 1;
const P_EYES: u8 = 3;
const P_MOUTH: u8 = 4;
const P_NOSE: u8 = 5;
const P_COLOUR: u8 = 6;
/// "No alignment target for this patch".
const IGNORE: u8 = u8::MAX;

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset roots (`<root>/<dataset>/{real,fake}/…`).
    pub data: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// The backbone.
    pub backbone: BackboneChoice,
    /// Epochs.
    pub epochs: usize,
    /// Faces per step.
    pub batch: usize,
    /// Faces drawn per epoch (balanced over dataset × label).
    pub samples_per_epoch: usize,
    /// Peak learning rate of the head; the backbone gets a tenth.
    pub lr: f64,
    /// Token dimension of the head.
    pub dim: usize,
    /// Experts per region.
    pub experts: usize,
    /// Share of each epoch's faces that are self-blended fakes (0 = off).
    pub self_blend: f64,
    /// Share of each dataset's source groups held out for validation.
    pub val_fraction: f64,
    /// Weight of the alignment loss.
    pub align_weight: f64,
    /// Weight of the router load-balancing loss.
    pub balance_weight: f64,
    /// Augmentations.
    pub augment: AugmentOptions,
    /// Random seed (sampling, augmentation, initialisation order).
    pub seed: u64,
    /// Continue from `out/checkpoint` when it exists.
    pub resume: bool,
    /// Device.
    pub device: Device,
}

impl TrainOptions {
    /// The defaults the bundled model was trained with, for these roots,
    /// output folder and backbone.
    #[must_use]
    pub fn new(data: Vec<PathBuf>, out: PathBuf, backbone: BackboneChoice) -> Self {
        Self {
            data,
            out,
            backbone,
            epochs: 8,
            batch: 32,
            samples_per_epoch: 3072,
            lr: 1e-3,
            dim: 256,
            experts: 4,
            self_blend: 0.15,
            val_fraction: 0.2,
            align_weight: 0.5,
            balance_weight: 0.01,
            augment: AugmentOptions::default(),
            seed: 0,
            resume: true,
            device: Device::Cpu,
        }
    }

    fn head_config(&self) -> HeadConfig {
        HeadConfig {
            format: HEAD_FORMAT.into(),
            version: HEAD_VERSION,
            dim: self.dim,
            grid: [14, 14],
            adapter_hidden: self.dim,
            num_experts: self.experts,
            top_k: 2.min(self.experts),
            expert_hidden: self.dim,
            layer_norm_eps: 1e-5,
            mask_eps: 1e-6,
            prompts: PROMPTS.iter().map(|p| (*p).to_owned()).collect(),
            regions: REGIONS.iter().map(|r| r.name().to_owned()).collect(),
            backbone: None,
        }
    }
}

/// One row of `train_log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Wall time of the epoch, seconds (training and validation).
    pub seconds: f64,
    /// Mean total loss over the epoch's steps.
    pub loss: f64,
    /// Mean cross-entropy.
    pub bce: f64,
    /// Mean alignment loss.
    pub align: f64,
    /// Mean load-balancing loss.
    pub balance: f64,
    /// Validation AUC per dataset (`None`: undefined).
    pub val_auc: Vec<(String, Option<f64>)>,
    /// Mean of the defined per-dataset validation AUCs.
    pub val_auc_mean: Option<f64>,
    /// Mean off-diagonal validation Cross-AUC.
    pub val_cross_auc: Option<f64>,
}

/// Progress of a run.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Something worth a log line.
    Message(String),
    /// Aligned faces prepared so far.
    Faces {
        /// Done.
        done: usize,
        /// Of.
        total: usize,
    },
    /// A training step finished.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step in the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// This step's total loss.
        loss: f64,
    },
    /// An epoch finished (and its checkpoint is written).
    Epoch(EpochLog),
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Every epoch's log row (resumed ones included).
    pub log: Vec<EpochLog>,
    /// The epoch of `best/`.
    pub best_epoch: usize,
    /// The best model folder.
    pub best_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    best_epoch: usize,
    best_metric: f64,
    log: Vec<EpochLog>,
    /// Identifies the options that shape the model; a resume with other
    /// options is refused.
    fingerprint: String,
}

fn fingerprint(o: &TrainOptions) -> String {
    format!(
        "{:?}|dim={}|experts={}|seed={}|batch={}|spe={}|lr={}|sb={}|val={}|aw={}|bw={}|aug={:?}",
        o.backbone,
        o.dim,
        o.experts,
        o.seed,
        o.batch,
        o.samples_per_epoch,
        o.lr,
        o.self_blend,
        o.val_fraction,
        o.align_weight,
        o.balance_weight,
        o.augment
    )
}

/// A training face: which sample, and whether it becomes a self-blended fake.
#[derive(Debug, Clone, Copy)]
struct Draw {
    index: usize,
    self_blend: bool,
}

/// One epoch's faces: the same number from every (dataset, label) group,
/// plus the self-blended share drawn from the real faces.
fn draw_epoch(train: &[usize], samples: &[Sample], opts: &TrainOptions, epoch: usize) -> Vec<Draw> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        opts.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut groups: std::collections::BTreeMap<(&str, Label), Vec<usize>> =
        std::collections::BTreeMap::new();
    for &i in train {
        groups
            .entry((samples[i].dataset.as_str(), samples[i].label))
            .or_default()
            .push(i);
    }
    let reals: Vec<usize> = train
        .iter()
        .copied()
        .filter(|&i| samples[i].label == Label::Real)
        .collect();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let n_blend = if reals.is_empty() {
        0
    } else {
        (opts.samples_per_epoch as f64 * opts.self_blend.clamp(0.0, 1.0)).round() as usize
    };
    let per_group =
        (opts.samples_per_epoch - n_blend.min(opts.samples_per_epoch)) / groups.len().max(1);
    let mut out = Vec::with_capacity(opts.samples_per_epoch);
    for members in groups.values() {
        for _ in 0..per_group {
            out.push(Draw {
                index: members[rng.random_range(0..members.len())],
                self_blend: false,
            });
        }
    }
    // Rounding leaves a few places: fill them from random groups.
    let members: Vec<&Vec<usize>> = groups.values().collect();
    while !members.is_empty() && out.len() + n_blend < opts.samples_per_epoch {
        let g = members[rng.random_range(0..members.len())];
        out.push(Draw {
            index: g[rng.random_range(0..g.len())],
            self_blend: false,
        });
    }
    for _ in 0..n_blend {
        out.push(Draw {
            index: reals[rng.random_range(0..reals.len())],
            self_blend: true,
        });
    }
    rand::seq::SliceRandom::shuffle(out.as_mut_slice(), &mut rng);
    out
}

/// One face ready for the network.
struct Item {
    pixels: Vec<f32>,
    masks: Vec<f32>,
    label: f32,
    /// Per-patch prompt index, [`IGNORE`] for none; `None`: no patch
    /// targets (a fake without a mask: multiple-instance loss).
    targets: Option<Vec<u8>>,
}

#[allow(clippy::too_many_arguments)]
fn make_item(
    sample: &Sample,
    face: &PreparedFace,
    self_blended: bool,
    aug: &AugmentOptions,
    seed: u64,
    grid: usize,
    input: usize,
    norm: ([f32; 3], [f32; 3]),
) -> Item {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut img = face.image.clone();
    let mut lm = face.landmarks;
    #[allow(clippy::cast_precision_loss)]
    let size = img.width() as f32;
    let n = grid * grid;
    let region_targets = |code: RegionCode, lm: &[[f32; 2]; 5]| -> Vec<u8> {
        let masks = region_masks(lm, size, grid);
        let edited = [
            (code.left_eye, 0usize, P_EYES),
            (code.right_eye, 1, P_EYES),
            (code.nose, 2, P_NOSE),
            (code.mouth, 3, P_MOUTH),
        ];
        (0..n)
            .map(|i| {
                let mut t = P_GENUINE;
                let mut near = false;
                for &(on, r, p) in &edited {
                    if !on {
                        continue;
                    }
                    let m = masks[r][i];
                    if m > 0.5 {
                        t = p;
                    } else if m > 0.05 {
                        near = true;
                    }
                }
                if t == P_GENUINE && near { IGNORE } else { t }
            })
            .collect()
    };
    let (label, mut targets) = if self_blended {
        let sb = self_blend(&img, &lm, &mut rng);
        let g = mask_to_grid(&sb.mask, img.width(), img.height(), grid);
        let t = g
            .iter()
            .map(|&v| match sb.kind {
                BlendKind::Face if v >= 0.85 => P_COLOUR,
                BlendKind::Face if v > 0.15 => P_BLEND,
                BlendKind::Region(r) if v > 0.25 => match r.name() {
                    "nose" => P_NOSE,
                    "mouth" => P_MOUTH,
                    _ => P_EYES,
                },
                _ if v < 0.02 => P_GENUINE,
                _ => IGNORE,
            })
            .collect();
        img = sb.image;
        (1.0, Some(t))
    } else {
        match (sample.label, sample.region_code) {
            (Label::Real, _) => (0.0, Some(vec![P_GENUINE; n])),
            (Label::Fake, Some(code)) => (1.0, Some(region_targets(code, &lm))),
            (Label::Fake, None) => (1.0, None),
        }
    };
    if augment(&mut img, aug, &mut rng) {
        lm = mirror_landmarks(&lm, size);
        if let Some(t) = &mut targets {
            for row in t.chunks_mut(grid) {
                row.reverse();
            }
        }
    }
    let masks: Vec<f32> = region_masks(&lm, size, grid)
        .into_iter()
        .flatten()
        .collect();
    Item {
        pixels: preprocess_clip(&img, input, norm.0, norm.1),
        masks,
        label,
        targets,
    }
}

struct Batch {
    pixels: Tensor,
    masks: Tensor,
    labels: Tensor,
    onehot: Tensor,
    weights: Tensor,
    supervised: Tensor,
    mil: Tensor,
}

fn stack(
    items: &[Item],
    input: usize,
    regions: usize,
    prompts: usize,
    dev: &Device,
) -> candle_core::Result<Batch> {
    let b = items.len();
    let n = items.first().map_or(0, |i| i.masks.len() / regions.max(1));
    let pixels: Vec<f32> = items
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect();
    let masks: Vec<f32> = items.iter().flat_map(|i| i.masks.iter().copied()).collect();
    let labels: Vec<f32> = items.iter().map(|i| i.label).collect();
    let mut onehot = vec![0f32; b * n * prompts];
    let mut weights = vec![0f32; b * n];
    let mut supervised = vec![0f32; b];
    let mut mil = vec![0f32; b];
    for (k, item) in items.iter().enumerate() {
        match &item.targets {
            Some(t) => {
                supervised[k] = 1.0;
                for (i, &p) in t.iter().enumerate() {
                    if p != IGNORE && usize::from(p) < prompts {
                        onehot[(k * n + i) * prompts + usize::from(p)] = 1.0;
                        weights[k * n + i] = 1.0;
                    }
                }
            }
            None => mil[k] = 1.0,
        }
    }
    Ok(Batch {
        pixels: Tensor::from_vec(pixels, (b, 3, input, input), dev)?,
        masks: Tensor::from_vec(masks, (b, regions, n), dev)?,
        labels: Tensor::from_vec(labels, b, dev)?,
        onehot: Tensor::from_vec(onehot, (b, n, prompts), dev)?,
        weights: Tensor::from_vec(weights, (b, n), dev)?,
        supervised: Tensor::from_vec(supervised, b, dev)?,
        mil: Tensor::from_vec(mil, b, dev)?,
    })
}

/// The three losses of a batch: (cross-entropy, alignment, load balance).
fn losses(out: &HeadOutput, batch: &Batch) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    // Stable binary cross-entropy with logits.
    let x = &out.logit;
    let bce = (x.relu()? - (x * &batch.labels)? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?
        .mean_all()?;
    // Supervised patch targets.
    let logp = candle_nn::ops::log_softmax(&out.alignment_logits, D::Minus1)?;
    let ce = (&batch.onehot * &logp)?.sum(D::Minus1)?.neg()?; // [B, N]
    let per_image =
        ((&ce * &batch.weights)?.sum(D::Minus1)? / (batch.weights.sum(D::Minus1)? + 1e-6)?)?;
    let n_sup = batch.supervised.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let sup = ((per_image * &batch.supervised)?.sum_all()? / f64::from(n_sup))?;
    // Multiple-instance: the most artifact-like patch of a fake without a
    // mask must look manipulated.
    let genuine = out.alignment_maps.narrow(1, 0, 1)?.squeeze(1)?; // [B, N]
    let artifact = (genuine.min(D::Minus1)?.neg()? + 1.0)?;
    let n_mil = batch.mil.sum_all()?.to_scalar::<f32>()?;
    let mil = if n_mil > 0.0 {
        ((artifact + 1e-6)?.log()?.neg()? * &batch.mil)?.sum_all()? / f64::from(n_mil)
    } else {
        Tensor::new(0f32, x.device())
    }?;
    let align = (sup + mil)?;
    // Switch-Transformer load balance: E · Σ_e f_e · P_e.
    let probs = &out.router_probs; // [B, R, E]
    let (b, r, e) = probs.dims3()?;
    let p_mean = probs.reshape((b * r, e))?.mean(0)?;
    let argmax = probs
        .reshape((b * r, e))?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?;
    let mut frac = vec![0f32; e];
    for a in argmax {
        if let Some(f) = frac.get_mut(a as usize) {
            *f += 1.0;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let total = (b * r).max(1) as f32;
    let frac = Tensor::from_vec(
        frac.into_iter().map(|f| f / total).collect::<Vec<_>>(),
        e,
        x.device(),
    )?;
    #[allow(clippy::cast_precision_loss)]
    let balance = ((frac * p_mean)?.sum_all()? * e as f64)?;
    Ok((bce, align, balance))
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

fn lr_at(step: usize, total: usize, peak: f64) -> f64 {
    let warm = (total / 20).max(1);
    #[allow(clippy::cast_precision_loss)]
    if step < warm {
        peak * (step + 1) as f64 / warm as f64
    } else {
        let t = (step - warm) as f64 / (total - warm).max(1) as f64;
        peak * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// Scores the validation faces with the network as it is.
fn validate(
    net: &TrainNet,
    samples: &[Sample],
    faces: &[Option<PreparedFace>],
    val: &[usize],
    batch: usize,
    cancel: &AtomicBool,
) -> Result<Vec<ScoreRecord>, TrainError> {
    let c = net.config();
    let grid = c.grid[0];
    let input = net.input_size();
    let norm = net.normalization();
    let mut records = Vec::with_capacity(val.len());
    for chunk in val.chunks(batch.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled);
        }
        let items: Vec<Item> = chunk
            .par_iter()
            .filter_map(|&i| {
                let face = faces[i].as_ref()?;
                Some(make_item(
                    &samples[i],
                    face,
                    false,
                    &AugmentOptions::none(),
                    0,
                    grid,
                    input,
                    norm,
                ))
            })
            .collect();
        if items.is_empty() {
            continue;
        }
        let b = stack(
            &items,
            input,
            c.regions.len(),
            c.prompts.len(),
            net.device(),
        )?;
        let out = net.forward(&b.pixels, &b.masks)?;
        let scores = out.score.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let used = chunk.iter().filter(|&&i| faces[i].is_some());
        for (&i, s) in used.zip(scores) {
            records.push(ScoreRecord {
                path: samples[i].path.display().to_string(),
                dataset: samples[i].dataset.clone(),
                label: samples[i].label,
                score: f64::from(s),
                video: None,
            });
        }
    }
    Ok(records)
}

fn write_split(path: &Path, samples: &[Sample]) -> Result<(), TrainError> {
    crate::data::atomic::write_atomic(path, |w| {
        writeln!(w, "path,dataset,label,group,split")?;
        for s in samples {
            let mut rec = csv::Writer::from_writer(Vec::new());
            rec.write_record([
                s.path.display().to_string(),
                s.dataset.clone(),
                s.label.to_string(),
                s.group.clone(),
                match s.split {
                    Split::Train => "train".into(),
                    Split::Val => "val".into(),
                },
            ])
            .map_err(std::io::Error::other)?;
            w.write_all(
                &rec.into_inner()
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            )?;
        }
        Ok(())
    })
    .map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_log(path: &Path, log: &[EpochLog]) -> Result<(), TrainError> {
    let names: Vec<String> = log
        .first()
        .map(|l| l.val_auc.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    crate::data::atomic::write_atomic(path, |w| {
        write!(w, "epoch,seconds,loss,bce,align,balance")?;
        for n in &names {
            write!(w, ",val_auc_{n}")?;
        }
        writeln!(w, ",val_auc_mean,val_cross_auc")?;
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
        for l in log {
            write!(
                w,
                "{},{:.1},{:.4},{:.4},{:.4},{:.4}",
                l.epoch, l.seconds, l.loss, l.bce, l.align, l.balance
            )?;
            for (_, a) in &l.val_auc {
                write!(w, ",{}", f(*a))?;
            }
            writeln!(w, ",{},{}", f(l.val_auc_mean), f(l.val_cross_auc))?;
        }
        Ok(())
    })
    .map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::data::atomic::write_atomic(path, |w| w.write_all(text.as_bytes())).map_err(|e| {
        TrainError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Trains, writing checkpoints as it goes; see the module documentation.
///
/// # Errors
/// [`TrainError`]: unusable data or options, a failing model, a file that
/// cannot be written, or cancellation (the last checkpoint stays).
#[allow(clippy::too_many_lines)]
pub fn train(
    opts: &TrainOptions,
    on_event: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<TrainSummary, TrainError> {
    if opts.epochs == 0 || opts.batch == 0 || opts.samples_per_epoch < opts.batch {
        return Err(TrainError::Options(
            "epochs and batch must be positive, and samples per epoch at least one batch".into(),
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| TrainError::Io {
        path: opts.out.clone(),
        message: e.to_string(),
    })?;
    let samples = data::collect_samples(&opts.data, opts.val_fraction)?;
    write_split(&opts.out.join("split.csv"), &samples)?;
    on_event(TrainEvent::Message(format!(
        "{} images, {} for validation",
        samples.len(),
        samples.iter().filter(|s| s.split == Split::Val).count()
    )));
    let progress = |done: usize, total: usize| {
        // Progress from worker threads is reported after the fact below;
        // this closure only has to be Sync.
        let _ = (done, total);
    };
    on_event(TrainEvent::Message(
        "aligning faces (cached after the first run)".into(),
    ));
    let t0 = Instant::now();
    let (faces, problems) = data::prepare_faces(
        &samples,
        &opts.out.join("faces.safetensors"),
        &progress,
        cancel,
    )?;
    on_event(TrainEvent::Faces {
        done: samples.len(),
        total: samples.len(),
    });
    on_event(TrainEvent::Message(format!(
        "faces ready in {:.0} s; {} image(s) without a face are left out",
        t0.elapsed().as_secs_f64(),
        problems.len()
    )));
    for p in problems.iter().take(20) {
        on_event(TrainEvent::Message(format!("  {p}")));
    }
    let usable = |i: &usize| faces[*i].is_some();
    let train_idx: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].split == Split::Train)
        .filter(usable)
        .collect();
    let val_idx: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].split == Split::Val)
        .filter(usable)
        .collect();
    if train_idx.is_empty() {
        return Err(TrainError::Data {
            path: opts.data.first().cloned().unwrap_or_default(),
            message: "no training face".into(),
        });
    }

    let mut net = TrainNet::new(&opts.backbone, opts.head_config(), &opts.device, opts.seed)?;
    let ckpt = opts.out.join("checkpoint");
    let best_dir = opts.out.join("best");
    let fp = fingerprint(opts);
    let mut state = State {
        epochs_done: 0,
        best_epoch: 0,
        best_metric: f64::NEG_INFINITY,
        log: Vec::new(),
        fingerprint: fp.clone(),
    };
    let state_path = ckpt.join("state.json");
    if opts.resume && state_path.is_file() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::Io {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        let old: State = serde_json::from_str(&text).map_err(|e| TrainError::Data {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        if old.fingerprint != fp {
            return Err(TrainError::Options(format!(
                "{} was written with other options; use another --out or --no-resume",
                state_path.display()
            )));
        }
        net.load_vars(&ckpt)?;
        on_event(TrainEvent::Message(format!(
            "resumed after epoch {} (optimizer moments restart)",
            old.epochs_done
        )));
        state = old;
    }

    let (bb_vars, head_vars) = net.vars();
    let params = |lr: f64| ParamsAdamW {
        lr,
        weight_decay: 1e-4,
        ..ParamsAdamW::default()
    };
    let mut opt_head = AdamW::new(head_vars, params(opts.lr))?;
    let mut opt_bb = AdamW::new(bb_vars, params(opts.lr * 0.1))?;
    let steps = opts.samples_per_epoch / opts.batch;
    let total_steps = steps * opts.epochs;
    let c = net.config().clone();
    let grid = c.grid[0];
    let input = net.input_size();
    let norm = net.normalization();

    for epoch in state.epochs_done + 1..=opts.epochs {
        let t_epoch = Instant::now();
        let draws = draw_epoch(&train_idx, &samples, opts, epoch);
        let (mut sum, mut sum_bce, mut sum_align, mut sum_bal) = (0.0, 0.0, 0.0, 0.0);
        for step in 0..steps {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let global_step = (epoch - 1) * steps + step;
            let lr = lr_at(global_step, total_steps, opts.lr);
            opt_head.set_learning_rate(lr);
            opt_bb.set_learning_rate(lr * 0.1);
            let Some(chunk) = draws.get(step * opts.batch..(step + 1) * opts.batch) else {
                break;
            };
            let items: Vec<Item> = chunk
                .par_iter()
                .enumerate()
                .filter_map(|(k, d)| {
                    let face = faces[d.index].as_ref()?;
                    let seed = opts.seed
                        ^ ((global_step * opts.batch + k) as u64)
                            .wrapping_mul(0xD134_2543_DE82_EF95);
                    Some(make_item(
                        &samples[d.index],
                        face,
                        d.self_blend,
                        &opts.augment,
                        seed,
                        grid,
                        input,
                        norm,
                    ))
                })
                .collect();
            let batch = stack(
                &items,
                input,
                c.regions.len(),
                c.prompts.len(),
                &opts.device,
            )?;
            let out = net.forward(&batch.pixels, &batch.masks)?;
            let (bce, align, bal) = losses(&out, &batch)?;
            let loss = ((&bce + (&align * opts.align_weight)?)? + (&bal * opts.balance_weight)?)?;
            let grads = loss.backward()?;
            opt_head.step(&grads)?;
            opt_bb.step(&grads)?;
            let l = scalar(&loss)?;
            if !l.is_finite() {
                return Err(TrainError::Options(format!(
                    "the loss diverged at epoch {epoch}, step {}; lower --lr",
                    step + 1
                )));
            }
            sum += l;
            sum_bce += scalar(&bce)?;
            sum_align += scalar(&align)?;
            sum_bal += scalar(&bal)?;
            on_event(TrainEvent::Step {
                epoch,
                step: step + 1,
                steps,
                loss: l,
            });
        }
        let records = validate(&net, &samples, &faces, &val_idx, opts.batch, cancel)?;
        let eval =
            Evaluation::from_records(&records, &EvaluationOptions::default()).map_err(|e| {
                TrainError::Data {
                    path: opts.out.clone(),
                    message: format!("validation: {e}"),
                }
            })?;
        let val_auc: Vec<(String, Option<f64>)> = eval
            .per_dataset
            .iter()
            .map(|d| (d.name.clone(), d.auc))
            .collect();
        let defined: Vec<f64> = val_auc.iter().filter_map(|(_, a)| *a).collect();
        #[allow(clippy::cast_precision_loss)]
        let val_auc_mean =
            (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
        #[allow(clippy::cast_precision_loss)]
        let n = steps.max(1) as f64;
        let row = EpochLog {
            epoch,
            seconds: t_epoch.elapsed().as_secs_f64(),
            loss: sum / n,
            bce: sum_bce / n,
            align: sum_align / n,
            balance: sum_bal / n,
            val_auc,
            val_auc_mean,
            val_cross_auc: eval.cross_auc.summary.mean_off_diagonal,
        };
        // Checkpoint: model folder first, then the state that points at it.
        net.save(&ckpt)?;
        let metric = row.val_auc_mean.unwrap_or(f64::NEG_INFINITY);
        if metric > state.best_metric || state.best_epoch == 0 {
            state.best_metric = metric;
            state.best_epoch = epoch;
            net.save(&best_dir)?;
            write_scores(&best_dir.join("val_scores.csv"), &records, ScoreFormat::Csv).map_err(
                |e| TrainError::Io {
                    path: best_dir.join("val_scores.csv"),
                    message: e.to_string(),
                },
            )?;
        }
        state.epochs_done = epoch;
        state.log.push(row.clone());
        write_json(&state_path, &state)?;
        write_log(&opts.out.join("train_log.csv"), &state.log)?;
        on_event(TrainEvent::Epoch(row));
    }
    Ok(TrainSummary {
        log: state.log,
        best_epoch: state.best_epoch,
        best_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let peak = 1e-3;
        assert!(lr_at(0, 1000, peak) < lr_at(49, 1000, peak));
        assert!((lr_at(49, 1000, peak) - peak).abs() < 1e-9);
        assert!(lr_at(999, 1000, peak) < 0.1 * peak);
        assert!(lr_at(999, 1000, peak) >= 0.05 * peak - 1e-12);
    }
}
