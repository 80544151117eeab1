//! `sfam train`: trains SFAM heads on a backbone (see `sfam_studio::train`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use sfam_studio::model::DeviceSpec;
use sfam_studio::train::{
    BackboneChoice, RegionLabels, SmoothedLoss, TrainEvent, TrainOptions, auc_line, train,
};

/// Which backbone to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackboneKind {
    /// The bundled face-pretrained faceres network (`models/faceres/`).
    Faceres,
    /// A CLIP model folder given by `--clip` (image tower frozen, or its
    /// last layers fine-tuned with `--train-blocks`).
    Clip,
}

/// Which regions get region labels (`--region-labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RegionLabelsArg {
    /// Fakes' edits known in the eyes, nose and mouth only (the bundled
    /// model's): forehead, cheeks, chin and face boundary only ever see
    /// real faces' "unedited".
    Local,
    /// A self-blended fake's labels read from its blending mask in every
    /// region (a face blend: all nine edited); face swaps edited in the
    /// face boundary too.
    Masks,
}

/// faceres blocks trained when `--train-blocks` is not given.
pub const FACERES_TRAIN_BLOCKS: usize = 4;

/// Arguments of `sfam train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset roots: ROOT/<dataset>/{real,fake}/… (a `groups.csv` in a
    /// dataset folder, `file,source_video`, keeps each source video on one
    /// side of the train/validation split).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Output folder: checkpoints, `best/` (the model), `train_log.csv`.
    #[arg(long)]
    pub out: PathBuf,
    /// Backbone.
    #[arg(long, value_enum, default_value_t = BackboneKind::Faceres)]
    pub backbone: BackboneKind,
    /// CLIP model folder (`--backbone clip`): `config.json` +
    /// `model.safetensors` in the Hugging Face layout; builds with the `hub`
    /// feature also take `hf://OWNER/NAME[@REVISION]`.
    #[arg(long, value_name = "DIR", required_if_eq("backbone", "clip"))]
    pub clip: Option<String>,
    /// faceres weights.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/faceres/faceres.safetensors"))]
    pub faceres: PathBuf,
    /// Backbone blocks fine-tuned, counted from the end (0 = frozen):
    /// faceres' depthwise-separable blocks (13; default 4) or the CLIP
    /// image tower's transformer layers (12 in ViT-B/16; default 0).
    #[arg(long, value_name = "N")]
    pub train_blocks: Option<usize>,
    /// Epochs of the head alone on cached features of the pretrained
    /// backbone, before fine-tuning (linear probing, then fine-tuning).
    #[arg(long, default_value_t = 0)]
    pub probe_epochs: usize,
    /// Versions of each training face cached for the probe epochs: the
    /// face as it is plus N-1 augmented ones (and N-1 self-blended fakes per
    /// real face, at least one). Memory: about 200 KB per version (faceres).
    #[arg(long, default_value_t = 2)]
    pub probe_views: usize,
    /// Epochs of fine-tuning (after the probe epochs).
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Faces per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Faces per epoch, balanced over dataset × label.
    #[arg(long, default_value_t = 3072)]
    pub samples_per_epoch: usize,
    /// Peak learning rate of the head (the backbone gets `--backbone-lr-ratio` of it).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// The trained backbone blocks' peak learning rate as a share of `--lr`.
    #[arg(long, default_value_t = 0.1)]
    pub backbone_lr_ratio: f64,
    /// Decoupled weight decay of `AdamW`, every trained variable.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Dropout of the head's inputs (patch rows and global descriptor)
    /// while training (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Label smoothing of the real/fake cross-entropy: targets ε/2 and
    /// 1 − ε/2 instead of 0 and 1 (0: off).
    #[arg(long, value_name = "EPSILON", default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Token dimension of the head.
    #[arg(long, default_value_t = 256)]
    pub dim: usize,
    /// Experts per region.
    #[arg(long, default_value_t = 4)]
    pub experts: usize,
    /// Probability of a geometric jitter of each training face (scale ±8 %,
    /// rotation ±8°, shift ±8 px; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f64,
    /// Probability of a face cutout of each training face: one of the
    /// eyes, the nose or the mouth filled with its mean colour, never the
    /// only edited part of a fake (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub cutout: f64,
    /// Scales how often the degrading augmentations — JPEG re-compression
    /// (0.3), Gaussian blur (0.15), downscaling (0.25) — are applied to a
    /// training face (0: never; 1: the default probabilities).
    #[arg(long, value_name = "SCALE", default_value_t = 1.0)]
    pub degradations: f64,
    /// Share of self-blended fakes per epoch (0 turns them off).
    #[arg(long, default_value_t = 0.15)]
    pub self_blend: f64,
    /// Probability that a self-blended fake is blended with another real
    /// training face of its dataset (a donor, warped onto the face and
    /// matched to its colour) instead of with itself (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub donor_blend: f64,
    /// How an epoch's faces are shared among the (dataset, label) groups:
    /// in proportion to each group's training faces raised to this power
    /// (0: the same number from every group; 1: in proportion to size).
    #[arg(long, default_value_t = 0.0)]
    pub sampling_power: f64,
    /// Also write OUT/average/: the weights averaged over the last K
    /// fine-tuning epochs (their folders kept in OUT/snapshots/), validated
    /// like an epoch (0: off; a run resumes under another K).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub average_last: usize,
    /// Weight of the per-region loss (region logits against the regions
    /// known to be edited: CIPLAB codes, self-blended fakes; 0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub region_weight: f64,
    /// Which regions of the faces the region loss reads: `local` (fakes'
    /// edits in eyes, nose and mouth only) or `masks` (self-blends in every
    /// region, from their blending masks).
    #[arg(long, value_enum, default_value_t = RegionLabelsArg::Local)]
    pub region_labels: RegionLabelsArg,
    /// Datasets whose fakes are face swaps (e.g. `dfdc`): region labels
    /// and alignment targets for their inner face and its blended outline
    /// instead of none. Comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "DATASET")]
    pub swap_fakes: Vec<String>,
    /// Share of source groups held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start afresh even if OUT/checkpoint exists.
    #[arg(long)]
    pub no_resume: bool,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceSpec))]
    pub device: DeviceSpec,
}

