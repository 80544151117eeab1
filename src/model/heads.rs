//! The SFAM heads: patch-level image-text alignment and the facial-region
//! mixture of experts (`../shared/docs/SFAM.md`, steps 2–4; the exact
//! equations and weight keys are in `docs/MODEL.md`).
//!
//! They take a global token `[B, D]`, patch tokens `[B, N, D]` (N = H·W)
//! and soft region masks `[B, R, N]`, whatever backbone produced them.

use std::path::Path;

use candle_core::{D, DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::clip::l2_normalize;
use super::weights::Weights;

/// Format name in `sfam_head.json`.
pub const HEAD_FORMAT: &str = "sfam-head";
/// Format version in `sfam_head.json`.
pub const HEAD_VERSION: u32 = 1;

/// `sfam_head.json`: the head's hyper-parameters, prompts and regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Always `"sfam-head"`.
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// Dimension of the tokens (CLIP: `projection_dim`).
    pub dim: usize,
    /// The patch grid `[rows, columns]` the head was trained on.
    pub grid: [usize; 2],
    /// Hidden width of the alignment adapter.
    pub adapter_hidden: usize,
    /// Number of experts E.
    pub num_experts: usize,
    /// Experts kept per region (2).
    pub top_k: usize,
    /// Hidden width of each expert.
    pub expert_hidden: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Added to each region's mask mass before dividing.
    pub mask_eps: f64,
    /// The prompts' texts; the first describes a genuine face.
    pub prompts: Vec<String>,
    /// The regions' names, in the order of the masks.
    pub regions: Vec<String>,
    /// What the head was trained on (informational).
    #[serde(default)]
    pub backbone: Option<String>,
    /// A decision threshold suggested with the model (`sfam train` writes
    /// the one its validation faces give); `sfam scan` and the app use it
    /// when no threshold is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<SuggestedThreshold>,
    /// What the model was trained and validated on (`sfam train` writes
    /// it), so that a verdict can be read against the kinds of faces the
    /// model knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingData>,
}

/// The data a model was trained and validated on, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingData {
    /// Every dataset of the run, in the run's order.
    pub datasets: Vec<TrainedDataset>,
    /// Fakes the trainer made from real training faces, in words
    /// (self-blends, donor blends), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_fakes: Option<String>,
    /// Which weights the validation AUCs are of (`epoch 48`).
    pub validated: String,
}

/// One dataset of a training run: its faces on each side of the split and
/// the validation AUC of the saved weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedDataset {
    /// The dataset's name (its folder's).
    pub name: String,
    /// Real training images.
    pub train_real: usize,
    /// Fake training images.
    pub train_fake: usize,
    /// Real validation images.
    pub val_real: usize,
    /// Fake validation images.
    pub val_fake: usize,
    /// Validation AUC (real against fake) of the saved weights; `None`
    /// when a side is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_auc: Option<f64>,
}

/// What every reader of a score should know about the kinds of faces a
/// model was not trained on.
pub const UNSEEN_KINDS_CAVEAT: &str = "A face unlike these (from another generator, editing tool \
     or camera) may be misjudged either way: a low score is no proof that a face is real.";

impl TrainingData {
    /// `ciplab (676 real, 619 fake), dfdc (1992 real, 1990 fake)` and the
    /// synthetic fakes, if any.
    #[must_use]
    pub fn trained_on(&self) -> String {
        let mut parts: Vec<String> = self
            .datasets
            .iter()
            .map(|d| format!("{} ({} real, {} fake)", d.name, d.train_real, d.train_fake))
            .collect();
        if let Some(s) = &self.synthetic_fakes {
            parts.push(s.clone());
        }
        parts.join(", ")
    }

    /// `validation AUC (epoch 48): ciplab 0.804, dfdc 0.842`, or `None`
    /// when no dataset has one.
    #[must_use]
    pub fn validation(&self) -> Option<String> {
        let aucs: Vec<String> = self
            .datasets
            .iter()
            .filter_map(|d| d.val_auc.map(|a| format!("{} {a:.3}", d.name)))
            .collect();
        (!aucs.is_empty())
            .then(|| format!("validation AUC ({}): {}", self.validated, aucs.join(", ")))
    }
}

