//! The Train view (researchers): trains SFAM heads on dataset folders —
//! the run `sfam train` makes, with its options and output folder — on a
//! named worker thread, with progress, live loss and validation-AUC curves
//! per epoch, stop and resume; or follows a run folder that another
//! process writes (`sfam train` in a terminal), re-reading its
//! `train_log.csv`. A run's best model is one click from Inspect.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use egui::{Color32, RichText, Ui};
use egui_plot::{Corner, Legend, Line, LineStyle, Plot, PlotPoints, VLine};
use serde::{Deserialize, Serialize};
use sfam_studio::model::DeviceSpec;
use sfam_studio::model::sfam::HEAD_CONFIG_FILE;
use sfam_studio::train::{
    BackboneChoice, EpochLog, LAST_EPOCHS, LOG_FILE, RunSummary, SmoothedLoss, TrainError,
    TrainEvent, TrainOptions, TrainSummary, VAL_SCORES_FILE, best_epoch, read_log, run_in_progress,
    train,
};

use super::inspect::bundled_path;
use super::jobs::Job;

/// The bundled faceres weights, relative to the project root.
pub const FACERES_WEIGHTS: &str = "models/faceres/faceres.safetensors";
/// Where `sfam train` looks for them by default.
const CLI_FACERES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/faceres/faceres.safetensors"
);
/// How often a followed run's log is read again.
const REREAD: Duration = Duration::from_secs(10);
/// Log lines kept on screen.
const MESSAGES_MAX: usize = 500;

/// Which backbone a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackboneKind {
    /// The bundled face-pretrained faceres network, last blocks fine-tuned.
    Faceres,
    /// A CLIP model folder (image tower frozen, or its last layers
    /// fine-tuned).
    Clip,
}

/// The options of a run as the form holds them (kept between sessions):
/// the options of `sfam train` a researcher sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainForm {
    /// Dataset roots: `ROOT/<dataset>/{real,fake}/…`.
    pub roots: Vec<PathBuf>,
    /// The run's output folder.
    pub out: Option<PathBuf>,
    /// Backbone.
    pub backbone: BackboneKind,
    /// CLIP model folder (CLIP backbone).
    pub clip: Option<PathBuf>,
    /// faceres blocks fine-tuned, from the end (0: frozen).
    pub train_blocks: usize,
    /// CLIP image-tower layers fine-tuned, from the end (0: frozen).
    pub clip_train_blocks: usize,
    /// Epochs of the head alone on cached backbone features.
    pub probe_epochs: usize,
    /// Epochs of fine-tuning.
    pub epochs: usize,
    /// Faces per step.
    pub batch: usize,
    /// Faces per epoch.
    pub samples_per_epoch: usize,
    /// Peak learning rate of the head.
    pub lr: f64,
    /// Share of self-blended fakes.
    pub self_blend: f64,
    /// Weight of the per-region loss.
    pub region_weight: f64,
    /// Region labels of self-blends from their blending masks, in every
    /// region (`--region-labels masks`); off: eyes, nose and mouth only.
    pub region_labels_from_masks: bool,
    /// Balance of the (dataset, label) groups in an epoch (0: equal).
    pub sampling_power: f64,
    /// Scale of the JPEG, blur and downscaling probabilities.
    pub degradations: f64,
    /// Share of source groups held out for validation.
    pub val_fraction: f64,
    /// Token dimension of the head.
    pub dim: usize,
    /// Random seed.
    pub seed: u64,
    /// Compute device (`cpu`, `cuda`, `cuda:N`, `metal`).
    pub device: String,
    /// Versions of each training face cached for the probe epochs.
    pub probe_views: usize,
    /// The trained backbone blocks' share of the learning rate.
    pub backbone_lr_ratio: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Dropout of the head's inputs.
    pub dropout: f64,
    /// Label smoothing of the real/fake cross-entropy.
    pub label_smoothing: f64,
    /// Experts per region.
    pub experts: usize,
    /// Probability of a geometric jitter.
    pub jitter: f64,
    /// Probability of a face cutout.
    pub cutout: f64,
    /// Probability that a self-blended fake takes a donor face.
    pub donor_blend: f64,
    /// Also average the weights of the last this many epochs (0: off).
    pub average_last: usize,
    /// Datasets whose fakes are face swaps, comma-separated.
    pub swap_fakes: String,
}

impl Default for TrainForm {
    fn default() -> Self {
        Self::recipe()
    }
}

impl TrainForm {
    /// The bundled model's recipe (docs/MODEL.md, the card's command).
    #[must_use]
    pub fn recipe() -> Self {
        Self {
            roots: Vec::new(),
            out: None,
            backbone: BackboneKind::Faceres,
            clip: None,
            train_blocks: 9,
            clip_train_blocks: 0,
            probe_epochs: 12,
            epochs: 40,
            batch: 32,
            samples_per_epoch: 3072,
            lr: 1e-3,
            self_blend: 0.15,
            region_weight: 2.0,
            region_labels_from_masks: false,
            sampling_power: 0.5,
            degradations: 1.0,
            val_fraction: 0.2,
            dim: 256,
            seed: 1,
            device: "cpu".into(),
            probe_views: 2,
            backbone_lr_ratio: 0.1,
            weight_decay: 1e-4,
            dropout: 0.0,
            label_smoothing: 0.0,
            experts: 4,
            jitter: 0.0,
            cutout: 0.0,
            donor_blend: 0.0,
            average_last: 0,
            swap_fakes: String::new(),
        }
    }

    /// A short trial of the recipe: checks data and set-up in minutes.
    #[must_use]
    pub fn trial() -> Self {
        Self {
            train_blocks: 2,
            probe_epochs: 2,
            epochs: 2,
            samples_per_epoch: 1024,
            ..Self::recipe()
        }
    }

    /// `sfam train`'s defaults (the flags the command line leaves out).
    #[must_use]
    pub fn cli_defaults() -> Self {
        Self {
            train_blocks: crate::cli::train::FACERES_TRAIN_BLOCKS,
            probe_epochs: 0,
            epochs: 8,
            region_weight: 0.0,
            sampling_power: 0.0,
            seed: 0,
            ..Self::recipe()
        }
    }

    /// Takes a preset's training options, keeping data, output, backbone
    /// (with the CLIP layers trained) and device.
    fn apply(&mut self, preset: &Self) {
        *self = Self {
            roots: std::mem::take(&mut self.roots),
            out: self.out.take(),
            backbone: self.backbone,
            clip: self.clip.take(),
            clip_train_blocks: self.clip_train_blocks,
            device: std::mem::take(&mut self.device),
            ..preset.clone()
        };
    }

    /// The region labels the form asks for (`--region-labels`).
    fn region_labels(&self) -> sfam_studio::train::RegionLabels {
        if self.region_labels_from_masks {
            sfam_studio::train::RegionLabels::Masks
        } else {
            sfam_studio::train::RegionLabels::Local
        }
    }

    /// The face-swap datasets named in `swap_fakes`.
    fn swap_list(&self) -> Vec<String> {
        self.swap_fakes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// What is missing before a run can start, if anything.
    fn missing(&self) -> Option<&'static str> {
        if self.roots.is_empty() {
            Some("add at least one data folder (ROOT/<dataset>/{real,fake}/...)")
        } else if self.out.is_none() {
            Some("choose an output folder for the run")
        } else if self.backbone == BackboneKind::Clip && self.clip.is_none() {
            Some("choose the CLIP model folder")
        } else {
            None
        }
    }

