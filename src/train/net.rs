//! The network being trained: a backbone (faceres or a CLIP image tower,
//! each frozen or with its last blocks trainable) and the SFAM heads on
//! trainable variables, saved as a model folder that
//! [`crate::model::SfamModel::load`] reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor, Var};
use std::cell::RefCell;

use candle_nn::{Init, Module, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::TrainError;
use crate::model::clip::{
    self as clip, ClipModel, Towers, layer_forward_differentiable, layer_tensor_shapes,
};
use crate::model::faceres::{
    self, BACKBONE_FILE, BLOCKS, FaceRes, FaceResOutput, GLOBAL_DIM, GlobalInput, PATCH_BLOCK,
    PATCH_DIM, TEXTURE_BLOCKS, channel_std, depthwise_tensor, pointwise_tensor,
};
use crate::model::heads::{HeadConfig, HeadOutput, SfamHead};
use crate::model::sfam::{HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE};
use crate::model::training_images::{TRAINING_IMAGES_FILE, TrainingImages};
use crate::model::{Backbone, ClipTokenizer, ClipVisionTransformer, ModelError, Weights};

/// Which backbone to train on.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneChoice {
    /// faceres from this safetensors file (`models/faceres/faceres.safetensors`),
    /// its last `train_blocks` blocks fine-tuned (0 = frozen).
    FaceRes {
        /// The converted faceres weights.
        weights: PathBuf,
        /// How many of the 13 blocks, counted from the end, are trained.
        train_blocks: usize,
    },
    /// A CLIP model folder (`config.json` + `model.safetensors`), the last
    /// `train_blocks` transformer layers of its image tower fine-tuned (0 =
    /// frozen; the final layer norm and the projection into the joint
    /// image-text space stay as loaded).
    Clip {
        /// The folder.
        dir: PathBuf,
        /// How many of the image tower's layers, counted from the end, are
        /// trained.
        train_blocks: usize,
    },
}

/// The checkpoint key of a tensor of the CLIP image tower's layer `i`.
fn clip_layer_key(i: usize, name: &str) -> String {
    format!("vision_model.encoder.layers.{i}.{name}")
}

enum Body {
    FaceRes {
        net: FaceRes,
        /// Index of the first trained block.
        first: usize,
        /// The frozen tensors, for saving.
        frozen: HashMap<String, Tensor>,
        proj_patch: candle_nn::Linear,
        proj_global: candle_nn::Linear,
    },
    Clip {
        vision: ClipVisionTransformer,
        dir: PathBuf,
        /// Index of the first trained layer (the number of layers: none).
        first: usize,
    },
}

/// Backbone features of a batch (see [`TrainNet::features`]).
#[derive(Debug, Clone)]
pub struct Features {
    /// Patch rows `[B, N, C]`: faceres' 512-channel map, or CLIP's
    /// projected patch tokens.
    pub patches: Tensor,
    /// `[B, P]`: faceres' global descriptor (pooled 1024-d descriptor, the
    /// patch map's mean and the texture statistics, [`GLOBAL_DIM`]), or
    /// CLIP's projected class token.
    pub global: Tensor,
}

/// Fixed per-channel standardisation of faceres' features before the
/// projections into the head — the patch channels and the global
/// descriptor, each to mean 0 and standard deviation 1 over training faces
/// of the pretrained network — as a logistic regression standardises its
/// inputs, so that every channel starts on an equal footing under `AdamW`.
/// A saved model folder holds it folded into `proj_patch` / `proj_global`
/// (inference is unchanged); a training run keeps it in
/// [`FEATURE_NORM_FILE`] to resume.
#[derive(Debug, Clone)]
pub struct FeatureNorm {
    patch_mean: Tensor,
    patch_inv: Tensor,
    global_mean: Tensor,
    global_inv: Tensor,
}

/// [`FeatureNorm::fold`] or [`FeatureNorm::unfold`]: (weight, bias, mean,
/// inverse standard deviation) → (weight, bias).
type ProjectionMap =
    fn(&Tensor, &Tensor, &Tensor, &Tensor) -> candle_core::Result<(Tensor, Tensor)>;

/// The file of a run folder holding its [`FeatureNorm`].
pub const FEATURE_NORM_FILE: &str = "feature_norm.safetensors";

/// Running sums for [`FeatureNorm`].
#[derive(Debug, Default)]
pub struct FeatureStats {
    patch: Moments,
    global: Moments,
}

#[derive(Debug, Default)]
struct Moments {
    n: f64,
    sum: Vec<f64>,
    sq: Vec<f64>,
}

