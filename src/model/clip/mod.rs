//! CLIP (Radford et al., "Learning Transferable Visual Models From Natural
//! Language Supervision", 2021) as in Hugging Face `transformers.CLIPModel`:
//! the vision transformer (class token *and* all patch tokens through the
//! final layer norm and the visual projection) and the text transformer.
//! Key names are those of `openai/clip-vit-base-patch16`'s safetensors.
//!
//! The building blocks are written here rather than taken from
//! candle-transformers' `clip` module, whose modules are private and which
//! only exposes the pre-norm hidden states, fixes the activation to
//! quick-GELU and the layer-norm epsilon to 1e-5, and draws a random class
//! embedding when the key is absent. The layer structure is the same.

mod text;
mod vision;

use std::path::Path;

use candle_core::{D, DType, Device, Module, Tensor};

pub use text::ClipTextTransformer;
pub use vision::{ClipVisionTransformer, ImageEmbeddings};

use super::bf16::PackedLinear;
use super::config::{Activation, ClipConfig};
use super::weights::{Weights, WeightsView};
use super::{BackboneOutput, ModelError};

/// File names inside a CLIP model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights of a CLIP model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Which towers to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towers {
    /// Both (every key of the file is checked).
    Both,
    /// Only the image tower; the text tower's keys are skipped.
    Vision,
    /// Only the text tower; the image tower's keys are skipped.
    Text,
}

/// A linear layer that can switch to the bf16 kernel of [`super::bf16`]
/// (CPU, float32 activations); otherwise candle's float32 product.
#[derive(Debug, Clone)]
struct Lin {
    linear: candle_nn::Linear,
    packed: Option<std::sync::Arc<PackedLinear>>,
}

impl Lin {
    fn new(linear: candle_nn::Linear) -> Self {
        Self {
            linear,
            packed: None,
        }
    }

    /// Packs the weights for the bf16 kernel (`true`), or drops the packed
    /// copy (`false`).
    fn set_bf16(&mut self, on: bool) -> Result<(), ModelError> {
        if !on {
            self.packed = None;
            return Ok(());
        }
        let w = self.linear.weight();
        let (n, k) = w.dims2()?;
        let flat = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias = match self.linear.bias() {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let packed = PackedLinear::new(&flat, n, k, bias.as_deref()).map_err(ModelError::Input)?;
        self.packed = Some(std::sync::Arc::new(packed));
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.packed {
            Some(p) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                x.apply_op1_no_bwd(&Bf16Linear(p))
            }
            _ => self.linear.forward(x),
        }
    }
}

/// The values of a contiguous f32 CPU tensor (for the custom operations).
fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} needs a contiguous input");
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// [`PackedLinear`] as a candle operation on the last dimension.
struct Bf16Linear<'a>(&'a PackedLinear);

impl candle_core::CustomOp1 for Bf16Linear<'_> {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = contiguous_f32(storage, layout, "bf16-linear")?;
        let dims = layout.dims();
        if dims.last() != Some(&self.0.in_features()) {
            candle_core::bail!(
                "bf16-linear: input {dims:?}, weight takes {}",
                self.0.in_features()
            );
        }
        let out = self.0.forward(x).map_err(candle_core::Error::msg)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.0.out_features();
        }
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }
}

/// Self-attention with the three input projections fused into one matrix
/// product (the file's `q_proj`, `k_proj`, `v_proj` are concatenated at load).
#[derive(Debug, Clone)]
struct Attention {
    qkv: Lin,
    out_proj: Lin,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: &WeightsView<'_>, dim: usize, heads: usize) -> Result<Self, ModelError> {
        let head_dim = dim / heads;
        #[allow(clippy::cast_precision_loss)] // head dims are small
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut ws = Vec::with_capacity(3);
        let mut bs = Vec::with_capacity(3);
        for name in ["q_proj", "k_proj", "v_proj"] {
            let w = vb.pp(name).get("weight", &[dim, dim])?;
            let b = vb.pp(name).get("bias", &[dim])?;
            // transformers scales the queries after the projection; folding
            // the scale into q_proj saves a pass (differences ~1e-7).
            let (w, b) = if name == "q_proj" {
                ((w * scale)?, (b * scale)?)
            } else {
                (w, b)
            };
            ws.push(w);
            bs.push(b);
        }
        let qkv = candle_nn::Linear::new(Tensor::cat(&ws, 0)?, Some(Tensor::cat(&bs, 0)?));
        Ok(Self {
            qkv: Lin::new(qkv),
            out_proj: Lin::new(vb.pp("out_proj").linear(dim, dim)?),
            heads,
            head_dim,
        })
    }

    /// `x`: `[B, S, D]`; `mask`: additive `[S, S]`.
    #[allow(clippy::many_single_char_names)] // b, s, d, q, k, v: the usual names
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, s, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut att = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, d))?;
        self.out_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    /// `fc1` without its bias: the bias is added by [`BiasQuickGelu`] on the CPU.
    fc1: Lin,
    fc1_bias: Tensor,
    /// `fc1`'s bias on the host, for the fused CPU kernel.
    fc1_bias_host: Vec<f32>,
    fc2: Lin,
    act: Activation,
}