    /// The training options this form asks for, with `faceres` as the
    /// faceres weights, and the device to open (on the worker).
    ///
    /// # Errors
    /// What is missing or out of range, in words.
    pub fn options(&self, faceres: &Path) -> Result<(TrainOptions, DeviceSpec), String> {
        if let Some(m) = self.missing() {
            return Err(m.into());
        }
        let Some(out) = &self.out else {
            return Err("choose an output folder for the run".into());
        };
        let backbone = match (self.backbone, &self.clip) {
            (BackboneKind::Clip, Some(dir)) => BackboneChoice::Clip {
                dir: dir.clone(),
                train_blocks: self.clip_train_blocks,
            },
            _ => BackboneChoice::FaceRes {
                weights: faceres.to_path_buf(),
                train_blocks: self.train_blocks,
            },
        };
        if !(0.0..=3.0).contains(&self.degradations) {
            return Err(format!(
                "degradations must be between 0 and 3 (it scales the probabilities of JPEG, blur and downscaling), not {}",
                self.degradations
            ));
        }
        let device: DeviceSpec = self.device.parse()?;
        let mut o = TrainOptions::new(self.roots.clone(), out.clone(), backbone);
        o.probe_epochs = self.probe_epochs;
        o.epochs = self.epochs;
        o.batch = self.batch;
        o.samples_per_epoch = self.samples_per_epoch;
        o.lr = self.lr;
        o.dim = self.dim;
        o.self_blend = self.self_blend;
        o.sampling_power = self.sampling_power;
        o.region_weight = self.region_weight;
        o.region_labels = self.region_labels();
        o.val_fraction = self.val_fraction;
        o.seed = self.seed;
        o.probe_views = self.probe_views;
        o.backbone_lr_ratio = self.backbone_lr_ratio;
        o.weight_decay = self.weight_decay;
        o.dropout = self.dropout;
        o.label_smoothing = self.label_smoothing;
        o.experts = self.experts;
        o.augment.jitter = self.jitter;
        o.augment.cutout = self.cutout;
        o.augment = o.augment.with_degradations(self.degradations);
        o.donor_blend = self.donor_blend;
        o.average_last = self.average_last;
        o.swap_fakes = self.swap_list();
        o.resume = true;
        Ok((o, device))
    }

    /// The `sfam train` command that makes the same run (`faceres`: the
    /// weights the app uses), as arguments.
    #[must_use]
    pub fn cli_args(&self, faceres: &Path) -> Vec<String> {
        let d = Self::cli_defaults();
        let mut a: Vec<String> = vec!["sfam".into(), "train".into(), "--data".into()];
        if self.roots.is_empty() {
            a.push("ROOT".into());
        }
        a.extend(self.roots.iter().map(|r| r.display().to_string()));
        a.push("--out".into());
        a.push(
            self.out
                .as_ref()
                .map_or_else(|| "OUT".into(), |o| o.display().to_string()),
        );
        let mut flag = |name: &str, value: String, default: String| {
            if value != default {
                a.push(format!("--{name}"));
                a.push(value);
            }
        };
        match (self.backbone, &self.clip) {
            (BackboneKind::Clip, clip) => {
                flag("backbone", "clip".into(), String::new());
                flag(
                    "clip",
                    clip.as_ref()
                        .map_or_else(|| "DIR".into(), |c| c.display().to_string()),
                    String::new(),
                );
                flag(
                    "train-blocks",
                    self.clip_train_blocks.to_string(),
                    "0".into(),
                );
            }
            (BackboneKind::Faceres, _) => {
                flag("faceres", faceres.display().to_string(), CLI_FACERES.into());
                flag(
                    "train-blocks",
                    self.train_blocks.to_string(),
                    d.train_blocks.to_string(),
                );
            }
        }
        let n = |v: usize| v.to_string();
        let f = |v: f64| v.to_string();
        flag("probe-epochs", n(self.probe_epochs), n(d.probe_epochs));
        flag("epochs", n(self.epochs), n(d.epochs));
        flag("batch", n(self.batch), n(d.batch));
        flag(
            "samples-per-epoch",
            n(self.samples_per_epoch),
            n(d.samples_per_epoch),
        );
        flag("lr", f(self.lr), f(d.lr));
        flag("self-blend", f(self.self_blend), f(d.self_blend));
        flag("region-weight", f(self.region_weight), f(d.region_weight));
        flag(
            "region-labels",
            self.region_labels().name().into(),
            d.region_labels().name().into(),
        );
        flag(
            "sampling-power",
            f(self.sampling_power),
            f(d.sampling_power),
        );
        flag("degradations", f(self.degradations), f(d.degradations));
        flag("val-fraction", f(self.val_fraction), f(d.val_fraction));
        flag("dim", n(self.dim), n(d.dim));
        flag("seed", self.seed.to_string(), d.seed.to_string());
        flag("device", self.device.trim().to_owned(), d.device);
        flag("probe-views", n(self.probe_views), n(d.probe_views));
        flag(
            "backbone-lr-ratio",
            f(self.backbone_lr_ratio),
            f(d.backbone_lr_ratio),
        );
        flag("weight-decay", f(self.weight_decay), f(d.weight_decay));
        flag("dropout", f(self.dropout), f(d.dropout));
        flag(
            "label-smoothing",
            f(self.label_smoothing),
            f(d.label_smoothing),
        );
        flag("experts", n(self.experts), n(d.experts));
        flag("jitter", f(self.jitter), f(d.jitter));
        flag("cutout", f(self.cutout), f(d.cutout));
        flag("donor-blend", f(self.donor_blend), f(d.donor_blend));
        flag("average-last", n(self.average_last), n(d.average_last));
        flag("swap-fakes", self.swap_list().join(","), String::new());
        a
    }
}

/// The arguments as one line a shell takes (quoted where needed).
#[must_use]
pub fn shell_line(args: &[String]) -> String {
    let mut line = String::new();
    for (k, a) in args.iter().enumerate() {
        if k > 0 {
            line.push(' ');
        }
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
        if plain {
            line.push_str(a);
        } else {
            let _ = write!(line, "'{}'", a.replace('\'', r"'\''"));
        }
    }
    line
}

/// How a run trained here ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every epoch done.
    Finished {
        /// The epoch `best/` holds.
        best_epoch: usize,
        /// `best/`.
        best_dir: PathBuf,
    },
    /// Stopped by the user; the last checkpoint stays.
    Stopped,
    /// Failed, with why.
    Failed(String),
}

/// What a training worker ends with.
pub enum Ended {
    /// Every epoch done.
    Done(Box<TrainSummary>),
    /// Stopped by the user.
    Stopped,
    /// Failed, with why.
    Failed(String),
}

/// What a training worker says while it runs (besides progress).
enum Update {
    Message(String),
    Epoch(EpochLog),
}

/// Whether `dir` holds a training run (`sfam train --out DIR`): its log
/// or its checkpoint's state.
#[must_use]
pub fn is_run_folder(dir: &Path) -> bool {
    dir.join(LOG_FILE).is_file() || dir.join("checkpoint").join("state.json").is_file()
}

/// What reading a run folder finds.
pub struct RunFiles {
    /// Its `train_log.csv` (empty when no epoch has finished).
    pub log: Vec<EpochLog>,
    /// Its model folders.
    pub models: RunModels,
    /// Whether a run is training it now (`None`: cannot tell).
    pub running: Option<bool>,
}

/// Which model folders a run has written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunModels {
    /// `best/`.
    pub best: bool,
    /// `average/` (`--average-last`).
    pub average: bool,
}

/// Reads a run folder's log. `must_be_run`: a folder with neither a log
/// nor a checkpoint is an error (else an empty log).
///
/// # Errors
/// A folder that is not a run, a log that cannot be read.
pub fn read_run(dir: &Path, must_be_run: bool) -> Result<RunFiles, String> {
    let log_path = dir.join(LOG_FILE);
    let models = RunModels {
        best: dir.join("best").join(HEAD_CONFIG_FILE).is_file(),
        average: dir.join("average").join(HEAD_CONFIG_FILE).is_file(),
    };
    let log = if log_path.is_file() {
        read_log(&log_path).map_err(|e| e.to_string())?
    } else if must_be_run && !dir.join("checkpoint").is_dir() {
        return Err(format!(
            "not a training run folder (no {LOG_FILE}, no checkpoint/): {}",
            dir.display()
        ));
    } else {
        Vec::new()
    };
    Ok(RunFiles {
        log,
        models,
        running: run_in_progress(dir),
    })
}

