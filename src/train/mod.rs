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
//! - `train_log.csv`: one row per epoch;
//! - with `--average-last K`: `snapshots/epoch-NNN/`, the model folders of
//!   the last K fine-tuning epochs, and `average/`, their weights averaged
//!   (validated like an epoch, with its `val_scores.csv`).

pub mod augment;
pub mod average;
pub mod data;
pub mod net;
pub mod optim;
pub mod runlog;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::ParamsAdamW;
use optim::AdamW;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Label;
use crate::data::scores::{ScoreFormat, ScoreRecord, write_scores};
use crate::face::regions::{REGIONS, Region, region_masks};
use crate::metrics::{Evaluation, EvaluationOptions, SortedScores, ThresholdRule, threshold_for};
use crate::model::ModelError;
use crate::model::heads::{
    HEAD_FORMAT, HEAD_VERSION, HeadConfig, HeadOutput, SuggestedThreshold, TrainedDataset,
    TrainingData,
};
use crate::model::preprocess::preprocess_clip;
use crate::model::training_images::TrainingImages;
use augment::{
    AugmentOptions, BlendKind, augment, fill_region, geometric_jitter, mask_to_grid,
    mirror_landmarks, self_blend,
};
use data::{PreparedFace, RegionCode, Sample, Split};
pub use net::{BackboneChoice, FEATURE_NORM_FILE, FeatureNorm, FeatureStats, Features, TrainNet};
pub use runlog::{LAST_EPOCHS, LOG_FILE, RunSummary, SmoothedLoss, best_epoch, read_log};

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
    /// Epochs of the head alone on cached features of the pretrained
    /// backbone, before `epochs` of fine-tuning (linear probing, then
    /// fine-tuning: the new head is fitted before it can push gradients
    /// into the pretrained blocks).
    pub probe_epochs: usize,
    /// Versions of each training face whose features the probe stage
    /// caches: the face as it is, then `probe_views - 1` augmented ones
    /// (and as many self-blended fakes per real face, at least one).
    pub probe_views: usize,
    /// Epochs of fine-tuning (fresh augmentation every epoch).
    pub epochs: usize,
    /// Faces per step.
    pub batch: usize,
    /// Faces drawn per epoch (balanced over dataset × label).
    pub samples_per_epoch: usize,
    /// Peak learning rate of the head (and faceres' projections).
    pub lr: f64,
    /// The trained backbone blocks' peak learning rate as a share of `lr`
    /// (0.1: a tenth).
    pub backbone_lr_ratio: f64,
    /// Decoupled weight decay of `AdamW` (every trained variable; 1e-4
    /// before this option existed).
    pub weight_decay: f64,
    /// Dropout of the head's inputs (the standardised patch rows and
    /// global descriptor) while training, probe and fine-tuning stages
    /// alike (0 = off).
    pub dropout: f64,
    /// Label smoothing of the main cross-entropy: the targets become
    /// `ε/2` (real) and `1 − ε/2` (fake) instead of 0 and 1, so that the
    /// score is not pushed to certainty on faces it has already learnt
    /// (0 = off; the region and alignment losses keep their targets).
    pub label_smoothing: f64,
    /// Token dimension of the head.
    pub dim: usize,
    /// Experts per region.
    pub experts: usize,
    /// Share of each epoch's faces that are self-blended fakes (0 = off).
    pub self_blend: f64,
    /// Probability that a self-blended fake takes its blended copy from
    /// another real training face of the same dataset (a donor, warped onto
    /// the face's landmarks and matched to its colour) instead of from
    /// itself (0 = never).
    pub donor_blend: f64,
    /// How an epoch's faces are shared among the (dataset, label) groups:
    /// in proportion to each group's number of training faces raised to
    /// this power — 0: the same number from every group, 1: in proportion
    /// to their sizes, 0.5 in between.
    pub sampling_power: f64,
    /// Also write `average/`: the weights averaged over the last this many
    /// fine-tuning epochs (0 = off). It does not change the training
    /// itself, so a run resumes under another value.
    pub average_last: usize,
    /// Share of each dataset's source groups held out for validation.
    pub val_fraction: f64,
    /// Weight of the alignment loss.
    pub align_weight: f64,
    /// Weight of the router load-balancing loss.
    pub balance_weight: f64,
    /// Weight of the per-region loss: the region logits of faces whose
    /// edited regions are known (CIPLAB codes, self-blended fakes; real
    /// faces: none) against those regions (0 = off).
    pub region_weight: f64,
    /// Which regions of the faces get region labels (`--region-labels`).
    pub region_labels: RegionLabels,
    /// Datasets whose fakes are face swaps (the inner face replaced and
    /// blended in along the face outline): their fakes get the region
    /// labels of a self-blended face blend (eyes, nose and mouth edited)
    /// and alignment targets (the face-boundary ring → "blending
    /// boundary", patches clear of every facial region → genuine) instead
    /// of the multiple-instance loss. Empty: none.
    pub swap_fakes: Vec<String>,
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
            probe_epochs: 0,
            probe_views: 2,
            epochs: 8,
            batch: 32,
            samples_per_epoch: 3072,
            lr: 1e-3,
            backbone_lr_ratio: 0.1,
            weight_decay: 1e-4,
            dropout: 0.0,
            label_smoothing: 0.0,
            dim: 256,
            experts: 4,
            self_blend: 0.15,
            donor_blend: 0.0,
            sampling_power: 0.0,
            average_last: 0,
            val_fraction: 0.2,
            align_weight: 0.5,
            balance_weight: 0.01,
            region_weight: 0.0,
            region_labels: RegionLabels::Local,
            swap_fakes: Vec::new(),
            augment: AugmentOptions::default(),
            seed: 0,
            resume: true,
            device: Device::Cpu,
        }
    }

    /// The head configuration these options train (grid and dimension
    /// are set from the backbone by [`TrainNet::new`]).
    #[must_use]
    pub fn head_config(&self) -> HeadConfig {
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
            threshold: None,
            training: None,
        }
    }
}

/// One row of `train_log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch (probe epochs first).
    pub epoch: usize,
    /// `probe` (head on cached features) or `finetune`.
    #[serde(default)]
    pub stage: String,
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
    /// Mean per-region loss (computed whatever its weight; runs written
    /// before it read 0).
    #[serde(default)]
    pub region: f64,
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
    /// The averaged model (`--average-last`), validated.
    pub average: Option<AverageSummary>,
}

/// The averaged model of a run (`--average-last`).
#[derive(Debug, Clone)]
pub struct AverageSummary {
    /// The first and last epoch averaged (1-based, probe epochs counted).
    pub epochs: (usize, usize),
    /// Its folder (`average/`).
    pub dir: PathBuf,
    /// Validation AUC per dataset (`None`: undefined).
    pub val_auc: Vec<(String, Option<f64>)>,
    /// Mean of the defined per-dataset validation AUCs.
    pub val_auc_mean: Option<f64>,
    /// Mean off-diagonal validation Cross-AUC.
    pub val_cross_auc: Option<f64>,
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
    // Runs without face-swap datasets and at the backbone's default
    // learning-rate ratio keep the fingerprint they had before those
    // options existed, so that they resume.
    let swap = if o.swap_fakes.is_empty() {
        String::new()
    } else {
        format!("|swap={}", o.swap_fakes.join(","))
    };
    #[allow(clippy::float_cmp)] // the default is an exact literal
    let bblr = if o.backbone_lr_ratio == 0.1 {
        String::new()
    } else {
        format!("|bblr={}", o.backbone_lr_ratio)
    };
    #[allow(clippy::float_cmp)] // the default is an exact literal
    let wd = if o.weight_decay == 1e-4 {
        String::new()
    } else {
        format!("|wd={}", o.weight_decay)
    };
    let sampling = if o.sampling_power > 0.0 {
        format!("|sp={}", o.sampling_power)
    } else {
        String::new()
    };
    let dropout = if o.dropout > 0.0 {
        format!("|dropout={}", o.dropout)
    } else {
        String::new()
    };
    let smoothing = if o.label_smoothing > 0.0 {
        format!("|ls={}", o.label_smoothing)
    } else {
        String::new()
    };
    let donor = if o.donor_blend > 0.0 {
        format!("|donor={}", o.donor_blend)
    } else {
        String::new()
    };
    let region_labels = if o.region_labels == RegionLabels::Local {
        String::new()
    } else {
        format!("|rl={}", o.region_labels.name())
    };
    // The augmentations as they were written before the jitter existed.
    let a = &o.augment;
    let jitter = if a.jitter > 0.0 {
        format!("|jitter={}", a.jitter)
    } else {
        String::new()
    };
    let cutout = if a.cutout > 0.0 {
        format!("|cutout={}", a.cutout)
    } else {
        String::new()
    };
    format!(
        "{:?}|probe={}x{}|dim={}|experts={}|seed={}|batch={}|spe={}|lr={}|sb={}|val={}|aw={}|bw={}|rw={}|aug=AugmentOptions {{ flip: {:?}, color: {:?}, jpeg: {:?}, blur: {:?}, downscale: {:?}, border: {:?} }}{swap}{bblr}{jitter}{cutout}{wd}{dropout}{smoothing}{sampling}{donor}{region_labels}",
        o.backbone,
        o.probe_epochs,
        o.probe_views,
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
        o.region_weight,
        a.flip,
        a.color,
        a.jpeg,
        a.blur,
        a.downscale,
        a.border,
    )
}

/// A training face: which sample, and whether it becomes a self-blended fake.
#[derive(Debug, Clone, Copy)]
struct Draw {
    index: usize,
    self_blend: bool,
}

/// One epoch's faces: from every (dataset, label) group the same number
/// (or, with a sampling power, a number in proportion to the group's size
/// raised to it), plus the self-blended share drawn from the real faces.
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
    let plain = opts.samples_per_epoch - n_blend.min(opts.samples_per_epoch);
    let counts = group_counts(&groups, plain, opts.sampling_power);
    let mut out = Vec::with_capacity(opts.samples_per_epoch);
    for (members, &count) in groups.values().zip(&counts) {
        for _ in 0..count {
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

/// How many of `total` faces each group gives (rounded down): equal
/// shares at power 0 (or below, or NaN), else shares in proportion to
/// `len^power`.
fn group_counts<K>(
    groups: &std::collections::BTreeMap<K, Vec<usize>>,
    total: usize,
    power: f64,
) -> Vec<usize> {
    if power.is_nan() || power <= 0.0 || power.is_infinite() {
        // Kept apart from the general case so that runs from before the
        // option draw exactly the faces they drew.
        return vec![total / groups.len().max(1); groups.len()];
    }
    #[allow(clippy::cast_precision_loss)]
    let weights: Vec<f64> = groups
        .values()
        .map(|m| (m.len() as f64).powf(power))
        .collect();
    let sum: f64 = weights.iter().sum();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    weights
        .iter()
        .map(|w| (total as f64 * w / sum).floor() as usize)
        .collect()
}

/// Which regions of a training face the region loss reads
/// (`--region-labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegionLabels {
    /// Real faces unedited in every region; a fake's edits known in the
    /// eyes, nose and mouth only (CIPLAB codes; a self-blend's blended
    /// region, or all four for a face blend), its other regions unknown.
    /// So forehead, cheeks, chin and face boundary only ever see
    /// "unedited". The bundled model was trained so.
    #[default]
    Local,
    /// As `Local` for real faces and CIPLAB codes, but a self-blended
    /// fake's labels are read from its blending mask in every region: a
    /// region at least [`MASK_EDITED`] covered by the blend (its mask's
    /// weighted mean of the blend mask, over the blend's peak) is edited,
    /// one at most [`MASK_UNEDITED`] covered unedited, the rest unknown;
    /// face swaps (`--swap-fakes`) are edited in the face boundary too.
    Masks,
}

impl RegionLabels {
    /// The option's value as written on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Masks => "masks",
        }
    }
}