impl Mlp {
    fn new(vb: &WeightsView<'_>, d: EncoderDims) -> Result<Self, ModelError> {
        let w = vb.pp("fc1").get("weight", &[d.mlp, d.dim])?;
        let fc1_bias = vb.pp("fc1").get("bias", &[d.mlp])?;
        Ok(Self {
            fc1: Lin::new(candle_nn::Linear::new(w, None)),
            fc1_bias_host: fc1_bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            fc1_bias,
            fc2: Lin::new(vb.pp("fc2").linear(d.mlp, d.dim)?),
            act: d.act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let fused = self.act == Activation::QuickGelu
            && h.device().is_cpu()
            && h.dtype() == DType::F32
            && h.is_contiguous();
        let h = if fused {
            h.apply_op1_no_bwd(&BiasQuickGelu {
                bias: &self.fc1_bias_host,
            })?
        } else {
            let h = h.broadcast_add(&self.fc1_bias)?;
            match self.act {
                Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
                Activation::Gelu => h.gelu_erf()?,
            }
        };
        self.fc2.forward(&h)
    }
}

/// `quick_gelu(x + bias)` in one parallel pass over the data (CPU, f32,
/// contiguous, bias along the last dimension); saves the four passes and
/// temporaries of the tensor-op formula.
struct BiasQuickGelu<'a> {
    bias: &'a [f32],
}

impl candle_core::CustomOp1 for BiasQuickGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-quick-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32(storage, layout, "bias-quick-gelu")?;
        let n = self.bias.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("bias-quick-gelu: {} values, bias of {n}", x.len());
        }
        let mut out = vec![0.0_f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, xi)| {
                for ((o, &v), &b) in o.iter_mut().zip(xi).zip(self.bias) {
                    let v = v + b;
                    *o = v / (1.0 + (-1.702 * v).exp());
                }
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// One pre-norm transformer block.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: candle_nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: candle_nn::LayerNorm,
    mlp: Mlp,
}

/// Dimensions of an encoder.
#[derive(Debug, Clone, Copy)]
struct EncoderDims {
    dim: usize,
    mlp: usize,
    heads: usize,
    layers: usize,
    act: Activation,
    eps: f64,
}

#[derive(Debug, Clone)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(vb: &WeightsView<'_>, d: EncoderDims) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let l = vb.pp("layers").pp(&i.to_string());
            layers.push(EncoderLayer {
                layer_norm1: l.pp("layer_norm1").layer_norm(d.dim, d.eps)?,
                self_attn: Attention::new(&l.pp("self_attn"), d.dim, d.heads)?,
                layer_norm2: l.pp("layer_norm2").layer_norm(d.dim, d.eps)?,
                mlp: Mlp::new(&l.pp("mlp"), d)?,
            });
        }
        Ok(Self { layers })
    }

    /// Switches every layer's matrix products to bf16 (or back).
    fn set_bf16(&mut self, on: bool) -> Result<(), ModelError> {
        for l in &mut self.layers {
            l.self_attn.qkv.set_bf16(on)?;
            l.self_attn.out_proj.set_bf16(on)?;
            l.mlp.fc1.set_bf16(on)?;
            l.mlp.fc2.set_bf16(on)?;
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.forward_layers(x, mask, self.layers.len())
    }

    /// The first `n` layers (all of them when `n` is larger).
    fn forward_layers(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        n: usize,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for l in self.layers.iter().take(n) {
            let h = l.self_attn.forward(&l.layer_norm1.forward(&x)?, mask)?;
            x = (x + h)?;
            let h = l.mlp.forward(&l.layer_norm2.forward(&x)?)?;
            x = (x + h)?;
        }
        Ok(x)
    }
}