/// The run shown: trained here, or followed.
pub struct RunShown {
    /// Its output folder.
    pub dir: PathBuf,
    /// Its epochs so far.
    pub log: Vec<EpochLog>,
    /// What the training said (runs trained here).
    pub messages: Vec<String>,
    /// Trained by this app (else followed: its log is read again every
    /// few seconds).
    pub live: bool,
    /// Epochs in all, for a run trained here.
    pub total_epochs: Option<usize>,
    /// How a run trained here ended.
    pub outcome: Option<Outcome>,
    /// Its model folders.
    pub models: RunModels,
    /// Whether a run is training it now, as last read (followed runs).
    pub running: Option<bool>,
    /// A followed run is read again (off after a failed read).
    following: bool,
}

impl RunShown {
    fn new(dir: PathBuf, live: bool, total_epochs: Option<usize>) -> Self {
        Self {
            dir,
            log: Vec::new(),
            messages: Vec::new(),
            live,
            total_epochs,
            outcome: None,
            models: RunModels::default(),
            running: None,
            following: !live,
        }
    }

    /// Adds or replaces rows by epoch, in epoch order.
    fn merge(&mut self, rows: Vec<EpochLog>) {
        for r in rows {
            match self.log.binary_search_by_key(&r.epoch, |l| l.epoch) {
                Ok(i) => self.log[i] = r,
                Err(i) => self.log.insert(i, r),
            }
        }
    }

    /// Takes in what the training worker has said so far.
    fn drain(&mut self, rx: &Receiver<Update>) {
        while let Ok(u) = rx.try_recv() {
            match u {
                Update::Message(m) => self.say(m),
                Update::Epoch(row) => {
                    self.merge(vec![row]);
                    // Every finished epoch has written best/.
                    self.models.best = true;
                }
            }
        }
    }

    fn say(&mut self, m: String) {
        self.messages.push(m);
        if self.messages.len() > MESSAGES_MAX {
            self.messages.drain(..self.messages.len() - MESSAGES_MAX);
        }
    }

    /// Seconds left, from the mean time of the epochs of each stage so
    /// far (`None` while a stage still to come has no epoch to go by).
    fn seconds_left(&self, probe_epochs: usize) -> Option<f64> {
        let total = self.total_epochs?;
        let done = self.log.last().map_or(0, |l| l.epoch);
        let mean = |stage: &str| {
            let t: Vec<f64> = self
                .log
                .iter()
                .filter(|l| l.stage == stage)
                .map(|l| l.seconds)
                .collect();
            #[allow(clippy::cast_precision_loss)]
            (!t.is_empty()).then(|| t.iter().sum::<f64>() / t.len() as f64)
        };
        let probe_left = probe_epochs.saturating_sub(done);
        let fine_left = total.saturating_sub(done.max(probe_epochs));
        let mut left = 0.0;
        #[allow(clippy::cast_precision_loss)]
        {
            if probe_left > 0 {
                left += mean("probe")? * probe_left as f64;
            }
            if fine_left > 0 {
                left += mean("finetune")? * fine_left as f64;
            }
        }
        Some(left)
    }
}

/// What the view asks of the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Pick a data folder to add.
    AddDataDialog,
    /// Pick the output folder.
    ChooseOutDialog,
    /// Pick the CLIP model folder.
    ChooseClipDialog,
    /// Pick a run folder to follow.
    FollowDialog,
    /// Pick a run folder to compare with the one shown.
    CompareDialog,
    /// Start (or resume) the run of the form.
    Start,
    /// Use this model folder in Inspect and for scoring.
    UseModel(PathBuf),
    /// Open this score table in the Datasets view.
    OpenScores(PathBuf),
}

/// Another run drawn beside the one shown, to compare.
pub struct ComparedRun {
    /// Its folder.
    pub dir: PathBuf,
    /// Its epochs (as read when it was added).
    pub log: Vec<EpochLog>,
}

/// The name a run goes by in legends and tables: its folder's name.
fn run_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The Train view.
pub struct TrainView {
    /// The run shown.
    pub shown: Option<RunShown>,
    /// Runs drawn beside it.
    pub compared: Vec<ComparedRun>,
    /// Reads of runs to compare.
    compare_jobs: Vec<Job<(PathBuf, Result<RunFiles, String>)>>,
    /// The training worker.
    pub job: Option<Job<Ended>>,
    updates: Option<Receiver<Update>>,
    /// A read of the shown run's folder.
    read_job: Option<Job<Result<RunFiles, String>>>,
    last_read: Option<Instant>,
    /// How often a followed run's log is read again.
    pub reread_every: Duration,
    /// Fold the settings away at the next frame (a run was started or
    /// opened: its curves matter now).
    fold_settings: bool,
}

impl Default for TrainView {
    fn default() -> Self {
        Self {
            shown: None,
            compared: Vec::new(),
            compare_jobs: Vec::new(),
            job: None,
            updates: None,
            read_job: None,
            last_read: None,
            reread_every: REREAD,
            fold_settings: false,
        }
    }
}

impl TrainView {
    /// Whether a run is training.
    #[must_use]
    pub fn training(&self) -> bool {
        self.job.is_some()
    }

    /// Starts (or resumes) the form's run on a worker thread named
    /// `sfam-train`.
    ///
    /// # Errors
    /// A run already training, missing options, no faceres weights, no
    /// thread.
    pub fn start(
        &mut self,
        form: &TrainForm,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        if self.job.is_some() {
            return Err("a run is already training; stop it first".into());
        }
        if let Some(m) = form.missing() {
            return Err(format!("cannot start training: {m}"));
        }
        let faceres = faceres_weights().ok_or_else(|| {
            format!("the bundled faceres weights are missing ({FACERES_WEIGHTS})")
        })?;
        let (mut opts, device) = form.options(&faceres)?;
        let total = opts.probe_epochs + opts.epochs;
        let (tx, rx) = sync_channel::<Update>(64);
        let job = Job::spawn("train", "training", repaint.clone(), move |ctx| {
            // Training's freed buffers stay with the process (see
            // `keep_freed_memory`): each step needs them again.
            sfam_studio::model::device::keep_freed_memory();
            opts.device = match device.open() {
                Ok(d) => d,
                Err(e) => return Ended::Failed(e.to_string()),
            };
            let mut smoothed = SmoothedLoss::default();
            // Never blocks the worker: a dropped row comes back with the
            // run's summary (a dropped message is lost).
            let send = |u: Update| {
                let _ = tx.try_send(u);
            };
            let result = train(
                &opts,
                &mut |event| match event {
                    TrainEvent::Message(m) => send(Update::Message(m)),
                    TrainEvent::Faces { done, total: n } => {
                        #[allow(clippy::cast_precision_loss)]
                        let f = done as f32 / n.max(1) as f32;
                        ctx.progress(f, format!("aligning faces {done}/{n}"));
                    }
                    TrainEvent::Step {
                        epoch,
                        step,
                        steps,
                        loss,
                    } => {
                        let s = smoothed.add(loss);
                        #[allow(clippy::cast_precision_loss)]
                        let f = step as f32 / steps.max(1) as f32;
                        ctx.progress(
                            f,
                            format!("epoch {epoch} of {total}, step {step}/{steps}, loss {s:.4}"),
                        );
                    }
                    TrainEvent::Epoch(row) => send(Update::Epoch(row)),
                },
                ctx.cancel_flag(),
            );
            match result {
                Ok(s) => Ended::Done(Box::new(s)),
                Err(TrainError::Cancelled) => Ended::Stopped,
                // The app has no --out or --no-resume.
                Err(e) => Ended::Failed(e.to_string().replace(
                    "use another --out or --no-resume",
                    "choose another output folder",
                )),
            }
        })?;
        let out = form.out.clone().unwrap_or_default();
        let mut shown = RunShown::new(out.clone(), true, Some(total));
        shown.say(format!("training into {}", out.display()));
        self.shown = Some(shown);
        self.fold_settings = true;
        self.job = Some(job);
        self.updates = Some(rx);
        // The epochs of a run being resumed.
        self.read(repaint);
        Ok(())
    }