/// Coverage at or above which a self-blend's region counts as edited
/// ([`RegionLabels::Masks`]). A face blend covers every region by 0.36 or
/// more (the forehead least), a local blend its own region by about 0.6.
pub const MASK_EDITED: f32 = 0.3;
/// Coverage at or below which it counts as unedited. A local blend
/// covers its neighbours by up to 0.14 (unknown), the far regions by
/// 0.05 or less.
pub const MASK_UNEDITED: f32 = 0.05;

/// Region labels of a self-blended fake from its blending mask on the
/// patch grid (`blend`) and the face's region masks
/// ([`RegionLabels::Masks`]).
fn mask_region_labels(blend: &[f32], masks: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let peak = blend.iter().copied().fold(0.0_f32, f32::max);
    let mut labels = vec![0.0; masks.len()];
    let mut weights = vec![0.0; masks.len()];
    if peak <= 0.0 {
        return (labels, weights);
    }
    for (r, m) in masks.iter().enumerate() {
        let area: f32 = m.iter().sum();
        if area <= 0.0 {
            continue;
        }
        let covered = m.iter().zip(blend).map(|(a, b)| a * b).sum::<f32>() / (area * peak);
        if covered >= MASK_EDITED {
            labels[r] = 1.0;
            weights[r] = 1.0;
        } else if covered <= MASK_UNEDITED {
            weights[r] = 1.0;
        }
    }
    (labels, weights)
}

/// What a face contributes to the losses, besides its pixels.
struct Meta {
    masks: Vec<f32>,
    label: f32,
    /// Per-patch prompt index, [`IGNORE`] for none; `None`: no patch
    /// targets (a fake without a mask: multiple-instance loss).
    targets: Option<Vec<u8>>,
    /// Per region: whether it was edited (1) or not (0), and whether that
    /// is known (weight 1) or not (0).
    region_labels: Vec<f32>,
    region_weights: Vec<f32>,
}

/// Index of a region in [`REGIONS`] order.
fn region_index(r: Region) -> usize {
    REGIONS.iter().position(|&x| x == r).unwrap_or(0)
}

/// The local regions whose edits are known: eyes, nose, mouth.
const LOCAL: [Region; 4] = [
    Region::LeftEye,
    Region::RightEye,
    Region::Nose,
    Region::Mouth,
];

/// The region a face cutout fills: one of [`LOCAL`] at random, never an
/// edited one (`labels` 1 where `weights` say known) so that a local
/// edit's evidence stays in view — unless all of them are edited (a face
/// blend, a face swap, CIPLAB's code 1111), when any may go.
fn cutout_region<R: Rng>(labels: &[f32], weights: &[f32], rng: &mut R) -> Region {
    let edited = |r: Region| {
        let i = region_index(r);
        labels.get(i).is_some_and(|&l| l > 0.5) && weights.get(i).is_some_and(|&w| w > 0.0)
    };
    let mut candidates: Vec<Region> = LOCAL.into_iter().filter(|&r| !edited(r)).collect();
    if candidates.is_empty() {
        candidates = LOCAL.to_vec();
    }
    candidates[rng.random_range(0..candidates.len())]
}

/// Region labels and weights: `edited` among the local regions (the other
/// local regions unedited), the rest unknown.
fn local_region_labels(edited: &[Region]) -> (Vec<f32>, Vec<f32>) {
    let mut labels = vec![0.0; REGIONS.len()];
    let mut weights = vec![0.0; REGIONS.len()];
    for r in LOCAL {
        weights[region_index(r)] = 1.0;
    }
    for &r in edited {
        labels[region_index(r)] = 1.0;
    }
    (labels, weights)
}

/// Region labels of a face as it is (not self-blended): real faces
/// unedited everywhere, a fake's CIPLAB code as [`local_region_labels`],
/// face swaps as a self-blended face blend ([`LOCAL`] edited; with
/// [`RegionLabels::Masks`] the face boundary too), other fakes unknown
/// everywhere.
fn sample_region_labels(sample: &Sample, mode: RegionLabels) -> (Vec<f32>, Vec<f32>) {
    match (sample.label, sample.region_code) {
        (Label::Fake, None) if sample.face_swap => {
            let mut labels = local_region_labels(&LOCAL);
            if mode == RegionLabels::Masks {
                let b = region_index(Region::FaceBoundary);
                labels.0[b] = 1.0;
                labels.1[b] = 1.0;
            }
            labels
        }
        (Label::Real, _) => (vec![0.0; REGIONS.len()], vec![1.0; REGIONS.len()]),
        (Label::Fake, Some(code)) => {
            let edited: Vec<Region> = [
                (code.left_eye, Region::LeftEye),
                (code.right_eye, Region::RightEye),
                (code.nose, Region::Nose),
                (code.mouth, Region::Mouth),
            ]
            .into_iter()
            .filter_map(|(on, r)| on.then_some(r))
            .collect();
            local_region_labels(&edited)
        }
        (Label::Fake, None) => (vec![0.0; REGIONS.len()], vec![0.0; REGIONS.len()]),
    }
}

/// Region labels of a mirrored face: left and right regions trade places.
fn mirror_region_labels(labels: &mut (Vec<f32>, Vec<f32>)) {
    for (a, b) in [
        (Region::LeftEye, Region::RightEye),
        (Region::LeftCheek, Region::RightCheek),
    ] {
        labels.0.swap(region_index(a), region_index(b));
        labels.1.swap(region_index(a), region_index(b));
    }
}

/// One face ready for the network.
struct Item {
    pixels: Vec<f32>,
    meta: Meta,
}

/// Per-patch alignment targets of a CIPLAB fake from its region code:
/// patches well inside an edited region → that region's prompt, patches
/// clear of every edited region → genuine, the rest ignored. `masks`:
/// the face's region masks on the patch grid ([`region_masks`]).
fn code_targets(code: RegionCode, masks: &[Vec<f32>]) -> Vec<u8> {
    let edited = [
        (code.left_eye, 0usize, P_EYES),
        (code.right_eye, 1, P_EYES),
        (code.nose, 2, P_NOSE),
        (code.mouth, 3, P_MOUTH),
    ];
    (0..masks.first().map_or(0, Vec::len))
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
}

/// Per-patch alignment targets of a face swap: blended in along the face
/// outline (the boundary ring → "blending boundary"), the surroundings
/// (hair, background) the target's own (genuine), the inner face ignored
/// (which artifact, if any, shows there is not known). `masks` as for
/// [`code_targets`].
fn swap_targets(masks: &[Vec<f32>]) -> Vec<u8> {
    let ring = &masks[region_index(Region::FaceBoundary)];
    (0..ring.len())
        .map(|i| {
            if ring[i] > 0.5 {
                P_BLEND
            } else if masks.iter().all(|m| m[i] < 0.05) {
                P_GENUINE
            } else {
                IGNORE
            }
        })
        .collect()
}

/// Whether a training face becomes a self-blended fake, and with what.
#[derive(Debug, Clone, Copy)]
enum Blend<'a> {
    /// The face as it is.
    No,
    /// Blended with a transformed copy of itself.
    Own,
    /// Blended with another real face (`--donor-blend`).
    Donor(&'a PreparedFace),
}

#[allow(clippy::too_many_arguments)]
fn make_item(
    sample: &Sample,
    face: &PreparedFace,
    blend: Blend<'_>,
    labels: RegionLabels,
    aug: &AugmentOptions,
    seed: u64,
    grid: usize,
    input: usize,
    norm: ([f32; 3], [f32; 3]),
) -> Item {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut img = face.image.clone();
    let mut lm = face.landmarks;
    // Before any target is made from the landmarks. At 0 no random number
    // is drawn, so runs without it keep their augmentations.
    if aug.jitter > 0.0 && rng.random_bool(aug.jitter.min(1.0)) {
        (img, lm) = geometric_jitter(&img, &lm, &mut rng);
    }
    #[allow(clippy::cast_precision_loss)]
    let size = img.width() as f32;
    let n = grid * grid;
    // The region masks of the face as it is, for the targets and labels;
    // made again below only if the face is mirrored.
    let masks = region_masks(&lm, size, grid);
    let donor = match blend {
        Blend::No => None,
        Blend::Own => Some(None),
        Blend::Donor(d) => Some(Some((&d.image, &d.landmarks))),
    };
    let (label, mut targets, mut region_labels) = if let Some(donor) = donor {
        let sb = self_blend(&img, &lm, donor, &mut rng);
        let edited = match sb.kind {
            BlendKind::Face => LOCAL.to_vec(),
            BlendKind::Region(r) => vec![r],
        };
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
        let regions = match labels {
            RegionLabels::Local => local_region_labels(&edited),
            RegionLabels::Masks => mask_region_labels(&g, &masks),
        };
        (1.0, Some(t), regions)
    } else {
        let regions = sample_region_labels(sample, labels);
        match (sample.label, sample.region_code) {
            (Label::Real, _) => (0.0, Some(vec![P_GENUINE; n]), regions),
            (Label::Fake, Some(code)) => (1.0, Some(code_targets(code, &masks)), regions),
            (Label::Fake, None) if sample.face_swap => (1.0, Some(swap_targets(&masks)), regions),
            (Label::Fake, None) => (1.0, None, regions),
        }
    };
    // The cutout, before the other augmentations so that they degrade the
    // filled part as the rest. At 0 no random number is drawn.
    if aug.cutout > 0.0 && rng.random_bool(aug.cutout.min(1.0)) {
        let r = cutout_region(&region_labels.0, &region_labels.1, &mut rng);
        let ri = region_index(r);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // the face's width
        let pixel_masks = region_masks(&lm, size, size as usize);
        fill_region(&mut img, &pixel_masks[ri]);
        // What the filled part shows is no longer the face's: its patches
        // and its region are left out of the losses.
        if let Some(t) = &mut targets {
            for (t, &m) in t.iter_mut().zip(&masks[ri]) {
                if m > 0.25 {
                    *t = IGNORE;
                }
            }
        }
        region_labels.1[ri] = 0.0;
    }
    let mirrored = augment(&mut img, aug, &mut rng);
    let masks = if mirrored {
        lm = mirror_landmarks(&lm, size);
        if let Some(t) = &mut targets {
            for row in t.chunks_mut(grid) {
                row.reverse();
            }
        }
        mirror_region_labels(&mut region_labels);
        region_masks(&lm, size, grid)
    } else {
        masks
    };
    let masks: Vec<f32> = masks.into_iter().flatten().collect();
    Item {
        pixels: preprocess_clip(&img, input, norm.0, norm.1),
        meta: Meta {
            masks,
            label,
            targets,
            region_labels: region_labels.0,
            region_weights: region_labels.1,
        },
    }
}