impl Moments {
    /// Adds the rows of `x` (`[R, C]`).
    fn add(&mut self, x: &Tensor) -> Result<(), ModelError> {
        let x = x.to_dtype(DType::F32)?;
        let (rows, c) = x.dims2()?;
        let sum: Vec<f32> = x.sum(0)?.to_vec1()?;
        let sq: Vec<f32> = x.sqr()?.sum(0)?.to_vec1()?;
        if self.sum.is_empty() {
            self.sum = vec![0.0; c];
            self.sq = vec![0.0; c];
        }
        if self.sum.len() != c {
            return Err(ModelError::Input(format!(
                "feature statistics: {c} channels after {}",
                self.sum.len()
            )));
        }
        for (a, b) in self.sum.iter_mut().zip(sum) {
            *a += f64::from(b);
        }
        for (a, b) in self.sq.iter_mut().zip(sq) {
            *a += f64::from(b);
        }
        #[allow(clippy::cast_precision_loss)]
        {
            self.n += rows as f64;
        }
        Ok(())
    }

    /// Mean and inverse standard deviation (channels that barely vary keep
    /// their scale: the inverse is capped at 1000).
    #[allow(clippy::cast_possible_truncation)]
    fn finish(&self, device: &Device) -> Result<(Tensor, Tensor), ModelError> {
        if self.n < 2.0 {
            return Err(ModelError::Input(
                "feature statistics: fewer than two rows".into(),
            ));
        }
        let mean: Vec<f32> = self.sum.iter().map(|s| (s / self.n) as f32).collect();
        let inv: Vec<f32> = self
            .sum
            .iter()
            .zip(&self.sq)
            .map(|(s, q)| {
                let m = s / self.n;
                let var = (q / self.n - m * m).max(0.0);
                (1.0 / var.sqrt().max(1e-3)) as f32
            })
            .collect();
        let c = mean.len();
        Ok((
            Tensor::from_vec(mean, c, device)?,
            Tensor::from_vec(inv, c, device)?,
        ))
    }
}

impl FeatureStats {
    /// Adds a batch of [`TrainNet::features`].
    ///
    /// # Errors
    /// A tensor or shape error.
    pub fn add(&mut self, f: &Features) -> Result<(), ModelError> {
        let (b, n, c) = f.patches.dims3()?;
        self.patch.add(&f.patches.reshape((b * n, c))?)?;
        self.global.add(&f.global)
    }

    /// The standardisation.
    ///
    /// # Errors
    /// [`ModelError::Input`] when fewer than two faces were added.
    pub fn finish(&self, device: &Device) -> Result<FeatureNorm, ModelError> {
        let (patch_mean, patch_inv) = self.patch.finish(device)?;
        let (global_mean, global_inv) = self.global.finish(device)?;
        Ok(FeatureNorm {
            patch_mean,
            patch_inv,
            global_mean,
            global_inv,
        })
    }
}

impl FeatureNorm {
    /// Writes the statistics (atomically).
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut all = HashMap::new();
        all.insert("patch.mean".to_owned(), self.patch_mean.clone());
        all.insert("patch.inv_std".to_owned(), self.patch_inv.clone());
        all.insert("global.mean".to_owned(), self.global_mean.clone());
        all.insert("global.inv_std".to_owned(), self.global_inv.clone());
        save_tensors(path, &all)
    }

    /// Reads what [`Self::save`] wrote, checking the widths.
    ///
    /// # Errors
    /// [`TrainError::Model`] naming the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let ws = Weights::open(path, DType::F32, device)?;
        let norm = Self {
            patch_mean: ws.get("patch.mean", &[PATCH_DIM])?,
            patch_inv: ws.get("patch.inv_std", &[PATCH_DIM])?,
            global_mean: ws.get("global.mean", &[GLOBAL_DIM])?,
            global_inv: ws.get("global.inv_std", &[GLOBAL_DIM])?,
        };
        ws.finish()?;
        Ok(norm)
    }

    fn apply(x: &Tensor, mean: &Tensor, inv: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_sub(mean)?.broadcast_mul(inv)
    }

    /// The weight and bias that read raw features:
    /// `W ((x - m) * s) + b = (W * s) x + (b - (W * s) m)`.
    fn fold(
        w: &Tensor,
        b: &Tensor,
        mean: &Tensor,
        inv: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let wf = w.broadcast_mul(&inv.unsqueeze(0)?)?;
        let bf = (b - wf.matmul(&mean.unsqueeze(1)?)?.squeeze(1)?)?;
        Ok((wf, bf))
    }

    /// The inverse of [`Self::fold`].
    fn unfold(
        wf: &Tensor,
        bf: &Tensor,
        mean: &Tensor,
        inv: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let w = wf.broadcast_div(&inv.unsqueeze(0)?)?;
        let b = (bf + wf.matmul(&mean.unsqueeze(1)?)?.squeeze(1)?)?;
        Ok((w, b))
    }
}