    /// Shows a run folder's curves and reads it again every few seconds
    /// (another process may be training into it).
    pub fn follow(&mut self, dir: PathBuf, repaint: Option<egui::Context>) {
        if self.job.is_some() {
            return;
        }
        self.shown = Some(RunShown::new(dir, false, None));
        self.fold_settings = true;
        self.read_job = None;
        self.read(repaint);
    }

    /// Reads a run folder to draw beside the one shown.
    ///
    /// # Errors
    /// The run is shown or compared already, or no thread.
    pub fn compare_with(
        &mut self,
        dir: PathBuf,
        repaint: Option<egui::Context>,
    ) -> Result<(), String> {
        let taken = self.shown.as_ref().is_some_and(|s| s.dir == dir)
            || self.compared.iter().any(|c| c.dir == dir);
        if taken {
            return Err(format!("{} is shown already", dir.display()));
        }
        let job = Job::spawn("read-run", "reading a run", repaint, move |_| {
            let files = read_run(&dir, true);
            (dir, files)
        })?;
        self.compare_jobs.push(job);
        Ok(())
    }

    /// Starts a read of the shown run's folder unless one is running.
    fn read(&mut self, repaint: Option<egui::Context>) {
        let Some(s) = &self.shown else {
            return;
        };
        if self.read_job.is_some() {
            return;
        }
        let dir = s.dir.clone();
        let must_be_run = !s.live;
        self.last_read = Some(Instant::now());
        // A failed spawn is retried at the next read.
        self.read_job = Job::spawn("read-run", "reading the run", repaint, move |_| {
            read_run(&dir, must_be_run)
        })
        .ok();
    }

    /// Drains the workers (every frame); errors to show.
    pub fn poll(&mut self, repaint: Option<&egui::Context>) -> Vec<String> {
        let mut errors = Vec::new();
        if let (Some(rx), Some(s)) = (&self.updates, &mut self.shown) {
            s.drain(rx);
        }
        if let Some(job) = &mut self.job
            && let Some(result) = job.poll()
        {
            self.job = None;
            // What the worker said before its result.
            if let (Some(rx), Some(s)) = (self.updates.take(), &mut self.shown) {
                s.drain(&rx);
            }
            if let Some(s) = &mut self.shown {
                let outcome = match result {
                    Ok(Ended::Done(summary)) => {
                        s.merge(summary.log.clone());
                        s.models = RunModels {
                            best: true,
                            average: summary.average.is_some(),
                        };
                        s.say(format!(
                            "finished: best epoch {}, model in {}",
                            summary.best_epoch,
                            summary.best_dir.display()
                        ));
                        Outcome::Finished {
                            best_epoch: summary.best_epoch,
                            best_dir: summary.best_dir,
                        }
                    }
                    Ok(Ended::Stopped) => {
                        s.say("stopped; the last checkpoint stays".into());
                        Outcome::Stopped
                    }
                    Ok(Ended::Failed(e)) => {
                        errors.push(format!("training failed: {e}"));
                        Outcome::Failed(e)
                    }
                    Err(()) => {
                        let e = "the training worker stopped without a result".to_owned();
                        errors.push(e.clone());
                        Outcome::Failed(e)
                    }
                };
                s.outcome = Some(outcome);
            }
        }
        if let Some(job) = &mut self.read_job
            && let Some(result) = job.poll()
        {
            self.read_job = None;
            if let Some(s) = &mut self.shown {
                match result {
                    Ok(Ok(files)) => {
                        s.merge(files.log);
                        s.models.best |= files.models.best;
                        s.models.average |= files.models.average;
                        s.running = files.running;
                    }
                    Ok(Err(e)) => {
                        s.following = false;
                        errors.push(e);
                    }
                    Err(()) => s.following = false,
                }
            }
        }
        self.poll_compared(&mut errors);
        let due = self
            .last_read
            .is_none_or(|t| t.elapsed() >= self.reread_every);
        if self.shown.as_ref().is_some_and(|s| s.following) && due {
            self.read(repaint.cloned());
        }
        errors
    }

    /// Drains the reads of runs to compare.
    fn poll_compared(&mut self, errors: &mut Vec<String>) {
        let compared = &mut self.compared;
        self.compare_jobs.retain_mut(|job| match job.poll() {
            None => true,
            Some(Ok((dir, Ok(files)))) => {
                if files.log.is_empty() {
                    errors.push(format!(
                        "no epoch finished yet in {}: nothing to compare",
                        dir.display()
                    ));
                } else {
                    compared.push(ComparedRun {
                        dir,
                        log: files.log,
                    });
                }
                false
            }
            Some(Ok((_, Err(e)))) => {
                errors.push(e);
                false
            }
            Some(Err(())) => false,
        });
    }

    /// Draws the view; what it asks of the app.
    #[allow(clippy::too_many_lines)]
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        form: &mut TrainForm,
        dataset_roots: &[PathBuf],
    ) -> Vec<Request> {
        let mut requests = Vec::new();
        if self.shown.as_ref().is_some_and(|s| s.following) {
            ui.ctx().request_repaint_after(self.reread_every);
        }
        ui.horizontal_wrapped(|ui| {
            let can_start = self.job.is_none() && form.missing().is_none();
            let start = ui
                .add_enabled(can_start, egui::Button::new("Start training"))
                .on_hover_text(
                    "trains into the output folder; a folder that holds a stopped run of \
                     the same settings resumes from its last checkpoint",
                )
                .on_disabled_hover_text(form.missing().unwrap_or("a run is training"));
            if start.clicked() {
                requests.push(Request::Start);
            }
            if ui
                .add_enabled(
                    self.job.is_none(),
                    egui::Button::new("Follow a run folder..."),
                )
                .on_hover_text(
                    "show the curves of a run folder (sfam train --out DIR) and read them \
                     again as another process trains",
                )
                .clicked()
            {
                requests.push(Request::FollowDialog);
            }
            if let Some(s) = &self.shown
                && s.models.best
            {
                let best = best_epoch(&s.log);
                let text = best.map_or_else(
                    || "Use its best model".to_owned(),
                    |e| format!("Use its best model (epoch {e})"),
                );
                if ui
                    .button(text)
                    .on_hover_text(format!(
                        "{}: in Inspect and for scoring datasets",
                        s.dir.join("best").display()
                    ))
                    .clicked()
                {
                    requests.push(Request::UseModel(s.dir.join("best")));
                }
            }
            if let Some(s) = &self.shown
                && s.models.best
                && ui
                    .button("Its validation scores in Datasets")
                    .on_hover_text(
                        "best/val_scores.csv: the best epoch's scores of the validation faces \
                         — the Cross-AUC matrix, histograms and ROC curves",
                    )
                    .clicked()
            {
                requests.push(Request::OpenScores(
                    s.dir.join("best").join(VAL_SCORES_FILE),
                ));
            }
            if let Some(s) = &self.shown
                && s.models.average
                && ui
                    .button("Use its averaged model")
                    .on_hover_text(format!(
                        "{}: the weights of the last epochs averaged (--average-last)",
                        s.dir.join("average").display()
                    ))
                    .clicked()
            {
                requests.push(Request::UseModel(s.dir.join("average")));
            }
        });
        if let Some(job) = &self.job {
            if job.progress_row(ui, "Stop", 60.0) {
                job.cancel();
            }
            if let Some(s) = &self.shown {
                let done = s.log.last().map_or(0, |l| l.epoch);
                let mut line = format!(
                    "{done} of {} epochs done",
                    s.total_epochs.unwrap_or_default()
                );
                if let Some(left) = s.seconds_left(form.probe_epochs) {
                    let _ = write!(line, "; about {} left", duration(left));
                }
                ui.label(line);
            }
        }
        if let Some(s) = &self.shown {
            outcome_ui(ui, s, self.reread_every);
        }
        ui.separator();
        let fold = std::mem::take(&mut self.fold_settings).then_some(false);
        egui::CollapsingHeader::new("Run settings")
            .default_open(self.shown.is_none())
            .open(fold)
            .show(ui, |ui| {
                ui.add_enabled_ui(self.job.is_none(), |ui| {
                    form_ui(ui, form, dataset_roots, &mut requests);
                });
            });
        ui.separator();
        match &self.shown {
            Some(s) if !s.log.is_empty() => {
                let compare = ui
                    .button("Compare with a run...")
                    .on_hover_text(
                        "draw another run folder's validation AUC beside this one, \
                         and add it to the runs table",
                    )
                    .clicked();
                if compare {
                    requests.push(Request::CompareDialog);
                }
                run_ui(ui, s, &mut self.compared);
            }
            Some(s) => {
                ui.label(format!("{}: no epoch finished yet", s.dir.display()));
                messages_ui(ui, s);
            }
            None => {
                ui.label(
                    "Train the SFAM heads on your own datasets: add data folders (each \
                     ROOT/<dataset>/{real,fake}/...; a groups.csv keeps each source video on \
                     one side of the validation split), choose an output folder, and start. \
                     Every epoch writes a checkpoint and best/ (the epoch with the best mean \
                     validation AUC); a stopped run resumes where it stopped. A run started \
                     with `sfam train` in a terminal can be followed here.",
                );
            }
        }
        requests
    }
}