/// A decision threshold on the score and the rule that chose it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuggestedThreshold {
    /// A face is called fake when its score is at least this (0..=1).
    pub value: f64,
    /// How it was chosen, in words (e.g. the false-positive rate on the
    /// validation faces).
    pub rule: String,
}

impl HeadConfig {
    /// Reads and checks `sfam_head.json`.
    ///
    /// # Errors
    /// [`ModelError::Io`] or [`ModelError::Config`], naming the file.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks the values fit together.
    ///
    /// # Errors
    /// A description of the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != HEAD_FORMAT || self.version != HEAD_VERSION {
            return Err(format!(
                "format {:?} version {}, expected {HEAD_FORMAT:?} version {HEAD_VERSION}",
                self.format, self.version
            ));
        }
        if self.dim == 0 || self.adapter_hidden == 0 || self.expert_hidden == 0 {
            return Err("dim, adapter_hidden and expert_hidden must be positive".into());
        }
        if self.grid.contains(&0) {
            return Err("grid must be positive".into());
        }
        if self.top_k == 0 || self.top_k > self.num_experts {
            return Err(format!(
                "top_k {} must be between 1 and num_experts {}",
                self.top_k, self.num_experts
            ));
        }
        if self.prompts.len() < 2 {
            return Err("at least two prompts (genuine + one artifact) are needed".into());
        }
        if self.regions.is_empty() {
            return Err("no regions".into());
        }
        if let Some(t) = &self.threshold
            && !(0.0..=1.0).contains(&t.value)
        {
            return Err(format!("threshold {} is outside [0, 1]", t.value));
        }
        if let Some(t) = &self.training
            && let Some(d) = t
                .datasets
                .iter()
                .find(|d| d.val_auc.is_some_and(|a| !(0.0..=1.0).contains(&a)))
        {
            return Err(format!(
                "training: {}'s validation AUC is outside [0, 1]",
                d.name
            ));
        }
        Ok(())
    }

    /// What the model was trained on, in a line: the datasets with their
    /// training images, the synthetic fakes and the validation AUCs; or
    /// that the model folder does not say.
    #[must_use]
    pub fn training_note(&self) -> String {
        match &self.training {
            Some(t) => {
                let mut s = format!("trained on {}", t.trained_on());
                if let Some(v) = t.validation() {
                    s.push_str("; ");
                    s.push_str(&v);
                }
                s
            }
            None => "what it was trained on is not recorded (its sfam_head.json has no \
                     \"training\" entry)"
                .to_owned(),
        }
    }

    /// Number of patches `H·W`.
    #[must_use]
    pub fn num_patches(&self) -> usize {
        self.grid[0] * self.grid[1]
    }
}

/// Fetches a tensor by its full key and expected shape: from a weights
/// file ([`SfamHead::from_weights`]) or from trainable variables
/// (`crate::train`).
pub type TensorGetter<'a> = dyn Fn(&str, &[usize]) -> Result<Tensor, ModelError> + 'a;

fn linear(
    get: &TensorGetter<'_>,
    prefix: &str,
    d_in: usize,
    d_out: usize,
) -> Result<candle_nn::Linear, ModelError> {
    Ok(candle_nn::Linear::new(
        get(&format!("{prefix}.weight"), &[d_out, d_in])?,
        Some(get(&format!("{prefix}.bias"), &[d_out])?),
    ))
}

fn layer_norm(
    get: &TensorGetter<'_>,
    prefix: &str,
    dim: usize,
    eps: f64,
) -> Result<LayerNorm, ModelError> {
    Ok(LayerNorm {
        weight: get(&format!("{prefix}.weight"), &[dim])?,
        bias: get(&format!("{prefix}.bias"), &[dim])?,
        eps,
    })
}

/// Layer norm over the last dimension with plain tensor operations, so it
/// is differentiable (candle-nn's fused kernel has no backward pass).
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension with plain tensor operations
/// (differentiable; candle-nn's fused kernel has no backward pass).
fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Two linear layers with an exact GELU between them.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