/// The trainable model.
pub struct TrainNet {
    body: Body,
    backbone_vars: VarMap,
    head_vars: VarMap,
    head: SfamHead,
    config: HeadConfig,
    device: Device,
    /// faceres only, once set (see [`FeatureNorm`]).
    norm: Option<FeatureNorm>,
    /// Dropout of the head's inputs while training: the probability and
    /// the seeded generator of the masks (`None`: off, as in validation).
    dropout: RefCell<Option<(f32, ChaCha8Rng)>>,
    /// The text of `training_images.txt`, written into every saved model
    /// folder once set.
    training_images: Option<String>,
    /// The prompt vectors are the CLIP text tower's encodings of the
    /// prompts and stay fixed (otherwise they are learned embeddings).
    text_prompts: bool,
}

/// The CLIP text tower's unit encodings `[P, D]` of `prompts`, from the
/// model folder `dir` — `None` when its checkpoint has no text tower.
///
/// # Errors
/// [`ModelError`] for a text tower that does not load, a prompt it cannot
/// encode, or encodings of another dimension than the image tower's.
fn clip_prompt_vectors(
    dir: &Path,
    prompts: &[String],
    dim: usize,
    device: &Device,
) -> Result<Option<Tensor>, ModelError> {
    let path = dir.join(clip::WEIGHTS_FILE);
    let has_text = Weights::open(&path, DType::F32, device)?
        .keys()
        .any(|k| k.starts_with("text_model."));
    if !has_text {
        return Ok(None);
    }
    let model = ClipModel::load(dir, Towers::Text, device)?;
    let Some(text) = model.text() else {
        return Ok(None);
    };
    let tokenizer = ClipTokenizer::new()?;
    let ids = prompts
        .iter()
        .map(|p| tokenizer.tokenize(p))
        .collect::<Result<Vec<_>, _>>()?;
    let t = clip::l2_normalize(&text.forward(&ids)?)?;
    if t.dims() != [prompts.len(), dim] {
        return Err(ModelError::Config {
            path,
            message: format!(
                "the text tower encodes the prompts as {:?}, the image tower's tokens have {dim} values",
                t.dims()
            ),
        });
    }
    Ok(Some(t))
}

/// The head's prompt vectors.
const PROMPTS_KEY: &str = "prompts.embeds";

/// Initial value of a head tensor, by its key.
fn head_init(key: &str, shape: &[usize]) -> Init {
    let fan_in = shape.last().copied().unwrap_or(1).max(1);
    #[allow(clippy::cast_precision_loss)]
    let kaiming = Init::Randn {
        mean: 0.0,
        stdev: (1.0 / fan_in as f64).sqrt(),
    };
    if key == "align.logit_scale" {
        Init::Const((1.0_f64 / 0.07).ln())
    } else if key == "prompts.embeds" {
        Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        }
    } else if key == "moe.region_embed" {
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        }
    } else if key.ends_with("norm.weight") {
        Init::Const(1.0)
    } else if key.rsplit('.').next() == Some("bias") {
        Init::Const(0.0)
    } else if key == "align.adapter.fc2.weight" || key == "align.text_proj.weight" {
        // Residual branches start near zero: the head starts from the
        // backbone's own tokens.
        Init::Randn {
            mean: 0.0,
            stdev: 1e-3,
        }
    } else if key.starts_with("head.") {
        Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        }
    } else {
        kaiming
    }
}

/// Creates the variable `key` with values drawn from `init` by the seeded
/// generator `rng` (candle's own random initialisation on the CPU cannot
/// be seeded, so a run would not be reproducible).
fn var_get(
    vb: &VarBuilder<'_>,
    map: &VarMap,
    rng: &RefCell<ChaCha8Rng>,
    key: &str,
    shape: &[usize],
    init: Init,
) -> Result<Tensor, ModelError> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = match init {
        #[allow(clippy::cast_possible_truncation)]
        Init::Const(v) => vec![v as f32; n],
        #[allow(clippy::cast_possible_truncation)]
        Init::Randn { mean, stdev } => {
            let normal = Normal::new(mean as f32, stdev as f32)
                .map_err(|e| ModelError::Input(format!("initialising {key}: {e}")))?;
            let mut rng = rng.borrow_mut();
            (0..n).map(|_| normal.sample(&mut *rng)).collect()
        }
        _ => return Ok(vb.get_with_hints(shape.to_vec(), key, init)?),
    };
    let t = Tensor::from_vec(values, shape, vb.device())?;
    let created = vb.get_with_hints(shape.to_vec(), key, Init::Const(0.0))?;
    let data = map
        .data()
        .lock()
        .map_err(|_| ModelError::Input("variable map poisoned".into()))?;
    match data.get(key) {
        Some(var) => var.set(&t)?,
        None => return Err(ModelError::Input(format!("variable {key} was not created"))),
    }
    Ok(created)
}