/// The tensors of one encoder layer with their shapes, named as under the
/// layer's prefix in a checkpoint (`vision_model.encoder.layers.{i}.`):
/// what a trainer turns into variables for [`layer_forward_differentiable`].
#[must_use]
pub fn layer_tensor_shapes(dim: usize, mlp: usize) -> Vec<(&'static str, Vec<usize>)> {
    let mut v = vec![
        ("layer_norm1.weight", vec![dim]),
        ("layer_norm1.bias", vec![dim]),
    ];
    for (w, b) in [
        ("self_attn.q_proj.weight", "self_attn.q_proj.bias"),
        ("self_attn.k_proj.weight", "self_attn.k_proj.bias"),
        ("self_attn.v_proj.weight", "self_attn.v_proj.bias"),
        ("self_attn.out_proj.weight", "self_attn.out_proj.bias"),
    ] {
        v.push((w, vec![dim, dim]));
        v.push((b, vec![dim]));
    }
    v.extend([
        ("layer_norm2.weight", vec![dim]),
        ("layer_norm2.bias", vec![dim]),
        ("mlp.fc1.weight", vec![mlp, dim]),
        ("mlp.fc1.bias", vec![mlp]),
        ("mlp.fc2.weight", vec![dim, mlp]),
        ("mlp.fc2.bias", vec![dim]),
    ]);
    v
}

/// The shape letters of a layer: heads, activation, layer-norm epsilon.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    /// Attention heads.
    pub heads: usize,
    /// The MLP's activation.
    pub act: Activation,
    /// Layer-norm epsilon.
    pub eps: f64,
}

/// One pre-norm encoder layer (no attention mask: the image tower's) in
/// plain tensor operations, all with gradients: `get` returns the layer's
/// tensors by the names of [`layer_tensor_shapes`] (variables, when
/// training). The same arithmetic as the inference layers, which fuse the
/// three input projections, fold the query scale into them and use
/// kernels without backward passes (layer norm, softmax, the fused
/// activation); the two agree to float rounding (tested).
///
/// # Errors
/// A tensor error, or the one `get` returns.
#[allow(clippy::many_single_char_names)] // b, s, d, q, k, v: the usual names
pub fn layer_forward_differentiable(
    x: &Tensor,
    get: &dyn Fn(&str) -> candle_core::Result<Tensor>,
    shape: LayerShape,
) -> candle_core::Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    let heads = shape.heads;
    if heads == 0 || d % heads != 0 {
        candle_core::bail!("a width of {d} does not split into {heads} heads");
    }
    let head_dim = d / heads;
    let ln = |x: &Tensor, name: &str| -> candle_core::Result<Tensor> {
        #[allow(clippy::cast_possible_truncation)] // epsilons are small
        let eps = shape.eps as f32;
        candle_nn::ops::layer_norm_slow(
            x,
            &get(&format!("{name}.weight"))?,
            &get(&format!("{name}.bias"))?,
            eps,
        )
    };
    // Rows of all tokens through one matrix product (a weight broadcast
    // over the batch would make its gradient a batch of matrices to sum).
    let lin = |x: &Tensor, name: &str| -> candle_core::Result<Tensor> {
        let w = get(&format!("{name}.weight"))?;
        let bias = get(&format!("{name}.bias"))?;
        let (n_out, n_in) = w.dims2()?;
        x.reshape((b * s, n_in))?
            .matmul(&w.t()?)?
            .broadcast_add(&bias)?
            .reshape((b, s, n_out))
    };
    let split = |t: Tensor| -> candle_core::Result<Tensor> {
        t.reshape((b, s, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let h = ln(x, "layer_norm1")?;
    #[allow(clippy::cast_precision_loss)] // head dims are small
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = split((lin(&h, "self_attn.q_proj")? * scale)?)?;
    let k = split(lin(&h, "self_attn.k_proj")?)?;
    let v = split(lin(&h, "self_attn.v_proj")?)?;
    let att = candle_nn::ops::softmax(&q.matmul(&k.t()?.contiguous()?)?, D::Minus1)?;
    let y = att
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, s, d))?;
    let x = (x + lin(&y, "self_attn.out_proj")?)?;
    let h = lin(&ln(&x, "layer_norm2")?, "mlp.fc1")?;
    let h = match shape.act {
        Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
        Activation::Gelu => h.gelu_erf()?,
    };
    x + lin(&h, "mlp.fc2")?
}