impl Mlp {
    fn new(
        get: &TensorGetter<'_>,
        prefix: &str,
        d_in: usize,
        hidden: usize,
        d_out: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            fc1: linear(get, &format!("{prefix}.fc1"), d_in, hidden)?,
            fc2: linear(get, &format!("{prefix}.fc2"), hidden, d_out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

/// Everything the heads compute for a batch, as tensors.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// `sigmoid(logit)`, `[B]`.
    pub score: Tensor,
    /// Final logit, `[B]`.
    pub logit: Tensor,
    /// Logit from the global token, `[B]`.
    pub global_logit: Tensor,
    /// Per-region logits `ℓ_r`, `[B, R]`.
    pub region_logits: Tensor,
    /// Region attention β (softmax over regions), `[B, R]`.
    pub region_attention: Tensor,
    /// `β_r` · `ℓ_r`, `[B, R]` (they sum to `logit − global_logit`).
    pub region_contributions: Tensor,
    /// The router's softmax over all experts, `[B, R, E]`.
    pub router_probs: Tensor,
    /// The routing weights actually used: the top-k probabilities
    /// renormalised to sum to 1, zeros elsewhere, `[B, R, E]`.
    pub routing: Tensor,
    /// Per-prompt softmax over prompts of each patch, `[B, P, N]`.
    pub alignment_maps: Tensor,
    /// The alignment logits `cos(p_i, t_k) / τ` before the softmax, `[B, N, P]`
    /// (the training losses use them).
    pub alignment_logits: Tensor,
}

/// The SFAM heads with their weights (`sfam_head.safetensors`).
#[derive(Debug, Clone)]
pub struct SfamHead {
    config: HeadConfig,
    /// Prompt vectors `[P, D]` as stored (normalised in [`Self::forward`]).
    prompts: Tensor,
    adapter_norm: LayerNorm,
    adapter: Mlp,
    /// `align.logit_scale`; `exp` of it is 1/τ.
    logit_scale: Tensor,
    text_proj: candle_nn::Linear,
    region_embed: Tensor,
    router: candle_nn::Linear,
    experts: Vec<Mlp>,
    region_logit: candle_nn::Linear,
    region_attn: candle_nn::Linear,
    global_norm: LayerNorm,
    global_fc: candle_nn::Linear,
}

impl SfamHead {
    /// Loads `sfam_head.json` and `sfam_head.safetensors` (strict).
    ///
    /// # Errors
    /// [`ModelError`] naming the file that is wrong.
    pub fn load(
        config_path: &Path,
        weights_path: &Path,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let config = HeadConfig::from_file(config_path)?;
        let weights = Weights::open(weights_path, DType::F32, device)?;
        let head = Self::from_weights(config, &weights)?;
        weights.finish()?;
        Ok(head)
    }

    /// Builds the head from `weights` (keys of `docs/MODEL.md`).
    ///
    /// # Errors
    /// [`ModelError`] for a missing or misshapen tensor.
    pub fn from_weights(config: HeadConfig, weights: &Weights) -> Result<Self, ModelError> {
        Self::from_getter(config, &|key: &str, shape: &[usize]| {
            weights.get(key, shape)
        })
    }

    /// Builds the head from `get`, which returns the tensor of a full key
    /// (`align.adapter.fc1.weight` …) with the given shape.
    ///
    /// # Errors
    /// What `get` returns for a missing or misshapen tensor.
    pub fn from_getter(config: HeadConfig, get: &TensorGetter<'_>) -> Result<Self, ModelError> {
        let (d, p, r, e) = (
            config.dim,
            config.prompts.len(),
            config.regions.len(),
            config.num_experts,
        );
        let eps = config.layer_norm_eps;
        let experts = (0..e)
            .map(|i| Mlp::new(get, &format!("moe.experts.{i}"), d, config.expert_hidden, d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            prompts: get("prompts.embeds", &[p, d])?,
            adapter_norm: layer_norm(get, "align.adapter.norm", d, eps)?,
            adapter: Mlp::new(get, "align.adapter", d, config.adapter_hidden, d)?,
            logit_scale: get("align.logit_scale", &[])?,
            text_proj: linear(get, "align.text_proj", d, d)?,
            region_embed: get("moe.region_embed", &[r, d])?,
            router: linear(get, "moe.router", d, e)?,
            experts,
            region_logit: linear(get, "head.region_logit", d, 1)?,
            region_attn: linear(get, "head.region_attn", d, 1)?,
            global_norm: layer_norm(get, "head.global.norm", d, eps)?,
            global_fc: linear(get, "head.global.fc", d, 1)?,
            config,
        })
    }

    /// The hyper-parameters, prompts and regions.
    #[must_use]
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// The unit prompt vectors `[P, D]`.
    ///
    /// # Errors
    /// A tensor error.
    pub fn prompt_embeds(&self) -> candle_core::Result<Tensor> {
        l2_normalize(&self.prompts)
    }

    /// Replaces the prompts (texts and their vectors, e.g. from the CLIP
    /// text tower); the vectors are normalised here. The alignment maps
    /// then follow the new prompts; the trained layers stay as they are.
    ///
    /// # Errors
    /// [`ModelError::Input`] when the counts or the dimension disagree.
    pub fn set_prompts(&mut self, texts: Vec<String>, embeds: &Tensor) -> Result<(), ModelError> {
        let (p, d) = embeds.dims2()?;
        if p != texts.len() || d != self.config.dim || p < 2 {
            return Err(ModelError::Input(format!(
                "{} prompt texts and embeddings {:?}; expected at least 2 of dimension {}",
                texts.len(),
                embeds.dims(),
                self.config.dim
            )));
        }
        self.prompts = l2_normalize(&embeds.to_dtype(DType::F32)?)?;
        self.config.prompts = texts;
        Ok(())
    }

    /// Runs the heads.
    ///
    /// `global`: `[B, D]`; `patches`: `[B, N, D]`; `masks`: `[B, R, N]`
    /// (or `[R, N]`, the same for every image), values in [0, 1].
    ///
    /// # Errors
    /// [`ModelError::Input`] for shapes that do not fit the head; a tensor error.
    #[allow(clippy::many_single_char_names)] // the notation of docs/MODEL.md
    pub fn forward(
        &self,
        global: &Tensor,
        patches: &Tensor,
        masks: &Tensor,
    ) -> Result<HeadOutput, ModelError> {
        let c = &self.config;
        let (b, n, d) = patches.dims3()?;
        let r = c.regions.len();
        if d != c.dim || global.dims() != [b, d] {
            return Err(ModelError::Input(format!(
                "tokens of shape {:?} / {:?}, the head expects dimension {}",
                global.dims(),
                patches.dims(),
                c.dim
            )));
        }
        let masks = match masks.rank() {
            2 => masks
                .unsqueeze(0)?
                .broadcast_as((b, masks.dim(0)?, masks.dim(1)?))?,
            _ => masks.clone(),
        };
        if masks.dims() != [b, r, n] {
            return Err(ModelError::Input(format!(
                "region masks of shape {:?}, expected [{b}, {r}, {n}]",
                masks.dims()
            )));
        }
        let masks = masks.to_dtype(DType::F32)?.contiguous()?;
        let patches = patches.to_dtype(DType::F32)?;
        let global = global.to_dtype(DType::F32)?;

        // Patch-level alignment.
        let t = &l2_normalize(&self.prompts)?;
        let a = (&patches
            + self
                .adapter
                .forward(&self.adapter_norm.forward(&patches)?)?)?;
        let inv_temperature = self.logit_scale.to_dtype(DType::F32)?.exp()?;
        let logits = l2_normalize(&a)?
            .broadcast_matmul(&t.t()?)?
            .broadcast_mul(&inv_temperature)?;
        let w = softmax(&logits)?; // [B, N, P]
        let z = (&a + self.text_proj.forward(&w.broadcast_matmul(t)?)?)?;

        // Region features, routing, experts.
        let weight_sum = (masks.sum_keepdim(D::Minus1)? + c.mask_eps)?;
        let f = masks.matmul(&z)?.broadcast_div(&weight_sum)?; // [B, R, D]
        let h = f.broadcast_add(&self.region_embed)?;
        let probs = softmax(&self.router.forward(&h)?)?; // [B, R, E]
        let routing = top_k_gates(&probs, c.top_k)?;
        let mut o = h.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            let g = routing.narrow(D::Minus1, e, 1)?;
            o = (o + expert.forward(&h)?.broadcast_mul(&g)?)?;
        }

        // Logits.
        let region_logits = self.region_logit.forward(&o)?.squeeze(D::Minus1)?;
        let beta = softmax(&self.region_attn.forward(&o)?.squeeze(D::Minus1)?)?;
        let contributions = (&beta * &region_logits)?;
        let global_logit = self
            .global_fc
            .forward(&self.global_norm.forward(&global)?)?
            .squeeze(D::Minus1)?;
        let logit = (&global_logit + contributions.sum(D::Minus1)?)?;
        let score = candle_nn::ops::sigmoid(&logit)?;
        Ok(HeadOutput {
            score,
            logit,
            global_logit,
            region_logits,
            region_attention: beta,
            region_contributions: contributions,
            router_probs: probs,
            routing,
            alignment_logits: logits,
            alignment_maps: w.transpose(1, 2)?.contiguous()?,
        })
    }
}

/// Keeps the `k` largest probabilities of each row (ties: the lower
/// expert index first), renormalised to sum to 1; zeros elsewhere. The
/// choice is made on the values; the result is a product of `probs` with
/// that fixed choice, so gradients flow to the router.
#[allow(clippy::many_single_char_names)]
fn top_k_gates(probs: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (b, r, e) = probs.dims3()?;
    let p = probs
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut keep = vec![0.0_f32; p.len()];
    for (row, out) in p.chunks(e).zip(keep.chunks_mut(e)) {
        let mut idx: Vec<usize> = (0..e).collect();
        idx.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
        for &i in &idx[..k.min(e)] {
            out[i] = 1.0;
        }
    }
    let keep = Tensor::from_vec(keep, (b, r, e), probs.device())?;
    let kept = (probs.to_dtype(DType::F32)? * keep)?;
    let total = kept.sum_keepdim(D::Minus1)?.clamp(1e-20, f64::MAX)?;
    kept.broadcast_div(&total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_two_gates_renormalise() {
        let probs =
            Tensor::from_vec(vec![0.1_f32, 0.5, 0.3, 0.1], (1, 1, 4), &Device::Cpu).unwrap();
        let g = top_k_gates(&probs, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((g[1] - 0.625).abs() < 1e-6 && (g[2] - 0.375).abs() < 1e-6);
        assert_eq!((g[0], g[3]), (0.0, 0.0));
    }

    fn training() -> TrainingData {
        let d = |name: &str, auc| TrainedDataset {
            name: name.to_owned(),
            train_real: 10,
            train_fake: 8,
            val_real: 3,
            val_fake: 2,
            val_auc: auc,
        };
        TrainingData {
            datasets: vec![d("a", Some(0.8125)), d("b", None)],
            synthetic_fakes: Some("self-blended real training faces (15 % of each epoch)".into()),
            validated: "epoch 7".into(),
        }
    }

    #[test]
    fn the_training_note_names_the_data_and_the_validation() {
        let t = training();
        assert_eq!(
            t.trained_on(),
            "a (10 real, 8 fake), b (10 real, 8 fake), \
             self-blended real training faces (15 % of each epoch)"
        );
        assert_eq!(
            t.validation().as_deref(),
            Some("validation AUC (epoch 7): a 0.812")
        );
        let mut none = t.clone();
        for d in &mut none.datasets {
            d.val_auc = None;
        }
        assert_eq!(none.validation(), None);
    }

    #[test]
    fn a_config_reads_with_and_without_its_training_entry() {
        let json = r#"{"format": "sfam-head", "version": 1, "dim": 8, "grid": [2, 2],
            "adapter_hidden": 4, "num_experts": 2, "top_k": 1, "expert_hidden": 4,
            "layer_norm_eps": 1e-5, "mask_eps": 1e-6, "prompts": ["real", "fake"],
            "regions": ["nose"]}"#;
        let mut c: HeadConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.training, None);
        assert!(
            c.training_note().contains("not recorded"),
            "{}",
            c.training_note()
        );
        c.training = Some(training());
        let back: HeadConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(back.validate().is_ok());
        assert!(
            back.training_note()
                .starts_with("trained on a (10 real, 8 fake)")
        );
        let mut bad = back;
        if let Some(t) = &mut bad.training {
            t.datasets[1].val_auc = Some(1.5);
        }
        assert!(bad.validate().unwrap_err().contains("b's validation AUC"));
    }
}