impl TrainNet {
    /// Builds the network: pretrained backbone weights, fresh head.
    ///
    /// # Errors
    /// [`TrainError::Model`] when the backbone cannot be loaded or does not
    /// fit the head configuration.
    #[allow(clippy::too_many_lines)]
    pub fn new(
        choice: &BackboneChoice,
        mut config: HeadConfig,
        device: &Device,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let mut backbone_vars = VarMap::new();
        let mut head_vars = VarMap::new();
        let rng = RefCell::new(ChaCha8Rng::seed_from_u64(seed ^ 0x1417));
        let body = match choice {
            BackboneChoice::FaceRes {
                weights,
                train_blocks,
            } => {
                let ws = Weights::open(weights, DType::F32, device)?;
                let net = FaceRes::from_weights(&ws)?;
                let first = BLOCKS.len() - (*train_blocks).min(BLOCKS.len());
                let vb = VarBuilder::from_varmap(&backbone_vars, DType::F32, device);
                let mut frozen = HashMap::new();
                let keys: Vec<String> = ws.keys().map(str::to_owned).collect();
                for key in keys {
                    let shape = ws.shape_of(&key).unwrap_or_default();
                    let t = ws.get(&key, &shape)?;
                    let block = key
                        .strip_prefix("dw")
                        .or_else(|| key.strip_prefix("pw"))
                        .and_then(|r| r.split('.').next())
                        .and_then(|n| n.parse::<usize>().ok());
                    match block {
                        Some(n) if n > first => {
                            let v = vb.get_with_hints(t.dims(), &key, Init::Const(0.0))?;
                            drop(v);
                            backbone_vars.set_one(&key, &t)?;
                        }
                        _ => {
                            frozen.insert(key, t);
                        }
                    }
                }
                ws.finish()?;
                let d = config.dim;
                let lin = |name: &str, d_in: usize| -> Result<candle_nn::Linear, ModelError> {
                    #[allow(clippy::cast_precision_loss)]
                    let init = Init::Randn {
                        mean: 0.0,
                        stdev: (1.0 / d_in as f64).sqrt(),
                    };
                    Ok(candle_nn::Linear::new(
                        var_get(
                            &vb,
                            &backbone_vars,
                            &rng,
                            &format!("{name}.weight"),
                            &[d, d_in],
                            init,
                        )?,
                        Some(var_get(
                            &vb,
                            &backbone_vars,
                            &rng,
                            &format!("{name}.bias"),
                            &[d],
                            Init::Const(0.0),
                        )?),
                    ))
                };
                let proj_patch = lin("proj_patch", PATCH_DIM)?;
                let proj_global = lin("proj_global", GLOBAL_DIM)?;
                config.grid = [
                    faceres::INPUT_SIZE / faceres::PATCH_STRIDE,
                    faceres::INPUT_SIZE / faceres::PATCH_STRIDE,
                ];
                config.backbone = Some(format!(
                    "faceres (last {} blocks fine-tuned)",
                    BLOCKS.len() - first
                ));
                Body::FaceRes {
                    net,
                    first,
                    frozen,
                    proj_patch,
                    proj_global,
                }
            }
            BackboneChoice::Clip { dir, train_blocks } => {
                let clip = ClipModel::load(dir, Towers::Vision, device)?;
                let vision = clip.into_vision().ok_or_else(|| {
                    TrainError::Model(ModelError::Config {
                        path: dir.clone(),
                        message: "no image tower".into(),
                    })
                })?;
                let c = vision.config();
                let layers = c.num_hidden_layers;
                if *train_blocks > layers {
                    return Err(TrainError::Options(format!(
                        "{train_blocks} layers to train, but the CLIP image tower of {} has {layers}",
                        dir.display()
                    )));
                }
                let first = layers - train_blocks;
                if first < layers {
                    // The trained layers start from the file's values.
                    let ws = Weights::open(&dir.join(clip::WEIGHTS_FILE), DType::F32, device)?;
                    let vb = VarBuilder::from_varmap(&backbone_vars, DType::F32, device);
                    for i in first..layers {
                        for (name, shape) in layer_tensor_shapes(c.hidden_size, c.intermediate_size)
                        {
                            let key = clip_layer_key(i, name);
                            let t = ws.get(&key, &shape)?;
                            drop(vb.get_with_hints(shape, &key, Init::Const(0.0))?);
                            backbone_vars.set_one(&key, &t)?;
                        }
                    }
                }
                let (gh, gw) = vision.grid();
                config.grid = [gh, gw];
                config.dim = vision.dim();
                config.backbone = Some(if first < layers {
                    format!(
                        "CLIP image tower (last {} of {layers} layers fine-tuned)",
                        layers - first
                    )
                } else {
                    "CLIP image tower (frozen)".into()
                });
                Body::Clip {
                    vision,
                    dir: dir.clone(),
                    first,
                }
            }
        };
        config
            .validate()
            .map_err(|m| TrainError::Model(ModelError::Input(m)))?;
        let vb = VarBuilder::from_varmap(&head_vars, DType::F32, device);
        let head = SfamHead::from_getter(config.clone(), &|key: &str, shape: &[usize]| {
            var_get(&vb, &head_vars, &rng, key, shape, head_init(key, shape))
        })?;
        // With a CLIP text tower the prompts are what it reads in their
        // texts (as ../shared/docs/SFAM.md has it), fixed; the adapter
        // learns to align the patches with them.
        let text_prompts = match &body {
            Body::Clip { dir, .. } => {
                match clip_prompt_vectors(dir, &config.prompts, config.dim, device)? {
                    Some(t) => {
                        head_vars.set_one(PROMPTS_KEY, &t)?;
                        true
                    }
                    None => false,
                }
            }
            Body::FaceRes { .. } => false,
        };
        Ok(Self {
            body,
            backbone_vars,
            head_vars,
            head,
            config,
            device: device.clone(),
            norm: None,
            dropout: RefCell::new(None),
            training_images: None,
            text_prompts,
        })
    }