/// The training options the arguments ask for.
pub(crate) fn options(args: &Args) -> Result<TrainOptions> {
    let backbone = match args.backbone {
        BackboneKind::Faceres => BackboneChoice::FaceRes {
            weights: args.faceres.clone(),
            train_blocks: args.train_blocks.unwrap_or(FACERES_TRAIN_BLOCKS),
        },
        BackboneKind::Clip => BackboneChoice::Clip {
            dir: super::embed::resolve_model(
                args.clip
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("--backbone clip needs --clip DIR"))?,
                false,
            )?,
            train_blocks: args.train_blocks.unwrap_or(0),
        },
    };
    let mut opts = TrainOptions::new(args.data.clone(), args.out.clone(), backbone);
    opts.probe_epochs = args.probe_epochs;
    opts.probe_views = args.probe_views;
    opts.epochs = args.epochs;
    opts.batch = args.batch;
    opts.samples_per_epoch = args.samples_per_epoch;
    opts.lr = args.lr;
    opts.backbone_lr_ratio = args.backbone_lr_ratio;
    opts.weight_decay = args.weight_decay;
    opts.dropout = args.dropout;
    opts.label_smoothing = args.label_smoothing;
    opts.augment.jitter = args.jitter;
    opts.augment.cutout = args.cutout;
    if !(0.0..=3.0).contains(&args.degradations) {
        anyhow::bail!(
            "--degradations must be between 0 and 3 (it scales the probabilities of JPEG, blur and downscaling), not {}",
            args.degradations
        );
    }
    opts.augment = opts.augment.with_degradations(args.degradations);
    opts.dim = args.dim;
    opts.experts = args.experts;
    opts.self_blend = args.self_blend;
    opts.donor_blend = args.donor_blend;
    opts.sampling_power = args.sampling_power;
    opts.average_last = args.average_last;
    opts.region_weight = args.region_weight;
    opts.region_labels = match args.region_labels {
        RegionLabelsArg::Local => RegionLabels::Local,
        RegionLabelsArg::Masks => RegionLabels::Masks,
    };
    opts.swap_fakes.clone_from(&args.swap_fakes);
    opts.val_fraction = args.val_fraction;
    opts.seed = args.seed;
    opts.resume = !args.no_resume;
    opts.device = args.device.open()?;
    Ok(opts)
}

/// Runs `sfam train`.
///
/// # Errors
/// Bad data or options, a model that cannot be built, a file that cannot be written.
pub fn run(args: &Args) -> Result<ExitCode> {
    let opts = options(args)?;
    sfam_studio::model::device::keep_freed_memory();
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  {per_sec}  eta {eta}",
        )?
        .progress_chars("=> "),
    );
    // A hidden bar drops `println`: log lines go to stderr directly then.
    let say = |m: String| {
        if terminal {
            bar.println(m);
        } else {
            eprintln!("{m}");
        }
    };
    let mut smoothed = SmoothedLoss::default();
    let cancel = AtomicBool::new(false);
    let summary = train(
        &opts,
        &mut |event| match event {
            TrainEvent::Message(m) => say(m),
            TrainEvent::Faces { done, total } => say(format!("faces: {done}/{total}")),
            TrainEvent::Step {
                epoch,
                step,
                steps,
                loss,
            } => {
                let s = smoothed.add(loss);
                if step == 1 {
                    bar.set_length(steps as u64);
                    bar.reset();
                    bar.set_prefix(epoch.to_string());
                }
                bar.set_position(step as u64);
                bar.set_message(format!("loss {s:.4}"));
                if !terminal && (step % 10 == 0 || step == steps) {
                    eprintln!("epoch {epoch} step {step}/{steps} loss {s:.4}");
                }
            }
            TrainEvent::Epoch(row) => {
                say(format!(
                    "epoch {} ({}) done in {:.0} s: loss {:.4} (bce {:.4}, align {:.4}, balance {:.4}, region {:.4}); {}",
                    row.epoch,
                    row.stage,
                    row.seconds,
                    row.loss,
                    row.bce,
                    row.align,
                    row.balance,
                    row.region,
                    auc_line(&row.val_auc, row.val_auc_mean, row.val_cross_auc),
                ));
            }
        },
        &cancel,
    )?;
    bar.finish_and_clear();
    eprintln!(
        "best epoch {}: model in {}",
        summary.best_epoch,
        summary.best_dir.display()
    );
    if let Some(a) = &summary.average {
        eprintln!(
            "epochs {}–{} averaged: model in {}",
            a.epochs.0,
            a.epochs.1,
            a.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