/// The faceres weights the app trains on (`sfam train`'s default path
/// when that is the same file), looked up once.
#[must_use]
pub fn faceres_weights() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = bundled_path(FACERES_WEIGHTS, Path::is_file)?;
            let same = |a: &Path, b: &Path| {
                matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
            };
            Some(if same(&found, Path::new(CLI_FACERES)) {
                PathBuf::from(CLI_FACERES)
            } else {
                found
            })
        })
        .clone()
}

/// `s` seconds as "1 h 05 min", "12 min" or "40 s".
fn duration(s: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min", s.div_ceil(60))
    } else {
        format!("{s} s")
    }
}

fn outcome_ui(ui: &mut Ui, s: &RunShown, reread_every: Duration) {
    match &s.outcome {
        Some(Outcome::Finished {
            best_epoch,
            best_dir,
        }) => {
            ui.label(format!(
                "Finished: best epoch {best_epoch}, model in {}",
                best_dir.display()
            ));
        }
        Some(Outcome::Stopped) => {
            let done = s.log.last().map_or(0, |l| l.epoch);
            ui.label(format!(
                "Stopped after epoch {done}; its checkpoint stays in {}. Start again with the \
                 same settings and output folder to resume.",
                s.dir.display()
            ));
        }
        Some(Outcome::Failed(e)) => {
            ui.colored_label(ui.visuals().error_fg_color, format!("Failed: {e}"));
        }
        None if !s.live => {
            let now = match s.running {
                Some(true) => "; a run is training it now",
                Some(false) => "; no run is training it now (finished or stopped)",
                None => "",
            };
            ui.label(format!(
                "Following {} (read again every {} s){now}",
                s.dir.display(),
                reread_every.as_secs()
            ));
        }
        None => {}
    }
}

fn form_ui(
    ui: &mut Ui,
    form: &mut TrainForm,
    dataset_roots: &[PathBuf],
    requests: &mut Vec<Request>,
) {
    egui::Grid::new("train_form_paths")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .min_col_width(FORM_LABEL_WIDTH)
        .show(ui, |ui| {
            ui.label("Data folders");
            ui.vertical(|ui| {
                let mut remove = None;
                for (k, r) in form.roots.iter().enumerate() {
                    ui.horizontal(|ui| {
                        ui.monospace(r.display().to_string());
                        if ui.small_button("remove").clicked() {
                            remove = Some(k);
                        }
                    });
                }
                if let Some(k) = remove {
                    form.roots.remove(k);
                }
                ui.horizontal(|ui| {
                    if ui.button("Add data folder...").clicked() {
                        requests.push(Request::AddDataDialog);
                    }
                    if !dataset_roots.is_empty()
                        && form.roots != dataset_roots
                        && ui
                            .button(format!(
                                "Use the Datasets view's folders ({})",
                                dataset_roots.len()
                            ))
                            .clicked()
                    {
                        form.roots = dataset_roots.to_vec();
                    }
                });
            });
            ui.end_row();

            ui.label("Output folder");
            ui.horizontal(|ui| {
                match &form.out {
                    Some(o) => ui.monospace(o.display().to_string()),
                    None => ui.weak("(none)"),
                };
                if ui.button("Choose...").clicked() {
                    requests.push(Request::ChooseOutDialog);
                }
            });
            ui.end_row();

            ui.label("Backbone");
            ui.horizontal(|ui| {
                ui.radio_value(
                    &mut form.backbone,
                    BackboneKind::Faceres,
                    "faceres (bundled, face-pretrained)",
                );
                ui.radio_value(&mut form.backbone, BackboneKind::Clip, "CLIP folder");
                if form.backbone == BackboneKind::Clip {
                    match &form.clip {
                        Some(c) => ui.monospace(c.display().to_string()),
                        None => ui.weak("(none)"),
                    };
                    if ui.button("Choose...").clicked() {
                        requests.push(Request::ChooseClipDialog);
                    }
                }
            });
            ui.end_row();
        });
    egui::Grid::new("train_form_options")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .min_col_width(FORM_LABEL_WIDTH)
        .show(ui, |ui| {
            options_rows(ui, form);
            more_options_rows(ui, form);
        });
    advanced_ui(ui, form);
    presets_ui(ui, form);
}

/// Preset buttons, and the run's `sfam train` command.
fn presets_ui(ui: &mut Ui, form: &mut TrainForm) {
    ui.horizontal(|ui| {
        ui.label("Presets:");
        if ui
            .button("The bundled model's recipe")
            .on_hover_text("docs/MODEL.md: about 2 h 15 min on a 2-core CPU for ../shared/data")
            .clicked()
        {
            form.apply(&TrainForm::recipe());
        }
        if ui
            .button("Short trial")
            .on_hover_text("the recipe, 2 + 2 epochs of 1024 faces: checks data and set-up")
            .clicked()
        {
            form.apply(&TrainForm::trial());
        }
    });
    let faceres = faceres_weights().unwrap_or_else(|| PathBuf::from(FACERES_WEIGHTS));
    let line = shell_line(&form.cli_args(&faceres));
    ui.horizontal_wrapped(|ui| {
        ui.label("The same run from a terminal:");
        ui.add(egui::Label::new(RichText::new(&line).monospace()).wrap());
        if ui.small_button("Copy").clicked() {
            ui.ctx().copy_text(line.clone());
        }
    });
}

/// Width of the form's label column.
const FORM_LABEL_WIDTH: f32 = 140.0;