    /// The head configuration (grid and dimension set from the backbone).
    #[must_use]
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// The device.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Side of the input, pixels.
    #[must_use]
    pub fn input_size(&self) -> usize {
        match &self.body {
            Body::FaceRes { .. } => faceres::INPUT_SIZE,
            Body::Clip { vision, .. } => vision.input_size(),
        }
    }

    /// Input normalisation (mean, std), as for inference.
    #[must_use]
    pub fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        match &self.body {
            Body::FaceRes { .. } => ([0.0; 3], [1.0 / 255.0; 3]),
            Body::Clip { vision, .. } => vision.normalization(),
        }
    }

    /// The trained variables by name, each list sorted: those of the
    /// pretrained backbone blocks (`backbone:KEY`), and the new ones (the
    /// head, `head:KEY`, and faceres' projections into it,
    /// `backbone:proj_…`), which learn at the full rate.
    #[must_use]
    pub fn vars(&self) -> (NamedVars, NamedVars) {
        let mut pretrained = Vec::new();
        let mut new = Vec::new();
        if let Ok(data) = self.head_vars.data().lock() {
            new.extend(
                data.iter()
                    .filter(|(k, _)| !(self.text_prompts && k.as_str() == PROMPTS_KEY))
                    .map(|(k, v)| (format!("head:{k}"), v.clone())),
            );
        }
        if let Ok(data) = self.backbone_vars.data().lock() {
            for (k, v) in data.iter() {
                let named = (format!("backbone:{k}"), v.clone());
                if k.starts_with("proj_") {
                    new.push(named);
                } else {
                    pretrained.push(named);
                }
            }
        }
        pretrained.sort_by(|a, b| a.0.cmp(&b.0));
        new.sort_by(|a, b| a.0.cmp(&b.0));
        (pretrained, new)
    }

    /// Whether the prompt vectors are the CLIP text tower's encodings of
    /// the prompts, fixed (otherwise they are learned embeddings).
    #[must_use]
    pub fn text_prompts(&self) -> bool {
        self.text_prompts
    }

    /// Whether any backbone block is trained (otherwise [`Self::features`]
    /// of a face never change, and can be computed once).
    #[must_use]
    pub fn backbone_trained(&self) -> bool {
        match &self.body {
            Body::FaceRes { first, .. } => *first < BLOCKS.len(),
            Body::Clip { vision, first, .. } => *first < vision.config().num_hidden_layers,
        }
    }

    /// The backbone's output with its weights as loaded (pretrained; no
    /// gradient): the input of [`Self::forward_features`].
    ///
    /// # Errors
    /// A tensor or shape error.
    pub fn features(&self, pixels: &Tensor) -> Result<Features, ModelError> {
        match &self.body {
            Body::FaceRes { net, .. } => {
                let out = net.forward_output(pixels)?;
                let global = GlobalInput::WithTexture.descriptor(&out)?;
                Ok(Features {
                    patches: out.patch_rows,
                    global,
                })
            }
            Body::Clip { vision, .. } => {
                let t = vision.encode(pixels)?;
                Ok(Features {
                    patches: t.patches.detach(),
                    global: t.global.detach(),
                })
            }
        }
    }

    /// The trainable part on top of [`Self::features`]: faceres'
    /// projections into the head, then the head.
    ///
    /// # Errors
    /// A tensor or shape error.
    pub fn forward_features(&self, f: &Features, masks: &Tensor) -> Result<HeadOutput, ModelError> {
        match &self.body {
            Body::FaceRes {
                proj_patch,
                proj_global,
                ..
            } => {
                let (patches, global) = self.standardised(&f.patches, &f.global)?;
                let (patches, global) = self.dropped(&patches, &global)?;
                self.head.forward(
                    &proj_global.forward(&global)?,
                    &proj_patch.forward(&patches)?,
                    masks,
                )
            }
            Body::Clip { .. } => {
                let (patches, global) = self.dropped(&f.patches, &f.global)?;
                self.head.forward(&global, &patches, masks)
            }
        }
    }

    /// Runs the network (with gradients through the trained variables).
    ///
    /// # Errors
    /// A tensor or shape error.
    pub fn forward(&self, pixels: &Tensor, masks: &Tensor) -> Result<HeadOutput, ModelError> {
        if !self.backbone_trained() {
            return self.forward_features(&self.features(pixels)?, masks);
        }
        let data = self.backbone_vars.data();
        let data = data
            .lock()
            .map_err(|_| ModelError::Input("variable map poisoned".into()))?;
        let var = |k: &str| -> candle_core::Result<Tensor> {
            data.get(k)
                .map(|v| v.as_tensor().clone())
                .ok_or_else(|| candle_core::Error::Msg(format!("no variable {k}")))
        };
        let (patches, global) = match &self.body {
            Body::FaceRes {
                net,
                first,
                proj_patch,
                proj_global,
                ..
            } => {
                let (rows, global) = self.faceres_trained(net, *first, pixels, &var)?;
                (proj_patch.forward(&rows)?, proj_global.forward(&global)?)
            }
            Body::Clip { vision, first, .. } => {
                // The frozen layers with the inference kernels, the trained
                // ones in operations with gradients.
                let mut x = vision.hidden_states(pixels, *first)?.detach();
                for i in *first..vision.config().num_hidden_layers {
                    let get = |name: &str| var(&clip_layer_key(i, name));
                    x = layer_forward_differentiable(&x, &get, vision.layer_shape())?;
                }
                let t = vision.project_differentiable(&x)?;
                self.dropped(&t.patch_embeds, &t.image_embeds)?
            }
        };
        self.head.forward(&global, &patches, masks)
    }

    /// faceres with its blocks from `first` on trained: the standardised
    /// patch rows and global descriptor after dropout, for the projections.
    #[allow(clippy::many_single_char_names)] // b, h, w, c (NHWC), x
    fn faceres_trained(
        &self,
        net: &FaceRes,
        first: usize,
        pixels: &Tensor,
        var: &dyn Fn(&str) -> candle_core::Result<Tensor>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        // The frozen blocks once (fast kernels), taking the texture
        // statistics and the patch map on the way when they come before the
        // first trained block.
        let mut texture = Vec::with_capacity(TEXTURE_BLOCKS.len());
        let mut patch = None;
        let stem = net.forward_prefix(pixels, 0)?;
        let mut x = if first > PATCH_BLOCK {
            let p = net.forward_blocks_texture(&stem, 0, PATCH_BLOCK + 1, &mut texture)?;
            patch = Some(p.clone());
            net.forward_blocks_texture(&p, PATCH_BLOCK + 1, first, &mut texture)?
        } else {
            net.forward_blocks_texture(&stem, 0, first, &mut texture)?
        };
        for (k, &(cin, cout, stride)) in BLOCKS.iter().enumerate().skip(first) {
            let n = k + 1;
            let taps = var(&format!("dw{n}.weight"))?.reshape((cin, 9))?.t()?;
            let x1 = depthwise_tensor(&x, &taps, &var(&format!("dw{n}.bias"))?, stride)?;
            let w = var(&format!("pw{n}.weight"))?.reshape((cout, cin))?.t()?;
            x = pointwise_tensor(&x1, &w, &var(&format!("pw{n}.bias"))?)?;
            if TEXTURE_BLOCKS.contains(&k) {
                texture.push(channel_std(&x)?);
            }
            if k == PATCH_BLOCK {
                patch = Some(x.clone());
            }
        }
        let patch = patch.ok_or_else(|| ModelError::Input("faceres: no patch map".into()))?;
        let (b, h, w, c) = patch.dims4()?;
        let (bo, oh, ow, co) = x.dims4()?;
        let out = FaceResOutput {
            patch_rows: patch.reshape((b, h * w, c))?,
            pooled: x.reshape((bo, oh * ow, co))?.mean(D::Minus2)?,
            texture: Tensor::cat(&texture, 1)?,
        };
        let global = GlobalInput::WithTexture.descriptor(&out)?;
        let (rows, global) = self.standardised(&out.patch_rows, &global)?;
        Ok(self.dropped(&rows, &global)?)
    }

    /// Whether the backbone's features are standardised before the
    /// projections (faceres; see [`FeatureNorm`]).
    #[must_use]
    pub fn takes_feature_norm(&self) -> bool {
        matches!(self.body, Body::FaceRes { .. })
    }

    /// Sets the standardisation of the features, before training starts
    /// and before [`Self::load_vars`] (which undoes the folding of saved
    /// projections with it).
    pub fn set_feature_norm(&mut self, norm: FeatureNorm) {
        if self.takes_feature_norm() {
            self.norm = Some(norm);
        }
    }

    /// Patch rows and global descriptor, standardised when a
    /// [`FeatureNorm`] is set.
    fn standardised(
        &self,
        patches: &Tensor,
        global: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match &self.norm {
            Some(n) => Ok((
                FeatureNorm::apply(patches, &n.patch_mean, &n.patch_inv)?,
                FeatureNorm::apply(global, &n.global_mean, &n.global_inv)?,
            )),
            None => Ok((patches.clone(), global.clone())),
        }
    }

    /// Turns dropout of the head's inputs on (`p` in (0, 1): each value of
    /// the patch rows and of the global descriptor is zeroed with
    /// probability `p` and the others scaled by 1 / (1 − p), with masks
    /// drawn from a generator seeded by `seed`) or off (`p` ≤ 0 or not a
    /// number; validation and inference).
    pub fn set_dropout(&self, p: f64, seed: u64) {
        let on = p > 0.0 && p < 1.0;
        #[allow(clippy::cast_possible_truncation)]
        let state = on.then(|| (p as f32, ChaCha8Rng::seed_from_u64(seed)));
        *self.dropout.borrow_mut() = state;
    }

    /// Patch rows and global descriptor after dropout (unchanged when it
    /// is off).
    fn dropped(&self, patches: &Tensor, global: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut state = self.dropout.borrow_mut();
        let Some((p, rng)) = state.as_mut() else {
            return Ok((patches.clone(), global.clone()));
        };
        let scale = 1.0 / (1.0 - *p);
        let mut mask = |t: &Tensor| -> candle_core::Result<Tensor> {
            let keep: Vec<f32> = (0..t.elem_count())
                .map(|_| if rng.random::<f32>() < *p { 0.0 } else { scale })
                .collect();
            let m = Tensor::from_vec(keep, t.shape(), t.device())?.to_dtype(t.dtype())?;
            t.mul(&m)
        };
        Ok((mask(patches)?, mask(global)?))
    }

    /// Rewrites the projections of `tensors` (a backbone file's contents)
    /// with `f`: folding for saving, unfolding after loading.
    fn map_projections(
        &self,
        tensors: &mut HashMap<String, Tensor>,
        f: ProjectionMap,
    ) -> Result<(), ModelError> {
        let Some(norm) = &self.norm else {
            return Ok(());
        };
        for (proj, mean, inv) in [
            ("proj_patch", &norm.patch_mean, &norm.patch_inv),
            ("proj_global", &norm.global_mean, &norm.global_inv),
        ] {
            let (Some(w), Some(b)) = (
                tensors.get(&format!("{proj}.weight")),
                tensors.get(&format!("{proj}.bias")),
            ) else {
                return Err(ModelError::Input(format!("no {proj} to standardise")));
            };
            let (w, b) = f(w, b, mean, inv)?;
            tensors.insert(format!("{proj}.weight"), w);
            tensors.insert(format!("{proj}.bias"), b);
        }
        Ok(())
    }

    /// Loads the trained variables of a model folder written by
    /// [`Self::save`] (to resume).
    ///
    /// # Errors
    /// [`TrainError`] naming the file that does not fit.
    pub fn load_vars(&mut self, dir: &Path) -> Result<(), TrainError> {
        let head_path = dir.join(HEAD_WEIGHTS_FILE);
        self.head_vars
            .load(&head_path)
            .map_err(|e| TrainError::Io {
                path: head_path.clone(),
                message: e.to_string(),
            })?;
        if let Body::Clip { .. } = self.body {
            // The trained layers (nothing, for a frozen tower).
            let path = dir.join(clip::WEIGHTS_FILE);
            let current = var_tensors(&self.backbone_vars)?;
            if !current.is_empty() {
                let ws = Weights::open(&path, DType::F32, &self.device)?;
                let loaded = current
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), ws.get(k, t.dims())?)))
                    .collect::<Result<HashMap<_, _>, ModelError>>()?;
                set_vars(&self.backbone_vars, loaded, &path)?;
            }
        }
        if let Body::FaceRes { .. } = self.body {
            let path = dir.join(BACKBONE_FILE);
            self.backbone_vars.load(&path).map_err(|e| TrainError::Io {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if self.norm.is_some() {
                let mut proj: HashMap<String, Tensor> = var_tensors(&self.backbone_vars)?
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("proj_"))
                    .collect();
                self.map_projections(&mut proj, FeatureNorm::unfold)?;
                set_vars(&self.backbone_vars, proj, &path)?;
            }
        }
        Ok(())
    }

    /// The images it is trained on: listed in every model folder it saves
    /// ([`TRAINING_IMAGES_FILE`]).
    pub fn set_training_images(&mut self, images: &TrainingImages) {
        self.training_images = Some(images.to_text());
    }

    /// Writes a complete model folder (head config and weights, backbone,
    /// the list of training images once set), each file atomically.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let json = serde_json::to_string_pretty(&self.config).map_err(|e| TrainError::Io {
            path: dir.join(HEAD_CONFIG_FILE),
            message: e.to_string(),
        })?;
        write_file(&dir.join(HEAD_CONFIG_FILE), json.as_bytes())?;
        save_tensors(&dir.join(HEAD_WEIGHTS_FILE), &var_tensors(&self.head_vars)?)?;
        if let Some(text) = &self.training_images {
            write_file(&dir.join(TRAINING_IMAGES_FILE), text.as_bytes())?;
        }
        match &self.body {
            Body::FaceRes { frozen, .. } => {
                let mut all = var_tensors(&self.backbone_vars)?;
                self.map_projections(&mut all, FeatureNorm::fold)?;
                all.extend(frozen.iter().map(|(k, v)| (k.clone(), v.clone())));
                save_tensors(&dir.join(BACKBONE_FILE), &all)?;
            }
            Body::Clip { dir: src, .. } => {
                let trained = var_tensors(&self.backbone_vars)?;
                for f in [clip::CONFIG_FILE, clip::WEIGHTS_FILE] {
                    let from = src.join(f);
                    if f == clip::WEIGHTS_FILE && !trained.is_empty() {
                        // The file's tensors in their types, the trained
                        // layers in float32 (exactly as trained).
                        let mut all =
                            candle_core::safetensors::load(&from, &Device::Cpu).map_err(|e| {
                                TrainError::Io {
                                    path: from.clone(),
                                    message: e.to_string(),
                                }
                            })?;
                        for (k, t) in &trained {
                            all.insert(
                                k.clone(),
                                t.to_dtype(DType::F32).map_err(ModelError::from)?,
                            );
                        }
                        save_tensors(&dir.join(f), &all)?;
                        continue;
                    }
                    let bytes = std::fs::read(&from).map_err(|e| TrainError::Io {
                        path: from.clone(),
                        message: e.to_string(),
                    })?;
                    write_file(&dir.join(f), &bytes)?;
                }
            }
        }
        Ok(())
    }
}

/// Variables with their names, as the optimizer keeps them.
pub type NamedVars = Vec<(String, Var)>;

/// Sets the variables of `map` that `tensors` names (read from `path`).
fn set_vars(map: &VarMap, tensors: HashMap<String, Tensor>, path: &Path) -> Result<(), TrainError> {
    let data = map.data().lock().map_err(|_| TrainError::Io {
        path: path.to_path_buf(),
        message: "variable map poisoned".into(),
    })?;
    for (k, t) in tensors {
        if let Some(v) = data.get(&k) {
            v.set(&t).map_err(ModelError::from)?;
        }
    }
    Ok(())
}

fn var_tensors(map: &VarMap) -> Result<HashMap<String, Tensor>, TrainError> {
    let data = map.data().lock().map_err(|_| TrainError::Io {
        path: PathBuf::new(),
        message: "variable map poisoned".into(),
    })?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}

pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::data::atomic::write_atomic(path, |w| w.write_all(bytes)).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub(super) fn save_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    let io = |e: String| TrainError::Io {
        path: path.to_path_buf(),
        message: e,
    };
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, None).map_err(|e| io(e.to_string()))?;
    write_file(path, &bytes)
}