/// The targets of a batch.
struct Targets {
    masks: Tensor,
    labels: Tensor,
    onehot: Tensor,
    weights: Tensor,
    supervised: Tensor,
    mil: Tensor,
    region_labels: Tensor,
    region_weights: Tensor,
}

/// The pixels of a batch, `[B, 3, input, input]`.
fn stack_pixels(items: &[Item], input: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let pixels: Vec<f32> = items
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect();
    Tensor::from_vec(pixels, (items.len(), 3, input, input), dev)
}

fn stack_targets(
    metas: &[&Meta],
    regions: usize,
    prompts: usize,
    dev: &Device,
) -> candle_core::Result<Targets> {
    let b = metas.len();
    let n = metas.first().map_or(0, |m| m.masks.len() / regions.max(1));
    let masks: Vec<f32> = metas.iter().flat_map(|m| m.masks.iter().copied()).collect();
    let labels: Vec<f32> = metas.iter().map(|m| m.label).collect();
    let mut onehot = vec![0f32; b * n * prompts];
    let mut weights = vec![0f32; b * n];
    let mut supervised = vec![0f32; b];
    let mut mil = vec![0f32; b];
    for (k, meta) in metas.iter().enumerate() {
        match &meta.targets {
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
    let region_labels: Vec<f32> = metas
        .iter()
        .flat_map(|m| m.region_labels.iter().copied())
        .collect();
    let region_weights: Vec<f32> = metas
        .iter()
        .flat_map(|m| m.region_weights.iter().copied())
        .collect();
    Ok(Targets {
        region_labels: Tensor::from_vec(region_labels, (b, regions), dev)?,
        region_weights: Tensor::from_vec(region_weights, (b, regions), dev)?,
        masks: Tensor::from_vec(masks, (b, regions, n), dev)?,
        labels: Tensor::from_vec(labels, b, dev)?,
        onehot: Tensor::from_vec(onehot, (b, n, prompts), dev)?,
        weights: Tensor::from_vec(weights, (b, n), dev)?,
        supervised: Tensor::from_vec(supervised, b, dev)?,
        mil: Tensor::from_vec(mil, b, dev)?,
    })
}

/// Stable binary cross-entropy with logits, element-wise.
fn bce_with_logits(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? - (x * y)? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// The mean binary cross-entropy of logits against 0/1 labels smoothed
/// by `smoothing`: targets `ε/2` and `1 − ε/2` (0: the labels as they are).
fn smoothed_bce(x: &Tensor, labels: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    if smoothing > 0.0 {
        let y = ((labels * (1.0 - smoothing))? + smoothing / 2.0)?;
        bce_with_logits(x, &y)?.mean_all()
    } else {
        bce_with_logits(x, labels)?.mean_all()
    }
}

/// The per-region loss of a batch: binary cross-entropy of the region
/// logits against the known region labels, averaged over the known ones.
fn region_loss(out: &HeadOutput, batch: &Targets) -> candle_core::Result<Tensor> {
    let per = bce_with_logits(&out.region_logits, &batch.region_labels)?;
    let known = batch.region_weights.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (per * &batch.region_weights)?.sum_all()? / f64::from(known)
}

/// The three losses of a batch: (cross-entropy, alignment, load balance);
/// the cross-entropy's targets smoothed by `smoothing` (0: the labels).
fn losses(
    out: &HeadOutput,
    batch: &Targets,
    smoothing: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let x = &out.logit;
    let bce = smoothed_bce(x, &batch.labels, smoothing)?;
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
                    Blend::No,
                    RegionLabels::Local,
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
        let pixels = stack_pixels(&items, input, net.device())?;
        let metas: Vec<&Meta> = items.iter().map(|i| &i.meta).collect();
        let t = stack_targets(&metas, c.regions.len(), c.prompts.len(), net.device())?;
        let out = net.forward(&pixels, &t.masks)?;
        let scores = out.score.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let used = chunk.iter().filter(|&&i| faces[i].is_some());
        for (&i, s) in used.zip(scores) {
            records.push(record(&samples[i], s));
        }
    }
    Ok(records)
}

fn record(sample: &Sample, score: f32) -> ScoreRecord {
    ScoreRecord {
        path: sample.path.display().to_string(),
        dataset: sample.dataset.clone(),
        label: sample.label,
        score: f64::from(score),
        video: None,
    }
}

/// The content hashes of the training split's files, for the model
/// folders' `training_images.txt` (scoring warns about images in it).
fn training_images(samples: &[Sample]) -> Result<TrainingImages, TrainError> {
    let mut hashes = Vec::new();
    for s in samples.iter().filter(|s| s.split == Split::Train) {
        let bytes = std::fs::read(&s.path).map_err(|e| TrainError::Data {
            path: s.path.clone(),
            message: format!("cannot read it again to list it ({e})"),
        })?;
        hashes.push(*blake3::hash(&bytes).as_bytes());
    }
    Ok(TrainingImages::new(hashes))
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
        write!(w, "epoch,stage,seconds,loss,bce,align,balance,region")?;
        for n in &names {
            write!(w, ",val_auc_{n}")?;
        }
        writeln!(w, ",val_auc_mean,val_cross_auc")?;
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
        for l in log {
            write!(
                w,
                "{},{},{:.1},{:.4},{:.4},{:.4},{:.4},{:.4}",
                l.epoch, l.stage, l.seconds, l.loss, l.bce, l.align, l.balance, l.region
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

/// The lock file of a run folder: a run holds it while it trains.
pub const LOCK_FILE: &str = ".sfam-train.lock";

/// Takes the run folder's lock, so that two runs — two `sfam train`, or
/// one and the app — never write the same folder at once. An advisory
/// lock of the operating system on [`LOCK_FILE`]: it goes with the
/// process that holds it, however that ends, so a killed run leaves no
/// stale lock behind.
///
/// # Errors
/// [`TrainError::Options`] when another process holds it;
/// [`TrainError::Io`] when the file cannot be opened or locked.
fn lock_run(out: &Path) -> Result<std::fs::File, TrainError> {
    let path = out.join(LOCK_FILE);
    let io = |e: std::io::Error| TrainError::Io {
        path: path.clone(),
        message: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Options(format!(
            "{} is being trained by another run (it holds {LOCK_FILE}); wait for it, or stop it",
            out.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Whether a run is training `out` now (another process's, or this
/// one's): `Some(true)` when its [`LOCK_FILE`] is held, `Some(false)`
/// when not, `None` when the folder has none (no run of this version
/// trained it). Looking takes the lock shared for an instant.
#[must_use]
pub fn run_in_progress(out: &Path) -> Option<bool> {
    let file = std::fs::File::open(out.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Marks the fakes of the datasets named in `swap` as face swaps.
///
/// # Errors
/// [`TrainError::Options`] for a name that is none of the datasets.
fn mark_face_swaps(samples: &mut [Sample], swap: &[String]) -> Result<(), TrainError> {
    for name in swap {
        if !samples.iter().any(|s| &s.dataset == name) {
            let mut known: Vec<&str> = samples.iter().map(|s| s.dataset.as_str()).collect();
            known.dedup();
            return Err(TrainError::Options(format!(
                "face-swap dataset {name}: no such dataset (found: {})",
                known.join(", ")
            )));
        }
    }
    for s in samples.iter_mut() {
        s.face_swap = s.label == Label::Fake && swap.contains(&s.dataset);
    }
    Ok(())
}

/// Trains, writing checkpoints as it goes; see the module documentation.
/// On the CPU a process should first call
/// [`crate::model::device::keep_freed_memory`] (an allocator setting for the
/// whole process, so the caller's to make: `sfam train` does): without it
/// each step page-faults its gigabytes in anew.
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
    if opts.epochs + opts.probe_epochs == 0
        || opts.batch == 0
        || opts.samples_per_epoch < opts.batch
    {
        return Err(TrainError::Options(
            "epochs and batch must be positive, and samples per epoch at least one batch".into(),
        ));
    }
    let positive_lr = opts.lr.is_finite() && opts.lr > 0.0;
    if !(positive_lr && opts.backbone_lr_ratio.is_finite() && opts.backbone_lr_ratio >= 0.0) {
        return Err(TrainError::Options(format!(
            "the learning rate must be positive and the backbone's ratio at least 0 (got {} and {})",
            opts.lr, opts.backbone_lr_ratio
        )));
    }
    if !(opts.sampling_power.is_finite() && opts.sampling_power >= 0.0) {
        return Err(TrainError::Options(format!(
            "the sampling power must be at least 0 (got {})",
            opts.sampling_power
        )));
    }
    if !(0.0..=1.0).contains(&opts.donor_blend) {
        return Err(TrainError::Options(format!(
            "the donor-blend probability must be between 0 and 1 (got {})",
            opts.donor_blend
        )));
    }
    if opts.average_last > opts.epochs {
        return Err(TrainError::Options(format!(
            "cannot average the last {} fine-tuning epochs of {}",
            opts.average_last, opts.epochs
        )));
    }
    let decay_ok = opts.weight_decay.is_finite() && opts.weight_decay >= 0.0;
    if !(decay_ok && (opts.dropout.is_nan() || opts.dropout < 1.0)) {
        return Err(TrainError::Options(format!(
            "the weight decay must be at least 0 and the dropout below 1 (got {} and {})",
            opts.weight_decay, opts.dropout
        )));
    }
    if !(0.0..1.0).contains(&opts.label_smoothing) {
        return Err(TrainError::Options(format!(
            "the label smoothing must be at least 0 and below 1 (got {})",
            opts.label_smoothing
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| TrainError::Io {
        path: opts.out.clone(),
        message: e.to_string(),
    })?;
    // Held until this function returns (or the process ends, however).
    let _lock = lock_run(&opts.out)?;
    let mut samples = data::collect_samples(&opts.data, opts.val_fraction)?;
    mark_face_swaps(&mut samples, &opts.swap_fakes)?;
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
    net.set_training_images(&training_images(&samples)?);
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
    let resuming = opts.resume && state_path.is_file();
    let mut saved_optim: Option<SavedOptim> = None;
    if net.takes_feature_norm() {
        let norm_path = opts.out.join(FEATURE_NORM_FILE);
        if resuming {
            // A run from before the standardisation has no file, and
            // resumes without it.
            if norm_path.is_file() {
                net.set_feature_norm(FeatureNorm::load(&norm_path, &opts.device)?);
            }
        } else {
            let t0 = Instant::now();
            let norm = feature_norm(&net, &samples, &faces, &train_idx, cancel)?;
            norm.save(&norm_path)?;
            net.set_feature_norm(norm);
            on_event(TrainEvent::Message(format!(
                "feature standardisation measured in {:.0} s",
                t0.elapsed().as_secs_f64()
            )));
        }
    }
    if resuming {
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
        let path = ckpt.join(TRAIN_STATE_FILE);
        if path.is_file() {
            saved_optim = Some(SavedOptim {
                tensors: candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| {
                    TrainError::Data {
                        path: path.clone(),
                        message: with_resume_hint(&e.to_string()),
                    }
                })?,
                path,
            });
        }
        on_event(TrainEvent::Message(format!(
            "resumed after epoch {} ({})",
            old.epochs_done,
            if saved_optim.is_some() {
                "optimizer state restored"
            } else {
                "no optimizer state in the checkpoint: its moments restart"
            }
        )));
        state = old;
    }

    let (bb_vars, new_vars) = net.vars();
    let steps = opts.samples_per_epoch / opts.batch;
    let c = net.config().clone();
    let shape = Shape {
        grid: c.grid[0],
        input: net.input_size(),
        norm: net.normalization(),
        regions: c.regions.len(),
        prompts: c.prompts.len(),
    };
    let run = Run {
        opts,
        samples: &samples,
        donors: donor_pool(&samples, &faces, &train_idx),
        ckpt,
        best_dir,
        state_path,
    };
    let total_epochs = opts.probe_epochs + opts.epochs;

    // Stage 1: the head alone, on cached features of the pretrained backbone.
    if state.epochs_done < opts.probe_epochs {
        on_event(TrainEvent::Message(format!(
            "probe stage: caching backbone features of {} version(s) of each training face",
            opts.probe_views.max(1)
        )));
        let t0 = Instant::now();
        let bank = FeatureBank::build(&net, &run, &faces, &train_idx, &val_idx, &shape, cancel)?;
        on_event(TrainEvent::Message(format!(
            "{} feature sets cached in {:.0} s",
            bank.items.len(),
            t0.elapsed().as_secs_f64()
        )));
        let mut opt = AdamW::new(new_vars.clone(), adamw(opts.lr, opts.weight_decay))?;
        if let Some(saved) = saved_optim.take() {
            // Resumed inside the probe stage: its optimizer goes on.
            saved.restore(&mut opt, "probe.new")?;
        }
        let total_steps = steps * opts.probe_epochs;
        for epoch in state.epochs_done + 1..=opts.probe_epochs {
            let t_epoch = Instant::now();
            let draws = draw_epoch(&train_idx, &samples, opts, epoch);
            let mut pick = rand_chacha::ChaCha8Rng::seed_from_u64(
                opts.seed ^ 0x0050_7265 ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407),
            );
            let mut sums = LossSums::default();
            net.set_dropout(opts.dropout, dropout_seed(opts.seed, epoch));
            for step in 0..steps {
                if cancel.load(Ordering::Relaxed) {
                    return Err(TrainError::Cancelled);
                }
                opt.set_learning_rate(lr_at((epoch - 1) * steps + step, total_steps, opts.lr));
                let Some(chunk) = draws.get(step * opts.batch..(step + 1) * opts.batch) else {
                    break;
                };
                let picked: Vec<usize> = chunk
                    .iter()
                    .filter_map(|d| bank.pick(d, &mut pick))
                    .collect();
                if picked.is_empty() {
                    continue;
                }
                let (features, targets) = bank.batch(&picked, &shape, &opts.device)?;
                let out = net.forward_features(&features, &targets.masks)?;
                let l = step_losses(&out, &targets, opts, epoch, step, &mut sums)?;
                opt.step(&l.backward()?)?;
                on_event(TrainEvent::Step {
                    epoch,
                    step: step + 1,
                    steps,
                    loss: sums.last,
                });
            }
            net.set_dropout(0.0, 0);
            let records = bank.validate(&net, &samples, opts.batch, &shape, cancel)?;
            let row = finish_epoch(
                &net,
                &run,
                &mut state,
                epoch,
                "probe",
                t_epoch,
                &sums,
                steps,
                &records,
                &[("probe.new", &opt)],
            )?;
            on_event(TrainEvent::Epoch(row));
        }
    }

    // Stage 2: fine-tuning, fresh augmentations every epoch.
    let mut opt_new = AdamW::new(new_vars, adamw(opts.lr, opts.weight_decay))?;
    let mut opt_bb = AdamW::new(
        bb_vars,
        adamw(opts.lr * opts.backbone_lr_ratio, opts.weight_decay),
    )?;
    // Still there only when resumed after the probe stage.
    if let Some(saved) = saved_optim {
        if saved.has("finetune.new") {
            saved.restore(&mut opt_new, "finetune.new")?;
            saved.restore(&mut opt_bb, "finetune.bb")?;
        } else {
            // Stopped at the end of the probe stage: fine-tuning starts
            // with fresh moments, as in a run that was not stopped; the
            // head's exact values still come from the probe's state (the
            // checkpoint's model folder holds them with the
            // standardisation folded in, not bit for bit).
            let mut probe = AdamW::new(net.vars().1, adamw(opts.lr, opts.weight_decay))?;
            saved.restore(&mut probe, "probe.new")?;
        }
    }
    let total_steps = steps * opts.epochs;
    for epoch in state.epochs_done + 1..=total_epochs {
        let t_epoch = Instant::now();
        let draws = draw_epoch(&train_idx, &samples, opts, epoch);
        let mut sums = LossSums::default();
        net.set_dropout(opts.dropout, dropout_seed(opts.seed, epoch));
        for step in 0..steps {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let global_step = (epoch - opts.probe_epochs - 1) * steps + step;
            let lr = lr_at(global_step, total_steps, opts.lr);
            opt_new.set_learning_rate(lr);
            opt_bb.set_learning_rate(lr * opts.backbone_lr_ratio);
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
                    let blend = if d.self_blend {
                        pick_donor(&run, &faces, d.index, seed)
                    } else {
                        Blend::No
                    };
                    Some(make_item(
                        &samples[d.index],
                        face,
                        blend,
                        opts.region_labels,
                        &opts.augment,
                        seed,
                        shape.grid,
                        shape.input,
                        shape.norm,
                    ))
                })
                .collect();
            let pixels = stack_pixels(&items, shape.input, &opts.device)?;
            let metas: Vec<&Meta> = items.iter().map(|i| &i.meta).collect();
            let targets = stack_targets(&metas, shape.regions, shape.prompts, &opts.device)?;
            let out = net.forward(&pixels, &targets.masks)?;
            let l = step_losses(&out, &targets, opts, epoch, step, &mut sums)?;
            let grads = l.backward()?;
            opt_new.step(&grads)?;
            opt_bb.step(&grads)?;
            on_event(TrainEvent::Step {
                epoch,
                step: step + 1,
                steps,
                loss: sums.last,
            });
        }
        net.set_dropout(0.0, 0);
        let records = validate(&net, &samples, &faces, &val_idx, opts.batch, cancel)?;
        let row = finish_epoch(
            &net,
            &run,
            &mut state,
            epoch,
            "finetune",
            t_epoch,
            &sums,
            steps,
            &records,
            &[("finetune.new", &opt_new), ("finetune.bb", &opt_bb)],
        )?;
        on_event(TrainEvent::Epoch(row));
    }
    let average = if opts.average_last > 0 {
        Some(average_and_validate(
            &mut net, opts, &samples, &faces, &val_idx, on_event, cancel,
        )?)
    } else {
        None
    };
    Ok(TrainSummary {
        log: state.log,
        best_epoch: state.best_epoch,
        best_dir: run.best_dir,
        average,
    })
}

/// `--average-last`: the snapshots of the run's last epochs averaged into
/// `average/`, loaded into `net` and scored on the validation faces.
fn average_and_validate(
    net: &mut TrainNet,
    opts: &TrainOptions,
    samples: &[Sample],
    faces: &[Option<PreparedFace>],
    val_idx: &[usize],
    on_event: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<AverageSummary, TrainError> {
    let t0 = Instant::now();
    let last = opts.probe_epochs + opts.epochs;
    let first = last + 1 - opts.average_last;
    let dirs: Vec<PathBuf> = (first..=last)
        .map(|e| average::snapshot_dir(&opts.out, e))
        .collect();
    if let Some(missing) = dirs.iter().find(|d| !d.is_dir()) {
        return Err(TrainError::Data {
            path: missing.clone(),
            message: "this epoch's model for --average-last is missing (it is written \
                      only by runs that had the option by then)"
                .into(),
        });
    }
    let dir = opts.out.join("average");
    average::average_model_folders(&dirs, &dir)?;
    net.load_vars(&dir)?;
    let records = validate(net, samples, faces, val_idx, opts.batch, cancel)?;
    write_val_scores(&dir, &records)?;
    let (val_auc, val_auc_mean, val_cross_auc) = val_metrics(&records, &opts.out)?;
    write_validation_summary(
        &dir,
        samples,
        &records,
        &val_auc,
        opts,
        &format!("epochs {first}–{last} averaged"),
    )?;
    on_event(TrainEvent::Message(format!(
        "weights of epochs {first}–{last} averaged and validated in {:.0} s: {}",
        t0.elapsed().as_secs_f64(),
        auc_line(&val_auc, val_auc_mean, val_cross_auc)
    )));
    Ok(AverageSummary {
        epochs: (first, last),
        dir,
        val_auc,
        val_auc_mean,
        val_cross_auc,
    })
}

/// A model folder's validation scores, `DIR/val_scores.csv`.
/// The validation score table a run writes into `best/` (and `average/`).
pub const VAL_SCORES_FILE: &str = "val_scores.csv";

fn write_val_scores(dir: &Path, records: &[ScoreRecord]) -> Result<(), TrainError> {
    let path = dir.join(VAL_SCORES_FILE);
    write_scores(&path, records, ScoreFormat::Csv).map_err(|e| TrainError::Io {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// The false-positive rate, over all validation real faces, at which
/// `best/` suggests its decision threshold.
pub const SUGGESTED_FPR: f64 = 0.10;

/// The threshold at which at most [`SUGGESTED_FPR`] of the validation
/// real faces (all datasets together) score at or above it, the lowest
/// such one; `None` without validation real faces. `model` says which
/// weights were validated ("epoch 48"), for the rule's words.
#[must_use]
pub fn suggested_threshold(records: &[ScoreRecord], model: &str) -> Option<SuggestedThreshold> {
    let scores = |label: Label| {
        records
            .iter()
            .filter(|r| r.label == label)
            .map(|r| r.score)
            .collect::<Vec<f64>>()
    };
    let real = SortedScores::new(scores(Label::Real)).ok()?;
    let fake = SortedScores::new(scores(Label::Fake)).ok()?;
    let value = threshold_for(ThresholdRule::Fpr(SUGGESTED_FPR), &real, &fake).ok()?;
    Some(SuggestedThreshold {
        value,
        rule: format!(
            "at most {:.0} % of the {} validation real faces (all datasets) score at or above it \
             (sfam train, {model})",
            SUGGESTED_FPR * 100.0,
            real.len()
        ),
    })
}

/// What a run trained and validated on: each dataset's images on each
/// side of the split (in the order the datasets were found), its
/// validation AUC (`val_auc`, by name: what the run measured, e.g. a log
/// row's), and the fakes the trainer makes itself.
#[must_use]
pub fn training_data(
    samples: &[Sample],
    val_auc: &[(String, Option<f64>)],
    opts: &TrainOptions,
    model: &str,
) -> TrainingData {
    let mut datasets: Vec<TrainedDataset> = Vec::new();
    for s in samples {
        let i = if let Some(i) = datasets.iter().position(|d| d.name == s.dataset) {
            i
        } else {
            datasets.push(TrainedDataset {
                name: s.dataset.clone(),
                train_real: 0,
                train_fake: 0,
                val_real: 0,
                val_fake: 0,
                val_auc: None,
            });
            datasets.len() - 1
        };
        let d = &mut datasets[i];
        match (s.split, s.label) {
            (Split::Train, Label::Real) => d.train_real += 1,
            (Split::Train, Label::Fake) => d.train_fake += 1,
            (Split::Val, Label::Real) => d.val_real += 1,
            (Split::Val, Label::Fake) => d.val_fake += 1,
        }
    }
    for d in &mut datasets {
        d.val_auc = val_auc
            .iter()
            .find(|(name, _)| *name == d.name)
            .and_then(|(_, a)| *a);
    }
    let mut synthetic = Vec::new();
    if opts.self_blend > 0.0 {
        let donors = if opts.donor_blend > 0.0 {
            format!(
                ", {:.0} % of them from a donor face",
                opts.donor_blend * 100.0
            )
        } else {
            String::new()
        };
        synthetic.push(format!(
            "self-blended real training faces ({:.0} % of each epoch{donors})",
            opts.self_blend * 100.0
        ));
    }
    TrainingData {
        datasets,
        synthetic_fakes: (!synthetic.is_empty()).then(|| synthetic.join(", ")),
        validated: model.to_owned(),
    }
}

/// Adds [`suggested_threshold`] (from the validation `records`) and
/// [`training_data`] (with the AUCs measured on them, `val_auc`) to the
/// model folder's `sfam_head.json`.
fn write_validation_summary(
    dir: &Path,
    samples: &[Sample],
    records: &[ScoreRecord],
    val_auc: &[(String, Option<f64>)],
    opts: &TrainOptions,
    model: &str,
) -> Result<(), TrainError> {
    let path = dir.join(crate::model::sfam::HEAD_CONFIG_FILE);
    let mut config = HeadConfig::from_file(&path)?;
    config.threshold = suggested_threshold(records, model);
    config.training = Some(training_data(samples, val_auc, opts, model));
    let json = serde_json::to_string_pretty(&config).map_err(|e| TrainError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    net::write_file(&path, json.as_bytes())
}

/// `validation AUC a 0.812, b 0.900 (mean 0.856), Cross-AUC 0.843`.
#[must_use]
pub fn auc_line(
    val_auc: &[(String, Option<f64>)],
    mean: Option<f64>,
    cross: Option<f64>,
) -> String {
    let f = |v: Option<f64>| v.map_or("-".into(), |a| format!("{a:.3}"));
    let aucs: Vec<String> = val_auc
        .iter()
        .map(|(n, a)| format!("{n} {}", f(*a)))
        .collect();
    format!(
        "validation AUC {} (mean {}), Cross-AUC {}",
        aucs.join(", "),
        f(mean),
        f(cross)
    )
}

/// Per-dataset AUCs, their mean and the mean off-diagonal Cross-AUC of
/// validation scores.
#[allow(clippy::type_complexity)]
fn val_metrics(
    records: &[ScoreRecord],
    out: &Path,
) -> Result<(Vec<(String, Option<f64>)>, Option<f64>, Option<f64>), TrainError> {
    let eval = Evaluation::from_records(records, &EvaluationOptions::default()).map_err(|e| {
        TrainError::Data {
            path: out.to_path_buf(),
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
    let mean = (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    Ok((val_auc, mean, eval.cross_auc.summary.mean_off_diagonal))
}

/// The seed of an epoch's dropout masks (so that a resumed run draws the
/// masks an uninterrupted one would have).
/// Real training faces with a face, per dataset.
fn donor_pool<'a>(
    samples: &'a [Sample],
    faces: &[Option<PreparedFace>],
    train: &[usize],
) -> std::collections::BTreeMap<&'a str, Vec<usize>> {
    let mut pool: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
    for &i in train {
        if samples[i].label == Label::Real && faces.get(i).is_some_and(Option::is_some) {
            pool.entry(samples[i].dataset.as_str()).or_default().push(i);
        }
    }
    pool
}

/// What a self-blended fake of face `i` (made with `seed`) is blended
/// with: under `--donor-blend p`, with probability p another real training
/// face of its dataset, else itself. The choice comes from a generator of
/// its own, so runs without donors draw exactly what they drew before.
fn pick_donor<'f>(
    run: &Run<'_>,
    faces: &'f [Option<PreparedFace>],
    i: usize,
    seed: u64,
) -> Blend<'f> {
    let p = run.opts.donor_blend;
    if p <= 0.0 {
        return Blend::Own;
    }
    let Some(pool) = run.donors.get(run.samples[i].dataset.as_str()) else {
        return Blend::Own;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0064_6F6E_6F72);
    if pool.len() < 2 || !rng.random_bool(p.min(1.0)) {
        return Blend::Own;
    }
    // Uniform over the others: a draw of `i` itself stands for the last.
    let k = rng.random_range(0..pool.len() - 1);
    let j = if pool[k] == i {
        pool[pool.len() - 1]
    } else {
        pool[k]
    };
    faces
        .get(j)
        .and_then(Option::as_ref)
        .map_or(Blend::Own, Blend::Donor)
}

fn dropout_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ 0x0044_726F_7000 ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn adamw(lr: f64, weight_decay: f64) -> ParamsAdamW {
    ParamsAdamW {
        lr,
        weight_decay,
        ..ParamsAdamW::default()
    }
}

/// Sizes shared by every batch of a run.
struct Shape {
    grid: usize,
    input: usize,
    norm: ([f32; 3], [f32; 3]),
    regions: usize,
    prompts: usize,
}

/// What every epoch's bookkeeping needs.
struct Run<'a> {
    opts: &'a TrainOptions,
    samples: &'a [Sample],
    /// Real training faces (with a face) per dataset: the donors of
    /// `--donor-blend`.
    donors: std::collections::BTreeMap<&'a str, Vec<usize>>,
    ckpt: PathBuf,
    best_dir: PathBuf,
    state_path: PathBuf,
}

/// Running sums of an epoch's losses.
#[derive(Default)]
struct LossSums {
    total: f64,
    bce: f64,
    align: f64,
    balance: f64,
    region: f64,
    /// The last step's total loss.
    last: f64,
}

/// The weighted loss of one step, added to `sums`; an error if it diverged.
fn step_losses(
    out: &HeadOutput,
    targets: &Targets,
    opts: &TrainOptions,
    epoch: usize,
    step: usize,
    sums: &mut LossSums,
) -> Result<Tensor, TrainError> {
    let (bce, align, bal) = losses(out, targets, opts.label_smoothing)?;
    let region = region_loss(out, targets)?;
    let mut loss = ((&bce + (&align * opts.align_weight)?)? + (&bal * opts.balance_weight)?)?;
    if opts.region_weight > 0.0 {
        loss = (loss + (&region * opts.region_weight)?)?;
    }
    let l = scalar(&loss)?;
    if !l.is_finite() {
        return Err(TrainError::Options(format!(
            "the loss diverged at epoch {epoch}, step {}; lower --lr",
            step + 1
        )));
    }
    sums.last = l;
    sums.total += l;
    sums.bce += scalar(&bce)?;
    sums.align += scalar(&align)?;
    sums.balance += scalar(&bal)?;
    sums.region += scalar(&region)?;
    Ok(loss)
}

/// The checkpoint's optimizer state (`checkpoint/train_state.safetensors`):
/// the live optimizers' variables, exactly (the model folder beside it
/// holds faceres' projections with the standardisation folded in), their
/// moments and step counts, so that a resumed run goes on as if it had not
/// stopped.
pub const TRAIN_STATE_FILE: &str = "train_state.safetensors";

/// A problem with [`TRAIN_STATE_FILE`], and the two ways on.
fn with_resume_hint(message: &str) -> String {
    format!(
        "{message} (delete the file to resume with the optimizer's moments restarted, \
         or start afresh with --no-resume)"
    )
}

/// What a resumed run read from [`TRAIN_STATE_FILE`].
struct SavedOptim {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl SavedOptim {
    fn has(&self, prefix: &str) -> bool {
        self.tensors.contains_key(&format!("{prefix}.step"))
    }

    fn restore(&self, opt: &mut AdamW, prefix: &str) -> Result<(), TrainError> {
        opt.restore(&self.tensors, prefix)
            .map_err(|message| TrainError::Data {
                path: self.path.clone(),
                message: with_resume_hint(&message),
            })
    }
}

/// Validation metrics, the checkpoint, `best/`, the state and the log of a
/// finished epoch.
#[allow(clippy::too_many_arguments)]
fn finish_epoch(
    net: &TrainNet,
    run: &Run<'_>,
    state: &mut State,
    epoch: usize,
    phase: &str,
    started: Instant,
    sums: &LossSums,
    steps: usize,
    records: &[ScoreRecord],
    optims: &[(&str, &AdamW)],
) -> Result<EpochLog, TrainError> {
    let (val_auc, val_auc_mean, val_cross_auc) = val_metrics(records, &run.opts.out)?;
    #[allow(clippy::cast_precision_loss)]
    let n = steps.max(1) as f64;
    let row = EpochLog {
        epoch,
        stage: phase.to_owned(),
        seconds: started.elapsed().as_secs_f64(),
        loss: sums.total / n,
        bce: sums.bce / n,
        align: sums.align / n,
        balance: sums.balance / n,
        region: sums.region / n,
        val_auc,
        val_auc_mean,
        val_cross_auc,
    };
    // Checkpoint: model folder and optimizer state first, then the state
    // that points at them.
    net.save(&run.ckpt)?;
    let path = run.ckpt.join(TRAIN_STATE_FILE);
    let mut all = HashMap::new();
    for (prefix, opt) in optims {
        all.extend(opt.state(prefix).map_err(|e| TrainError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?);
    }
    net::save_tensors(&path, &all)?;
    let o = run.opts;
    if phase == "finetune" && epoch + o.average_last > o.probe_epochs + o.epochs {
        net.save(&average::snapshot_dir(&o.out, epoch))?;
    }
    let metric = row.val_auc_mean.unwrap_or(f64::NEG_INFINITY);
    if metric > state.best_metric || state.best_epoch == 0 {
        state.best_metric = metric;
        state.best_epoch = epoch;
        net.save(&run.best_dir)?;
        write_val_scores(&run.best_dir, records)?;
        write_validation_summary(
            &run.best_dir,
            run.samples,
            records,
            &row.val_auc,
            run.opts,
            &format!("epoch {epoch}"),
        )?;
    }
    state.epochs_done = epoch;
    state.log.push(row.clone());
    write_json(&run.state_path, state)?;
    write_log(&run.opts.out.join(LOG_FILE), &state.log)?;
    Ok(row)
}

/// Faces [`feature_norm`] measures at most.
const NORM_FACES: usize = 1024;

/// The standardisation of the pretrained backbone's features: statistics
/// over up to [`NORM_FACES`] training faces, evenly spaced, as they are.
fn feature_norm(
    net: &TrainNet,
    samples: &[Sample],
    faces: &[Option<PreparedFace>],
    train: &[usize],
    cancel: &AtomicBool,
) -> Result<FeatureNorm, TrainError> {
    let input = net.input_size();
    let grid = net.config().grid[0];
    let norm = net.normalization();
    let none = AugmentOptions::none();
    let step = train.len().div_ceil(NORM_FACES).max(1);
    let picked: Vec<usize> = train.iter().copied().step_by(step).collect();
    let mut stats = FeatureStats::default();
    for chunk in picked.chunks(32) {
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled);
        }
        let pixels: Vec<Vec<f32>> = chunk
            .par_iter()
            .filter_map(|&i| {
                let face = faces[i].as_ref()?;
                Some(
                    make_item(
                        &samples[i],
                        face,
                        Blend::No,
                        RegionLabels::Local,
                        &none,
                        0,
                        grid,
                        input,
                        norm,
                    )
                    .pixels,
                )
            })
            .collect();
        if pixels.is_empty() {
            continue;
        }
        let n = pixels.len();
        let all: Vec<f32> = pixels.into_iter().flatten().collect();
        let t = Tensor::from_vec(all, (n, 3, input, input), net.device())?;
        stats.add(&net.features(&t)?)?;
    }
    Ok(stats.finish(net.device())?)
}

/// A face's cached backbone features and its targets.
struct Cached {
    /// `[N, C]`, half precision.
    patches: Tensor,
    /// `[P]`, half precision.
    global: Tensor,
    meta: Meta,
}

/// The probe stage's cache: backbone features of every training face (as
/// it is and augmented), of self-blended fakes made from the real ones, and
/// of the validation faces.
struct FeatureBank {
    items: Vec<Cached>,
    /// Per sample: its cached versions (empty for validation samples).
    views: Vec<Vec<usize>>,
    /// Per real training sample: its cached self-blended fakes.
    blends: Vec<Vec<usize>>,
    /// (sample, cached item) of every validation face.
    val: Vec<(usize, usize)>,
}

#[derive(Clone, Copy)]
enum Version {
    Plain(usize),
    Blend(usize),
    Val,
}

impl FeatureBank {
    fn build(
        net: &TrainNet,
        run: &Run<'_>,
        faces: &[Option<PreparedFace>],
        train: &[usize],
        val: &[usize],
        shape: &Shape,
        cancel: &AtomicBool,
    ) -> Result<Self, TrainError> {
        let opts = run.opts;
        let samples = run.samples;
        let views = opts.probe_views.max(1);
        let mut jobs: Vec<(usize, Version)> = Vec::new();
        for &i in train {
            jobs.extend((0..views).map(|v| (i, Version::Plain(v))));
            if opts.self_blend > 0.0 && samples[i].label == Label::Real {
                jobs.extend((0..(views - 1).max(1)).map(|v| (i, Version::Blend(v))));
            }
        }
        jobs.extend(val.iter().map(|&i| (i, Version::Val)));
        let mut bank = Self {
            items: Vec::with_capacity(jobs.len()),
            views: vec![Vec::new(); samples.len()],
            blends: vec![Vec::new(); samples.len()],
            val: Vec::with_capacity(val.len()),
        };
        let none = AugmentOptions::none();
        for chunk in jobs.chunks(opts.batch.max(1)) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let items: Vec<(usize, Version, Item)> = chunk
                .par_iter()
                .filter_map(|&(i, version)| {
                    let face = faces[i].as_ref()?;
                    let (blend, aug, v) = match version {
                        Version::Plain(0) | Version::Val => (false, &none, 0),
                        Version::Plain(v) => (false, &opts.augment, v),
                        Version::Blend(v) => (true, &opts.augment, v + views),
                    };
                    let seed = opts.seed
                        ^ 0x6261_6E6B
                        ^ ((i * 2 * views + v) as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25);
                    let blend = if blend {
                        pick_donor(run, faces, i, seed)
                    } else {
                        Blend::No
                    };
                    let item = make_item(
                        &samples[i],
                        face,
                        blend,
                        opts.region_labels,
                        aug,
                        seed,
                        shape.grid,
                        shape.input,
                        shape.norm,
                    );
                    Some((i, version, item))
                })
                .collect();
            if items.is_empty() {
                continue;
            }
            let pixels = {
                let all: Vec<f32> = items
                    .iter()
                    .flat_map(|(_, _, it)| it.pixels.iter().copied())
                    .collect();
                Tensor::from_vec(
                    all,
                    (items.len(), 3, shape.input, shape.input),
                    net.device(),
                )?
            };
            let f = net.features(&pixels)?;
            let patches = f.patches.to_dtype(DType::F16)?;
            let global = f.global.to_dtype(DType::F16)?;
            for (k, (i, version, item)) in items.into_iter().enumerate() {
                let id = bank.items.len();
                bank.items.push(Cached {
                    patches: patches.get(k)?,
                    global: global.get(k)?,
                    meta: item.meta,
                });
                match version {
                    Version::Plain(_) => bank.views[i].push(id),
                    Version::Blend(_) => bank.blends[i].push(id),
                    Version::Val => bank.val.push((i, id)),
                }
            }
        }
        Ok(bank)
    }

    /// A cached version of the drawn face, chosen at random.
    fn pick<R: Rng>(&self, d: &Draw, rng: &mut R) -> Option<usize> {
        let list = if d.self_blend {
            &self.blends[d.index]
        } else {
            &self.views[d.index]
        };
        (!list.is_empty()).then(|| list[rng.random_range(0..list.len())])
    }

    fn batch(
        &self,
        ids: &[usize],
        shape: &Shape,
        dev: &Device,
    ) -> Result<(Features, Targets), TrainError> {
        let patches: Vec<&Tensor> = ids.iter().map(|&i| &self.items[i].patches).collect();
        let global: Vec<&Tensor> = ids.iter().map(|&i| &self.items[i].global).collect();
        let metas: Vec<&Meta> = ids.iter().map(|&i| &self.items[i].meta).collect();
        Ok((
            Features {
                patches: Tensor::stack(&patches, 0)?.to_dtype(DType::F32)?,
                global: Tensor::stack(&global, 0)?.to_dtype(DType::F32)?,
            },
            stack_targets(&metas, shape.regions, shape.prompts, dev)?,
        ))
    }

    fn validate(
        &self,
        net: &TrainNet,
        samples: &[Sample],
        batch: usize,
        shape: &Shape,
        cancel: &AtomicBool,
    ) -> Result<Vec<ScoreRecord>, TrainError> {
        let mut records = Vec::with_capacity(self.val.len());
        for chunk in self.val.chunks(batch.max(1)) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let ids: Vec<usize> = chunk.iter().map(|&(_, id)| id).collect();
            let (f, t) = self.batch(&ids, shape, net.device())?;
            let out = net.forward_features(&f, &t.masks)?;
            let scores = out.score.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            for (&(i, _), s) in chunk.iter().zip(scores) {
                records.push(record(&samples[i], s));
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_trained_by_one_run_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_run(dir.path()).unwrap();
        let e = lock_run(dir.path()).unwrap_err().to_string();
        assert!(e.contains("being trained by another run"), "{e}");
        assert_eq!(run_in_progress(dir.path()), Some(true));
        drop(held);
        assert_eq!(run_in_progress(dir.path()), Some(false));
        // Released with its holder: the next run takes it.
        lock_run(dir.path()).unwrap();
        let never = tempfile::tempdir().unwrap();
        assert_eq!(run_in_progress(never.path()), None);
    }

    /// Label smoothing: the loss is the cross-entropy against the smoothed
    /// targets, and it is lowest at the logit of `1 − ε/2`, not at ±∞.
    #[test]
    fn label_smoothing_moves_the_targets_inward() {
        let dev = Device::Cpu;
        let eps = 0.2_f64;
        let bce = |x: f32, y: f32, s: f64| {
            let x = Tensor::new(&[x], &dev).unwrap();
            let y = Tensor::new(&[y], &dev).unwrap();
            f64::from(smoothed_bce(&x, &y, s).unwrap().to_scalar::<f32>().unwrap())
        };
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (x, y) in [(2.0_f32, 1.0_f32), (-1.5, 0.0), (0.3, 1.0), (4.0, 0.0)] {
            let t = f64::from(y) * (1.0 - eps) + eps / 2.0;
            let p = sig(f64::from(x));
            let want = -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
            assert!((bce(x, y, eps) - want).abs() < 1e-5, "{x} {y}");
            let plain = -(f64::from(y) * p.ln() + (1.0 - f64::from(y)) * (1.0 - p).ln());
            assert!((bce(x, y, 0.0) - plain).abs() < 1e-5, "{x} {y}");
        }
        // For a fake the smoothed loss is lowest at ln(0.9 / 0.1): beyond
        // it, more certainty costs.
        #[allow(clippy::cast_possible_truncation)]
        let best = (0.9_f64 / 0.1).ln() as f32;
        assert!(bce(best, 1.0, eps) < bce(best - 0.3, 1.0, eps));
        assert!(bce(best, 1.0, eps) < bce(best + 0.3, 1.0, eps));
        assert!(bce(best + 3.0, 1.0, eps) > bce(best, 1.0, eps) + 0.1);
        assert!(bce(best + 3.0, 1.0, 0.0) < bce(best, 1.0, 0.0));
    }

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let peak = 1e-3;
        assert!(lr_at(0, 1000, peak) < lr_at(49, 1000, peak));
        assert!((lr_at(49, 1000, peak) - peak).abs() < 1e-9);
        assert!(lr_at(999, 1000, peak) < 0.1 * peak);
        assert!(lr_at(999, 1000, peak) >= 0.05 * peak - 1e-12);
    }

    /// Options added after a run began must not change that run's
    /// fingerprint at their defaults: the default command's run folder
    /// (this string from its `state.json`) still resumes. Set, they do.
    #[test]
    fn fingerprint_of_older_runs_is_kept() {
        let mut o = TrainOptions::new(
            vec![PathBuf::from("data")],
            PathBuf::from("out"),
            BackboneChoice::FaceRes {
                weights: PathBuf::from("/m/faceres.safetensors"),
                train_blocks: 9,
            },
        );
        o.probe_epochs = 12;
        o.epochs = 40;
        o.region_weight = 2.0;
        assert_eq!(
            fingerprint(&o),
            "FaceRes { weights: \"/m/faceres.safetensors\", train_blocks: 9 }|probe=12x2|dim=256|experts=4|seed=0|batch=32|spe=3072|lr=0.001|sb=0.15|val=0.2|aw=0.5|bw=0.01|rw=2|aug=AugmentOptions { flip: 0.5, color: 0.5, jpeg: 0.3, blur: 0.15, downscale: 0.25, border: 0.3 }"
        );
        let old = fingerprint(&o);
        o.epochs = 60;
        assert_eq!(fingerprint(&o), old, "more epochs continue a run");
        o.backbone_lr_ratio = 0.3;
        assert_ne!(fingerprint(&o), old);
        o.backbone_lr_ratio = 0.1;
        o.swap_fakes = vec!["dfdc".into()];
        assert_ne!(fingerprint(&o), old);
        o.swap_fakes.clear();
        o.region_labels = RegionLabels::Masks;
        assert_ne!(fingerprint(&o), old);
        o.region_labels = RegionLabels::Local;
        o.augment.jitter = 0.5;
        assert_ne!(fingerprint(&o), old);
        o.augment.jitter = 0.0;
        o.augment.cutout = 0.5;
        assert_ne!(fingerprint(&o), old);
        o.augment.cutout = 0.0;
        // CLIP runs name the trained layers: one from before they existed
        // (`Clip { dir: … }`, its prompts learned) does not resume.
        o.augment.jitter = 0.0;
        o.backbone = BackboneChoice::Clip {
            dir: PathBuf::from("/m/clip"),
            train_blocks: 0,
        };
        let frozen = fingerprint(&o);
        assert!(
            frozen.starts_with("Clip { dir: \"/m/clip\", train_blocks: 0 }|probe=12x2|"),
            "{frozen}"
        );
        o.backbone = BackboneChoice::Clip {
            dir: PathBuf::from("/m/clip"),
            train_blocks: 2,
        };
        assert_ne!(fingerprint(&o), frozen);
    }

    /// What `best/` records of its data: counts per dataset and side, in
    /// the order the datasets were found, the AUC of each dataset's
    /// validation scores (none for a dataset without both labels), and
    /// the trainer's own fakes in words.
    #[test]
    fn training_data_counts_each_side_and_validates_each_dataset() {
        let sample = |dataset: &str, label, split| Sample {
            path: PathBuf::from("x.jpg"),
            dataset: dataset.into(),
            label,
            group: "g".into(),
            split,
            region_code: None,
            face_swap: false,
        };
        let samples = vec![
            sample("b", Label::Real, Split::Train),
            sample("a", Label::Fake, Split::Train),
            sample("b", Label::Fake, Split::Val),
            sample("b", Label::Real, Split::Val),
            sample("b", Label::Fake, Split::Train),
            sample("a", Label::Real, Split::Val),
        ];
        let record = |dataset: &str, label, score| ScoreRecord {
            path: String::new(),
            dataset: dataset.into(),
            label,
            score,
            video: None,
        };
        let records = vec![
            record("b", Label::Real, 0.2),
            record("b", Label::Fake, 0.1),
            record("a", Label::Real, 0.5),
        ];
        let mut o = TrainOptions::new(
            vec![PathBuf::from("data")],
            PathBuf::from("out"),
            BackboneChoice::FaceRes {
                weights: PathBuf::from("w"),
                train_blocks: 4,
            },
        );
        o.self_blend = 0.15;
        o.donor_blend = 0.5;
        let val_auc = val_metrics(&records, Path::new("out")).unwrap().0;
        let t = training_data(&samples, &val_auc, &o, "epoch 3");
        let names: Vec<&str> = t.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let b = &t.datasets[0];
        assert_eq!(
            (b.train_real, b.train_fake, b.val_real, b.val_fake),
            (1, 1, 1, 1)
        );
        assert_eq!(b.val_auc, Some(0.0));
        let a = &t.datasets[1];
        assert_eq!(
            (a.train_real, a.train_fake, a.val_real, a.val_fake),
            (0, 1, 1, 0)
        );
        assert_eq!(a.val_auc, None);
        assert_eq!(t.validated, "epoch 3");
        assert_eq!(
            t.synthetic_fakes.as_deref(),
            Some(
                "self-blended real training faces (15 % of each epoch, 50 % of them from a donor face)"
            )
        );
        o.self_blend = 0.0;
        assert_eq!(
            training_data(&samples, &val_auc, &o, "epoch 3").synthetic_fakes,
            None
        );
    }

    /// `--swap-fakes` marks the named datasets' fakes only, and refuses a
    /// name that is no dataset.
    #[test]
    fn face_swaps_are_marked_by_dataset_name() {
        let s = |dataset: &str, label| Sample {
            path: PathBuf::from("x.jpg"),
            dataset: dataset.into(),
            label,
            group: "g".into(),
            split: Split::Train,
            region_code: None,
            face_swap: false,
        };
        let mut samples = vec![
            s("dfdc", Label::Fake),
            s("dfdc", Label::Real),
            s("ciplab", Label::Fake),
        ];
        assert!(mark_face_swaps(&mut samples, &["dfdc".into()]).is_ok());
        let marked: Vec<bool> = samples.iter().map(|s| s.face_swap).collect();
        assert_eq!(marked, [true, false, false]);
        let err = mark_face_swaps(&mut samples, &["dfcd".into()]);
        assert!(
            matches!(err, Err(TrainError::Options(m)) if m.contains("dfcd") && m.contains("ciplab"))
        );
    }

    /// Sampling power 0 draws the same number from every group, 1 in
    /// proportion to the groups' sizes, 0.5 in between; every epoch has
    /// its number of faces either way.
    #[test]
    fn sampling_power_shares_epochs_by_group_size() {
        let mut samples = Vec::new();
        for (dataset, label, n) in [
            ("big", Label::Real, 400),
            ("big", Label::Fake, 400),
            ("small", Label::Real, 100),
            ("small", Label::Fake, 25),
        ] {
            for k in 0..n {
                samples.push(Sample {
                    path: PathBuf::from(format!("{dataset}/{label:?}/{k}.jpg")),
                    dataset: dataset.into(),
                    label,
                    group: format!("{k}"),
                    split: Split::Train,
                    region_code: None,
                    face_swap: false,
                });
            }
        }
        let train: Vec<usize> = (0..samples.len()).collect();
        let drawn = |power: f64| {
            let mut o = TrainOptions::new(
                Vec::new(),
                PathBuf::new(),
                BackboneChoice::Clip {
                    dir: PathBuf::new(),
                    train_blocks: 0,
                },
            );
            o.samples_per_epoch = 930;
            o.self_blend = 0.0;
            o.sampling_power = power;
            let draws = draw_epoch(&train, &samples, &o, 1);
            assert_eq!(draws.len(), 930);
            let mut n = std::collections::BTreeMap::new();
            for d in draws {
                let s = &samples[d.index];
                *n.entry((s.dataset.clone(), s.label)).or_insert(0usize) += 1;
            }
            n.into_values().collect::<Vec<usize>>()
        };
        // Groups in key order: big real, big fake, small real, small fake
        // (rounding down leaves a face or two, drawn from random groups).
        let equal = drawn(0.0);
        assert!(equal.iter().all(|&c| (232..=234).contains(&c)), "{equal:?}");
        // 930 × 400 / 925 = 402.2, × 100 / 925 = 100.5, × 25 / 925 = 25.1.
        let sized = drawn(1.0);
        assert!((402..=403).contains(&sized[0]), "{sized:?}");
        assert!((402..=403).contains(&sized[1]), "{sized:?}");
        assert!((100..=101).contains(&sized[2]), "{sized:?}");
        assert!((25..=26).contains(&sized[3]), "{sized:?}");
        // Square roots 20, 20, 10, 5 of 55: 338.2, 338.2, 169.1, 84.5.
        let root = drawn(0.5);
        assert!((338..=339).contains(&root[0]), "{root:?}");
        assert!((169..=170).contains(&root[2]), "{root:?}");
        assert!((84..=85).contains(&root[3]), "{root:?}");
    }

    /// A run of these options over these faces, for the sampling helpers.
    fn test_run<'a>(
        opts: &'a TrainOptions,
        samples: &'a [Sample],
        faces: &[Option<PreparedFace>],
        train: &[usize],
    ) -> Run<'a> {
        Run {
            opts,
            samples,
            donors: donor_pool(samples, faces, train),
            ckpt: PathBuf::new(),
            best_dir: PathBuf::new(),
            state_path: PathBuf::new(),
        }
    }

    /// `--donor-blend`: at 0 every self-blend uses the face itself; at 1
    /// another real training face of the same dataset, never the face
    /// itself nor a fake, a validation face or one of another dataset —
    /// and the blend then carries the donor's pixels.
    #[test]
    fn donors_are_other_real_training_faces_of_the_dataset() {
        use crate::face::template::TEMPLATE_LANDMARKS;
        let mut samples = Vec::new();
        let mut faces = Vec::new();
        for (k, (dataset, label, split)) in [
            ("a", Label::Real, Split::Train),
            ("a", Label::Real, Split::Train),
            ("a", Label::Real, Split::Train),
            ("a", Label::Fake, Split::Train),
            ("a", Label::Real, Split::Val),
            ("b", Label::Real, Split::Train),
        ]
        .into_iter()
        .enumerate()
        {
            samples.push(Sample {
                path: PathBuf::from(format!("{dataset}/{k}.jpg")),
                dataset: dataset.into(),
                label,
                group: format!("{k}"),
                split,
                region_code: None,
                face_swap: false,
            });
            #[allow(clippy::cast_possible_truncation)]
            let grey = 40 * k as u8;
            faces.push(Some(PreparedFace {
                // Stripes across (odd k) or down (even k).
                image: image::RgbImage::from_fn(224, 224, |x, y| {
                    let t = if k % 2 == 0 { x } else { y };
                    image::Rgb([grey + u8::from((t / 4) % 2 == 0) * 30, grey, grey])
                }),
                landmarks: TEMPLATE_LANDMARKS,
                precropped: false,
            }));
        }
        let train: Vec<usize> = (0..samples.len())
            .filter(|&i| samples[i].split == Split::Train)
            .collect();
        let opts = TrainOptions::new(
            Vec::new(),
            PathBuf::new(),
            BackboneChoice::Clip {
                dir: PathBuf::new(),
                train_blocks: 0,
            },
        );
        let none = test_run(&opts, &samples, &faces, &train);
        assert!((0..50).all(|seed| matches!(pick_donor(&none, &faces, 0, seed), Blend::Own)));
        let opts_donor = TrainOptions {
            donor_blend: 1.0,
            ..opts.clone()
        };
        let all = test_run(&opts_donor, &samples, &faces, &train);
        assert_eq!(all.donors.get("a"), Some(&vec![0, 1, 2]));
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let Blend::Donor(d) = pick_donor(&all, &faces, 1, seed) else {
                panic!("seed {seed}: no donor");
            };
            let j = faces
                .iter()
                .position(|f| f.as_ref().is_some_and(|f| std::ptr::eq(f, d)));
            seen.insert(j);
        }
        assert_eq!(seen, [Some(0), Some(2)].into_iter().collect());
        // A dataset with one real training face has no donor for it.
        assert!(matches!(pick_donor(&all, &faces, 5, 0), Blend::Own));
        // The same draw blends the same mask, with the donor's stripes
        // (down) instead of the face's own (across).
        let Some(face) = faces[1].as_ref() else {
            unreachable!()
        };
        let item = |blend| {
            let none = AugmentOptions::none();
            make_item(
                &samples[1],
                face,
                blend,
                RegionLabels::Local,
                &none,
                7,
                14,
                224,
                ([0.0; 3], [1.0; 3]),
            )
        };
        let Blend::Donor(d) = pick_donor(&all, &faces, 1, 7) else {
            panic!("no donor");
        };
        let (own, donated) = (item(Blend::Own), item(Blend::Donor(d)));
        assert!((donated.meta.label - 1.0).abs() < f32::EPSILON);
        assert_eq!(own.meta.targets, donated.meta.targets);
        assert_ne!(own.pixels, donated.pixels);
    }

    /// A plain face on the template's landmarks.
    fn template_face() -> PreparedFace {
        PreparedFace {
            image: image::RgbImage::from_pixel(224, 224, image::Rgb([120, 100, 90])),
            landmarks: crate::face::template::TEMPLATE_LANDMARKS,
            precropped: false,
        }
    }

    /// A CIPLAB training sample, its region code (if any) in its name.
    fn ciplab_sample(label: Label, code: Option<&str>, face_swap: bool) -> Sample {
        Sample {
            path: PathBuf::from(code.map_or("x.jpg".into(), |c| format!("mid_1_{c}.jpg"))),
            dataset: "ciplab".into(),
            label,
            group: "g".into(),
            split: Split::Train,
            region_code: code
                .and_then(|c| RegionCode::from_path(Path::new(&format!("mid_1_{c}.jpg")))),
            face_swap,
        }
    }

    /// `--cutout`: one of the eyes, the nose or the mouth is filled, its
    /// patches are ignored and its region label made unknown, the face
    /// label kept; a fake's only edited part is never the one filled, and
    /// every local region is filled for some draw.
    #[test]
    #[allow(clippy::float_cmp)] // labels and weights are exactly 0 or 1
    fn cutout_fills_a_local_region_and_spares_the_edit() {
        let mut face = template_face();
        #[allow(clippy::cast_possible_truncation)] // below 256
        let gradient = image::RgbImage::from_fn(224, 224, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        face.image = gradient;
        let on = AugmentOptions {
            cutout: 1.0,
            ..AugmentOptions::none()
        };
        let make = |s: &Sample, aug: &AugmentOptions, seed| {
            make_item(
                s,
                &face,
                Blend::No,
                RegionLabels::Local,
                aug,
                seed,
                14,
                224,
                ([0.0; 3], [1.0; 3]),
            )
        };
        let real = ciplab_sample(Label::Real, None, false);
        let left_eye = ciplab_sample(Label::Fake, Some("1000"), false);
        let mut filled = [0_usize; 4];
        for seed in 0..24 {
            for (s, edited) in [(&real, None), (&left_eye, Some(0))] {
                let plain = make(s, &AugmentOptions::none(), seed);
                let cut = make(s, &on, seed);
                let unknown: Vec<usize> = (0..4)
                    .filter(|&r| cut.meta.region_weights[r] == 0.0)
                    .collect();
                assert_eq!(unknown.len(), 1, "{:?}", cut.meta.region_weights);
                let r = unknown[0];
                filled[r] += 1;
                assert_ne!(Some(r), edited, "a fake's only edit stays in view");
                assert_eq!(plain.meta.region_weights[r], 1.0);
                assert_eq!(cut.meta.region_labels, plain.meta.region_labels);
                assert_eq!(cut.meta.label, plain.meta.label);
                assert_ne!(cut.pixels, plain.pixels);
                let (Some(t), Some(p)) = (&cut.meta.targets, &plain.meta.targets) else {
                    panic!("CIPLAB faces have patch targets");
                };
                let changed: Vec<usize> = (0..t.len()).filter(|&i| t[i] != p[i]).collect();
                assert!(!changed.is_empty(), "region {r}");
                assert!(changed.iter().all(|&i| t[i] == IGNORE));
            }
        }
        assert!(filled.iter().all(|&n| n > 0), "{filled:?}");
    }

    /// Region labels: a CIPLAB fake's code marks its edited local regions
    /// (the other local regions unedited, the rest unknown) and a flip swaps
    /// left and right; real faces are unedited everywhere; face swaps are
    /// edited in eyes, nose and mouth with boundary targets; other fakes
    /// are unknown everywhere; a self-blended fake marks what was blended.
    #[test]
    #[allow(clippy::float_cmp)] // labels and weights are exactly 0 or 1
    fn region_labels_follow_codes_flips_and_blends() {
        let face = template_face();
        let sample = |label, code: Option<&str>| ciplab_sample(label, code, false);
        let item = |s: &Sample, blend: bool, flip: f64| {
            let aug = AugmentOptions {
                flip,
                ..AugmentOptions::none()
            };
            let blend = if blend { Blend::Own } else { Blend::No };
            make_item(
                s,
                &face,
                blend,
                RegionLabels::Local,
                &aug,
                3,
                14,
                224,
                ([0.0; 3], [1.0; 3]),
            )
            .meta
        };
        // Edited: left eye and mouth (1001).
        let edited = sample(Label::Fake, Some("1001"));
        assert!(edited.region_code.is_some());
        let m = item(&edited, false, 0.0);
        assert_eq!(&m.region_labels[..4], &[1.0, 0.0, 0.0, 1.0]);
        assert_eq!(&m.region_weights[..4], &[1.0; 4]);
        assert!(m.region_weights[4..].iter().all(|&w| w == 0.0));
        let m = item(&edited, false, 1.0);
        assert_eq!(&m.region_labels[..4], &[0.0, 1.0, 0.0, 1.0]);
        let real = item(&sample(Label::Real, None), false, 0.0);
        assert!(real.region_labels.iter().all(|&v| v == 0.0));
        assert!(real.region_weights.iter().all(|&w| w == 1.0));
        let other = item(&sample(Label::Fake, None), false, 0.0);
        assert!(other.region_weights.iter().all(|&w| w == 0.0));
        assert!(other.targets.is_none());
        // A face swap: eyes, nose and mouth edited, the rest unknown; the
        // outline "blending boundary", the surroundings genuine, the
        // inner face ignored.
        let swap = Sample {
            face_swap: true,
            ..sample(Label::Fake, None)
        };
        let m = item(&swap, false, 0.0);
        assert_eq!(&m.region_labels[..4], &[1.0; 4]);
        assert_eq!(&m.region_weights[..4], &[1.0; 4]);
        assert!(m.region_weights[4..].iter().all(|&w| w == 0.0));
        let t = m.targets.as_deref().unwrap_or_default();
        assert_eq!(t.len(), 14 * 14);
        let mut counts = [0usize; 256];
        for &x in t {
            counts[usize::from(x)] += 1;
        }
        let count = |p: u8| counts[usize::from(p)];
        assert!(count(P_BLEND) >= 20, "{t:?}");
        assert!(count(P_GENUINE) >= 10, "{t:?}");
        assert!(count(IGNORE) >= 20, "{t:?}");
        // The centre of the face (nose) is not a target, a corner is genuine.
        assert_eq!(t[7 * 14 + 7], IGNORE);
        assert_eq!(t[0], P_GENUINE);
        // Self-blended from a real face: some local region(s) edited, and
        // only local regions known.
        for seed in 0..8 {
            let aug = AugmentOptions::none();
            let m = make_item(
                &sample(Label::Real, None),
                &face,
                Blend::Own,
                RegionLabels::Local,
                &aug,
                seed,
                14,
                224,
                ([0.0; 3], [1.0; 3]),
            )
            .meta;
            assert!((m.label - 1.0).abs() < f32::EPSILON);
            let edited: f32 = m.region_labels.iter().sum();
            assert!(edited == 1.0 || edited == 4.0, "{:?}", m.region_labels);
            assert_eq!(&m.region_weights[..4], &[1.0; 4]);
            assert!(m.region_weights[4..].iter().all(|&w| w == 0.0));
        }
    }

    /// `--region-labels masks`: a self-blend is labelled in every region
    /// from its blending mask (a face blend edited everywhere, a local
    /// blend in its own region and unedited far from it); real faces and
    /// CIPLAB codes as before; a face swap's boundary edited.
    #[test]
    #[allow(clippy::float_cmp)] // labels and weights are exactly 0 or 1
    fn mask_region_labels_cover_every_region() {
        let face = template_face();
        let sample = ciplab_sample;
        let meta = |s: &Sample, blend, labels, seed| {
            make_item(
                s,
                &face,
                blend,
                labels,
                &AugmentOptions::none(),
                seed,
                14,
                224,
                ([0.0; 3], [1.0; 3]),
            )
            .meta
        };
        let real = sample(Label::Real, None, false);
        let (mut faces, mut locals) = (0, 0);
        for seed in 0..16 {
            let m = meta(&real, Blend::Own, RegionLabels::Masks, seed);
            let edited: Vec<usize> = (0..REGIONS.len())
                .filter(|&r| m.region_labels[r] == 1.0)
                .collect();
            // Every label is known where it is set.
            for &r in &edited {
                assert_eq!(m.region_weights[r], 1.0);
            }
            if edited.len() == REGIONS.len() {
                faces += 1;
                assert!(m.region_weights.iter().all(|&w| w == 1.0));
            } else {
                locals += 1;
                assert_eq!(edited.len(), 1, "{:?}", m.region_labels);
                assert!(LOCAL.iter().any(|&r| region_index(r) == edited[0]));
                let unedited = (0..REGIONS.len())
                    .filter(|&r| m.region_weights[r] == 1.0 && m.region_labels[r] == 0.0)
                    .count();
                assert!(
                    unedited >= 3,
                    "{:?} {:?}",
                    m.region_labels,
                    m.region_weights
                );
                // The same face under the local labels: the same region.
                let l = meta(&real, Blend::Own, RegionLabels::Local, seed);
                assert_eq!(l.region_labels[edited[0]], 1.0);
            }
        }
        assert!(
            faces > 0 && locals > 0,
            "{faces} face and {locals} local blends"
        );
        // Faces as they are: the same labels under both, but for a face
        // swap's boundary.
        for s in [
            real.clone(),
            sample(Label::Fake, Some("1001"), false),
            sample(Label::Fake, None, false),
        ] {
            let a = meta(&s, Blend::No, RegionLabels::Local, 1);
            let b = meta(&s, Blend::No, RegionLabels::Masks, 1);
            assert_eq!(a.region_labels, b.region_labels);
            assert_eq!(a.region_weights, b.region_weights);
        }
        let swap = sample(Label::Fake, None, true);
        let m = meta(&swap, Blend::No, RegionLabels::Masks, 1);
        let b = region_index(Region::FaceBoundary);
        assert_eq!((m.region_labels[b], m.region_weights[b]), (1.0, 1.0));
        assert_eq!(&m.region_labels[..4], &[1.0; 4]);
        let m = meta(&swap, Blend::No, RegionLabels::Local, 1);
        assert_eq!(m.region_weights[b], 0.0);
    }
}