/// The form's rows of training options (a grid's).
fn options_rows(ui: &mut Ui, form: &mut TrainForm) {
    if form.backbone == BackboneKind::Faceres {
        let l = ui.label("Fine-tuned blocks");
        ui.add(egui::DragValue::new(&mut form.train_blocks).range(0..=13))
            .labelled_by(l.id)
            .on_hover_text("faceres blocks trained, counted from the end (0: frozen)");
        ui.end_row();
    } else {
        let l = ui.label("Fine-tuned layers");
        ui.add(egui::DragValue::new(&mut form.clip_train_blocks).range(0..=48))
            .labelled_by(l.id)
            .on_hover_text(
                "transformer layers of the CLIP image tower trained, counted from the end \
                 (0: frozen; ViT-B/16 has 12); its final layer norm and projection stay as loaded",
            );
        ui.end_row();
    }
    ui.label("Epochs");
    ui.horizontal(|ui| {
        field(
            ui,
            "probe",
            egui::DragValue::new(&mut form.probe_epochs).range(0..=1000),
        )
        .on_hover_text("epochs of the head alone on cached backbone features");
        field(
            ui,
            "fine-tuning",
            egui::DragValue::new(&mut form.epochs).range(0..=1000),
        );
    });
    ui.end_row();
    ui.label("Faces");
    ui.horizontal(|ui| {
        field(
            ui,
            "per step",
            egui::DragValue::new(&mut form.batch).range(1..=1024),
        );
        field(
            ui,
            "per epoch",
            egui::DragValue::new(&mut form.samples_per_epoch)
                .range(1..=1_000_000)
                .speed(16.0),
        );
    });
    ui.end_row();
    let l = ui.label("Learning rate");
    ui.add(
        egui::DragValue::new(&mut form.lr)
            .range(1e-6..=1.0)
            .speed(1e-5)
            .max_decimals(6),
    )
    .labelled_by(l.id);
    ui.end_row();
}

/// The form's rows of losses, sampling, augmentation, validation and head.
/// The rest of `sfam train`'s options, folded away by default (the
/// presets set them to their defaults).
fn advanced_ui(ui: &mut Ui, form: &mut TrainForm) {
    egui::CollapsingHeader::new("More options")
        .default_open(false)
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                field(
                    ui,
                    "probe views",
                    egui::DragValue::new(&mut form.probe_views).range(1..=16),
                )
                .on_hover_text("versions of each training face cached for the probe epochs");
                field(
                    ui,
                    "backbone lr share",
                    egui::DragValue::new(&mut form.backbone_lr_ratio)
                        .range(0.0..=1.0)
                        .speed(0.005),
                );
                field(
                    ui,
                    "weight decay",
                    egui::DragValue::new(&mut form.weight_decay)
                        .range(0.0..=1.0)
                        .speed(1e-5)
                        .max_decimals(6),
                );
                field(
                    ui,
                    "dropout",
                    egui::DragValue::new(&mut form.dropout)
                        .range(0.0..=0.9)
                        .speed(0.01),
                );
                field(
                    ui,
                    "label smoothing",
                    egui::DragValue::new(&mut form.label_smoothing)
                        .range(0.0..=0.5)
                        .speed(0.01),
                )
                .on_hover_text(
                    "targets ε/2 (real) and 1 − ε/2 (fake) for the real/fake loss instead of 0 and 1",
                );
                field(
                    ui,
                    "experts per region",
                    egui::DragValue::new(&mut form.experts).range(1..=16),
                );
            });
            ui.horizontal_wrapped(|ui| {
                field(
                    ui,
                    "geometric jitter",
                    egui::DragValue::new(&mut form.jitter)
                        .range(0.0..=1.0)
                        .speed(0.01),
                )
                .on_hover_text("probability of scale ±8 %, rotation ±8°, shift ±8 px");
                field(
                    ui,
                    "face cutout",
                    egui::DragValue::new(&mut form.cutout)
                        .range(0.0..=1.0)
                        .speed(0.01),
                )
                .on_hover_text(
                    "probability of filling one of the eyes, the nose or the mouth with its mean colour (never a fake's only edited part)",
                );
                field(
                    ui,
                    "donor blends",
                    egui::DragValue::new(&mut form.donor_blend)
                        .range(0.0..=1.0)
                        .speed(0.01),
                )
                .on_hover_text("share of self-blended fakes blended with another real face");
                field(
                    ui,
                    "average the last epochs",
                    egui::DragValue::new(&mut form.average_last).range(0..=100),
                )
                .on_hover_text(
                    "also write average/: the weights of the last K epochs averaged (0: off)",
                );
                ui.checkbox(
                    &mut form.region_labels_from_masks,
                    "region labels from blend masks",
                )
                .on_hover_text(
                    "self-blended fakes labelled in every region their blend covers (--region-labels masks); off: eyes, nose and mouth only, as the bundled model",
                );
                field(
                    ui,
                    "face-swap datasets",
                    egui::TextEdit::singleline(&mut form.swap_fakes).desired_width(120.0),
                )
                .on_hover_text(
                    "comma-separated: their fakes get face-swap region labels and boundary targets",
                );
            });
        });
}

fn more_options_rows(ui: &mut Ui, form: &mut TrainForm) {
    ui.label("Losses and sampling");
    ui.horizontal(|ui| {
        field(
            ui,
            "self-blended share",
            egui::DragValue::new(&mut form.self_blend)
                .range(0.0..=1.0)
                .speed(0.01),
        );
        field(
            ui,
            "region-loss weight",
            egui::DragValue::new(&mut form.region_weight)
                .range(0.0..=10.0)
                .speed(0.05),
        );
        field(
            ui,
            "sampling power",
            egui::DragValue::new(&mut form.sampling_power)
                .range(0.0..=1.0)
                .speed(0.01),
        )
        .on_hover_text("0: as many faces from every (dataset, label); 1: by their sizes");
    });
    ui.end_row();
    ui.label("Augmentation");
    ui.horizontal(|ui| {
        field(
            ui,
            "degradations",
            egui::DragValue::new(&mut form.degradations)
                .range(0.0..=3.0)
                .speed(0.05),
        )
        .on_hover_text("scales how often JPEG, blur and downscaling are applied (0: never)");
    });
    ui.end_row();
    ui.label("Validation");
    ui.horizontal(|ui| {
        field(
            ui,
            "share of source groups",
            egui::DragValue::new(&mut form.val_fraction)
                .range(0.05..=0.9)
                .speed(0.01),
        );
    });
    ui.end_row();
    ui.label("Head");
    ui.horizontal(|ui| {
        field(
            ui,
            "width",
            egui::DragValue::new(&mut form.dim).range(8..=2048),
        );
        field(ui, "seed", egui::DragValue::new(&mut form.seed));
        field(
            ui,
            "device",
            egui::TextEdit::singleline(&mut form.device).desired_width(70.0),
        )
        .on_hover_text("cpu, cuda, cuda:N or metal (GPU builds)");
    });
    ui.end_row();
}

/// A widget after its label, named by it (for screen readers).
fn field(ui: &mut Ui, label: &str, widget: impl egui::Widget) -> egui::Response {
    let l = ui.label(label);
    ui.add(widget).labelled_by(l.id)
}

/// Colours of the datasets' lines: the categorical palette (Tableau 10)
/// of the region overlay.
const PALETTE: &[Color32] = &super::overlay::REGION_COLORS;

/// A loss curve: its name and its value in an epoch's row.
type LossPart = (&'static str, fn(&EpochLog) -> f64);

fn series(log: &[EpochLog], value: impl Fn(&EpochLog) -> Option<f64>) -> PlotPoints<'static> {
    #[allow(clippy::cast_precision_loss)]
    let pts: Vec<[f64; 2]> = log
        .iter()
        .filter_map(|l| Some([l.epoch as f64, value(l)?]))
        .collect();
    PlotPoints::from(pts)
}