/// A CLIP model: either tower or both, and the learned logit scale.
#[derive(Debug, Clone)]
pub struct ClipModel {
    config: ClipConfig,
    vision: Option<ClipVisionTransformer>,
    text: Option<ClipTextTransformer>,
    logit_scale: Option<f32>,
}

impl ClipModel {
    /// Loads `DIR/config.json` and `DIR/model.safetensors` (memory-mapped,
    /// strict: every key of the chosen towers must be there with the right
    /// shape, and the file may hold nothing else).
    ///
    /// # Errors
    /// [`ModelError`] naming the file (and tensor) that is wrong.
    pub fn load(dir: &Path, towers: Towers, device: &Device) -> Result<Self, ModelError> {
        let config = ClipConfig::from_file(&dir.join(CONFIG_FILE))?;
        let weights = Weights::open(&dir.join(WEIGHTS_FILE), DType::F32, device)?;
        Self::from_weights(&config, &weights, towers)
    }

    /// Builds the model from `weights` (HF `CLIPModel` key layout) and
    /// checks that nothing in the file was left over.
    ///
    /// # Errors
    /// [`ModelError`] for a missing, misshapen or unexpected tensor.
    pub fn from_weights(
        config: &ClipConfig,
        weights: &Weights,
        towers: Towers,
    ) -> Result<Self, ModelError> {
        let root = weights.pp("");
        let vision = if towers == Towers::Text {
            weights.skip_prefix("vision_model.");
            weights.skip_prefix("visual_projection.");
            None
        } else {
            Some(ClipVisionTransformer::new(config, &root)?)
        };
        let text = if towers == Towers::Vision {
            weights.skip_prefix("text_model.");
            weights.skip_prefix("text_projection.");
            None
        } else {
            Some(ClipTextTransformer::new(config, &root)?)
        };
        let logit_scale = if weights.contains("logit_scale") {
            let t = weights.get_as("logit_scale", &[], DType::F32)?;
            Some(t.to_scalar::<f32>()?)
        } else {
            None
        };
        weights.finish()?;
        Ok(Self {
            config: config.clone(),
            vision,
            text,
            logit_scale,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The image tower, if loaded.
    #[must_use]
    pub fn vision(&self) -> Option<&ClipVisionTransformer> {
        self.vision.as_ref()
    }

    /// The text tower, if loaded.
    #[must_use]
    pub fn text(&self) -> Option<&ClipTextTransformer> {
        self.text.as_ref()
    }

    /// Takes the image tower out (to use it as a [`super::Backbone`]).
    #[must_use]
    pub fn into_vision(self) -> Option<ClipVisionTransformer> {
        self.vision
    }

    /// The file's learned log logit scale (`logit_scale`), if present.
    #[must_use]
    pub fn logit_scale(&self) -> Option<f32> {
        self.logit_scale
    }
}

/// `x / ‖x‖` along the last dimension.
///
/// # Errors
/// A tensor error.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&n.clamp(1e-12, f64::MAX)?)
}

impl super::Backbone for ClipVisionTransformer {
    fn input_size(&self) -> usize {
        self.config().image_size
    }

    fn grid(&self) -> (usize, usize) {
        let g = self.config().grid_side();
        (g, g)
    }

    fn dim(&self) -> usize {
        self.projection_dim()
    }

    fn set_precision(
        &mut self,
        precision: super::Precision,
    ) -> Result<super::Precision, ModelError> {
        self.set_bf16(precision.resolve() == super::Precision::Bf16)
    }

    fn encode(&self, pixels: &Tensor) -> candle_core::Result<BackboneOutput> {
        let out = self.forward(pixels)?;
        Ok(BackboneOutput {
            global: out.image_embeds,
            patches: out.patch_embeds,
        })
    }
}