fn run_ui(ui: &mut Ui, s: &RunShown, compared: &mut Vec<ComparedRun>) {
    let best = best_epoch(&s.log);
    let names: Vec<String> = s
        .log
        .last()
        .map(|l| l.val_auc.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    curves_ui(ui, s, best, &names, compared);
    ui.separator();
    runs_ui(ui, s, &names, compared);
    ui.separator();
    epochs_ui(ui, s, best, &names);
    messages_ui(ui, s);
}

/// The validation AUC and loss curves of a run.
fn curves_ui(
    ui: &mut Ui,
    s: &RunShown,
    best: Option<usize>,
    names: &[String],
    compared: &[ComparedRun],
) {
    let last_probe = s
        .log
        .iter()
        .filter(|l| l.stage == "probe")
        .map(|l| l.epoch)
        .max();
    let has_finetune = s.log.iter().any(|l| l.stage != "probe");
    let marks = |p: &mut egui_plot::PlotUi<'_>| {
        #[allow(clippy::cast_precision_loss)]
        if let (Some(e), true) = (last_probe, has_finetune) {
            p.vline(
                VLine::new("fine-tuning starts", e as f64 + 0.5)
                    .color(Color32::from_gray(120))
                    .style(LineStyle::dashed_dense()),
            );
        }
        #[allow(clippy::cast_precision_loss)]
        if let Some(b) = best {
            p.vline(VLine::new(format!("best epoch {b}"), b as f64).color(Color32::from_gray(200)));
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let last_epoch = s
        .log
        .iter()
        .chain(compared.iter().flat_map(|c| &c.log))
        .map(|l| l.epoch)
        .max()
        .unwrap_or(1) as f64;
    ui.columns(2, |cols| {
        cols[0].strong("Validation AUC per epoch");
        Plot::new("train_auc")
            .legend(
                Legend::default()
                    .position(Corner::RightBottom)
                    .follow_insertion_order(true),
            )
            .height(260.0)
            .allow_scroll(false)
            .x_axis_label("epoch")
            .y_axis_label("AUC")
            .include_y(0.4)
            .include_y(1.0)
            // Room for the legend on the right of the curves (it covered
            // the last epochs of the weaker domains, bottom right, when the
            // curves ran to the edge).
            .include_x(last_epoch * 1.7)
            .show(&mut cols[0], |p| {
                for (k, n) in names.iter().enumerate() {
                    let line = Line::new(
                        n.clone(),
                        series(&s.log, |l| {
                            l.val_auc.iter().find(|(m, _)| m == n).and_then(|(_, a)| *a)
                        }),
                    )
                    .color(PALETTE[k % PALETTE.len()]);
                    p.line(line);
                }
                p.line(
                    Line::new("mean", series(&s.log, |l| l.val_auc_mean))
                        .color(Color32::WHITE)
                        .width(2.0),
                );
                p.line(
                    Line::new(
                        "Cross-AUC (mean off-diagonal)",
                        series(&s.log, |l| l.val_cross_auc),
                    )
                    .color(Color32::from_gray(160))
                    .style(LineStyle::dashed_dense()),
                );
                for (j, c) in compared.iter().enumerate() {
                    compared_lines(p, c, names, COMPARED_STYLES[j % COMPARED_STYLES.len()]);
                }
                marks(p);
            });
        if !compared.is_empty() {
            cols[0].label(
                RichText::new(
                    "Compared runs: the same colour per dataset (white: their mean), \
                     in the line style their legend entry names.",
                )
                .weak(),
            );
        }
        loss_plot(&mut cols[1], s, &marks);
    });
}

/// The losses per epoch.
fn loss_plot(ui: &mut Ui, s: &RunShown, marks: &dyn Fn(&mut egui_plot::PlotUi<'_>)) {
    let top_loss = s
        .log
        .iter()
        .map(|l| l.loss.max(l.balance))
        .fold(0.0, f64::max);
    ui.strong("Training loss per epoch (mean over its steps)");
    Plot::new("train_loss")
        .legend(Legend::default().follow_insertion_order(true))
        .height(260.0)
        .allow_scroll(false)
        .x_axis_label("epoch")
        .y_axis_label("loss")
        .include_y(0.0)
        // Room above the curves for the legend.
        .include_y(top_loss * 2.0)
        .show(ui, |p| {
            let parts: [LossPart; 5] = [
                ("total", |l| l.loss),
                ("cross-entropy", |l| l.bce),
                ("alignment", |l| l.align),
                ("balance", |l| l.balance),
                ("region", |l| l.region),
            ];
            for (k, (name, f)) in parts.into_iter().enumerate() {
                let mut line = Line::new(name, series(&s.log, |l| Some(f(l))));
                line = if k == 0 {
                    line.color(Color32::WHITE).width(2.0)
                } else {
                    line.color(PALETTE[(k - 1) % PALETTE.len()])
                };
                p.line(line);
            }
            marks(p);
        });
}

/// A run's epochs as a table, newest first, the best one in bold.
fn epochs_ui(ui: &mut Ui, s: &RunShown, best: Option<usize>, names: &[String]) {
    ui.strong(format!(
        "Epochs, newest first ({}; best/ holds epoch {})",
        s.dir.display(),
        best.map_or_else(|| "-".into(), |b| b.to_string())
    ));
    egui::ScrollArea::vertical()
        .id_salt("train_epochs")
        .max_height((ui.available_height() - 40.0).max(160.0))
        .show(ui, |ui| {
            egui::Grid::new("train_epochs_grid")
                .striped(true)
                .show(ui, |ui| {
                    for h in ["epoch", "stage", "seconds", "loss"] {
                        ui.strong(h);
                    }
                    for n in names {
                        ui.strong(format!("AUC {n}"));
                    }
                    ui.strong("mean AUC");
                    ui.strong("Cross-AUC");
                    ui.end_row();
                    let f =
                        |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"));
                    for l in s.log.iter().rev() {
                        let cell = |ui: &mut Ui, t: String| {
                            if Some(l.epoch) == best {
                                ui.label(RichText::new(t).strong());
                            } else {
                                ui.label(t);
                            }
                        };
                        cell(ui, l.epoch.to_string());
                        cell(ui, l.stage.clone());
                        cell(ui, format!("{:.0}", l.seconds));
                        cell(ui, format!("{:.4}", l.loss));
                        for n in names {
                            let a = l.val_auc.iter().find(|(m, _)| m == n).and_then(|(_, a)| *a);
                            cell(ui, f(a));
                        }
                        cell(ui, f(l.val_auc_mean));
                        cell(ui, f(l.val_cross_auc));
                        ui.end_row();
                    }
                });
        });
}

/// Line styles of compared runs, in turn, and their names in the legend.
const COMPARED_STYLES: [(LineStyle, &str); 3] = [
    (LineStyle::Dashed { length: 10.0 }, "dashed"),
    (LineStyle::Dotted { spacing: 5.0 }, "dotted"),
    (LineStyle::Dashed { length: 4.0 }, "short dashes"),
];

/// A compared run's validation AUC per dataset (the shown run's colours)
/// and its mean, in `style`: one legend entry for the run (it shows and
/// hides all its lines), so that the legend stays short beside the curves.
fn compared_lines(
    p: &mut egui_plot::PlotUi<'_>,
    c: &ComparedRun,
    names: &[String],
    (style, word): (LineStyle, &str),
) {
    let name = format!("{} ({word})", run_name(&c.dir));
    for (k, n) in names.iter().enumerate() {
        p.line(
            Line::new(
                name.clone(),
                series(&c.log, |l| {
                    l.val_auc.iter().find(|(m, _)| m == n).and_then(|(_, a)| *a)
                }),
            )
            .color(PALETTE[k % PALETTE.len()])
            .style(style),
        );
    }
    p.line(
        Line::new(name, series(&c.log, |l| l.val_auc_mean))
            .color(Color32::WHITE)
            .style(style),
    );
}

/// The runs table: the shown run and the compared ones — epochs, the
/// best epoch's validation AUC, and the average of the last epochs'.
fn runs_ui(ui: &mut Ui, s: &RunShown, names: &[String], compared: &mut Vec<ComparedRun>) {
    ui.strong(format!(
        "Runs: validation AUC at the best epoch and averaged over the last {LAST_EPOCHS} epochs"
    ));
    let mut remove = None;
    egui::Grid::new("train_runs").striped(true).show(ui, |ui| {
        for h in ["run", "epochs", "best epoch"] {
            ui.strong(h);
        }
        for n in names {
            ui.strong(format!("best {n}"));
        }
        ui.strong("best mean");
        for n in names {
            ui.strong(format!("last {n}"));
        }
        ui.strong("last mean");
        ui.end_row();
        let f = |v: &Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}"));
        let runs =
            std::iter::once((&s.dir, &s.log)).chain(compared.iter().map(|c| (&c.dir, &c.log)));
        for (j, (dir, log)) in runs.enumerate() {
            let sum = RunSummary::new(log, names);
            ui.horizontal(|ui| {
                ui.label(run_name(dir))
                    .on_hover_text(dir.display().to_string());
                if j > 0 && ui.small_button("remove").clicked() {
                    remove = Some(j - 1);
                }
            });
            ui.label(sum.epochs.to_string());
            ui.label(sum.best_epoch.map_or_else(|| "-".into(), |e| e.to_string()));
            for v in &sum.best {
                ui.label(f(v));
            }
            for v in &sum.last {
                ui.label(f(v)).on_hover_text(format!(
                    "epochs {}-{}",
                    sum.epochs + 1 - sum.last_n,
                    sum.epochs
                ));
            }
            ui.end_row();
        }
    });
    if let Some(j) = remove {
        compared.remove(j);
    }
}

fn messages_ui(ui: &mut Ui, s: &RunShown) {
    if s.messages.is_empty() {
        return;
    }
    egui::CollapsingHeader::new("Log")
        .default_open(false)
        .show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("train_log")
                .max_height(160.0)
                .stick_to_bottom(true)
                .show(ui, |ui| {
                    for m in &s.messages {
                        ui.monospace(m);
                    }
                });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(40.2), "40 s");
        assert_eq!(duration(61.0), "2 min");
        assert_eq!(duration(3600.0 + 5.0 * 60.0), "1 h 05 min");
        assert_eq!(duration(-3.0), "0 s");
    }

    #[test]
    fn shell_line_quotes_what_a_shell_would_split() {
        let a: Vec<String> = ["sfam", "--out", "/tmp/my runs/a", "it's", "x=1,2"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            shell_line(&a),
            r"sfam --out '/tmp/my runs/a' 'it'\''s' x=1,2"
        );
    }

    fn row(epoch: usize, stage: &str, seconds: f64) -> EpochLog {
        EpochLog {
            epoch,
            stage: stage.into(),
            seconds,
            loss: 1.0,
            bce: 0.5,
            align: 0.3,
            balance: 1.0,
            region: 0.2,
            val_auc: vec![("a".into(), Some(0.7))],
            val_auc_mean: Some(0.7),
            val_cross_auc: Some(0.6),
        }
    }

    #[test]
    fn time_left_counts_each_stage_at_its_own_pace() {
        let mut s = RunShown::new(PathBuf::from("run"), true, Some(6));
        assert_eq!(s.seconds_left(2), None);
        s.merge(vec![row(1, "probe", 10.0)]);
        // No fine-tuning epoch yet to go by.
        assert_eq!(s.seconds_left(2), None);
        s.merge(vec![row(3, "finetune", 100.0), row(2, "probe", 20.0)]);
        assert_eq!(s.log.iter().map(|l| l.epoch).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.seconds_left(2), Some(300.0));
        // A row read again replaces the one held.
        s.merge(vec![row(3, "finetune", 50.0)]);
        assert_eq!(s.log.len(), 3);
        assert_eq!(s.seconds_left(2), Some(150.0));
    }

    #[test]
    fn presets_keep_data_output_backbone_and_device() {
        let mut f = TrainForm {
            roots: vec![PathBuf::from("d")],
            out: Some(PathBuf::from("o")),
            device: "cuda".into(),
            seed: 9,
            ..TrainForm::recipe()
        };
        f.apply(&TrainForm::trial());
        assert_eq!(f.roots, [PathBuf::from("d")]);
        assert_eq!(f.out, Some(PathBuf::from("o")));
        assert_eq!(f.device, "cuda");
        assert_eq!((f.seed, f.epochs, f.probe_epochs), (1, 2, 2));
    }

    #[test]
    fn missing_data_output_or_clip_folder_is_said() {
        let mut f = TrainForm::recipe();
        let w = Path::new("w.safetensors");
        assert!(f.options(w).unwrap_err().contains("data folder"));
        f.roots.push(PathBuf::from("d"));
        assert!(f.options(w).unwrap_err().contains("output folder"));
        f.out = Some(PathBuf::from("o"));
        f.backbone = BackboneKind::Clip;
        assert!(f.options(w).unwrap_err().contains("CLIP"));
        f.backbone = BackboneKind::Faceres;
        f.degradations = 4.0;
        assert!(f.options(w).unwrap_err().contains("between 0 and 3"));
        f.degradations = 1.0;
        f.device = "tpu".into();
        assert!(f.options(w).unwrap_err().contains("tpu"));
        f.device = "cpu".into();
        assert!(f.options(w).is_ok());
    }

    /// The command line the view shows parses, with `sfam train`'s own
    /// parser and its mapping to options, into the options the view
    /// trains with — for the presets, `sfam train`'s defaults, a form
    /// with every option changed, and a CLIP run.
    #[test]
    fn the_command_line_shown_makes_the_same_run() {
        use clap::Parser as _;
        let bundled = Path::new(CLI_FACERES);
        let elsewhere = Path::new("/opt/sfam/models/faceres/faceres.safetensors");
        let with_io = |f: TrainForm| TrainForm {
            roots: vec![PathBuf::from("/data/a b"), PathBuf::from("/data/c")],
            out: Some(PathBuf::from("/runs/it's one")),
            ..f
        };
        let custom = TrainForm {
            train_blocks: 3,
            probe_epochs: 5,
            epochs: 7,
            batch: 16,
            samples_per_epoch: 999,
            lr: 3e-4,
            self_blend: 0.0,
            region_weight: 0.5,
            region_labels_from_masks: true,
            sampling_power: 1.0,
            degradations: 2.5,
            val_fraction: 0.25,
            dim: 64,
            seed: 42,
            probe_views: 3,
            backbone_lr_ratio: 0.05,
            weight_decay: 1e-3,
            dropout: 0.1,
            label_smoothing: 0.1,
            experts: 3,
            jitter: 0.5,
            cutout: 0.3,
            donor_blend: 0.25,
            average_last: 5,
            swap_fakes: " dfdc, other ,".into(),
            ..with_io(TrainForm::recipe())
        };
        let clip = TrainForm {
            backbone: BackboneKind::Clip,
            clip: Some(PathBuf::from("/models/clip")),
            ..custom.clone()
        };
        let clip_layers = TrainForm {
            clip_train_blocks: 3,
            ..clip.clone()
        };
        let line = shell_line(&clip_layers.cli_args(bundled));
        assert!(line.contains("--train-blocks 3"), "{line}");
        assert!(!shell_line(&clip.cli_args(bundled)).contains("--train-blocks"));
        let cases = [
            (with_io(TrainForm::recipe()), bundled),
            (with_io(TrainForm::trial()), bundled),
            (with_io(TrainForm::cli_defaults()), bundled),
            (custom, elsewhere),
            (clip, bundled),
            (clip_layers, bundled),
        ];
        for (form, weights) in cases {
            let args = form.cli_args(weights);
            let line = shell_line(&args);
            let cli = crate::cli::Cli::try_parse_from(&args).unwrap();
            let Some(crate::cli::Command::Train(a)) = cli.command else {
                panic!("not sfam train: {line}");
            };
            let from_cli = crate::cli::train::options(&a).unwrap();
            let (from_app, device) = form.options(weights).unwrap();
            assert_eq!(device, DeviceSpec::Cpu);
            assert_eq!(format!("{from_cli:?}"), format!("{from_app:?}"), "{line}");
        }
        // The defaults leave out every flag.
        let d = with_io(TrainForm::cli_defaults()).cli_args(bundled);
        assert_eq!(d.len(), 7, "{d:?}");
    }
}
