//! The CLIP vision transformer, returning the projected class token and
//! every projected patch token.

use candle_core::{IndexOp, Module, Tensor};

use super::{Encoder, EncoderDims};
use crate::model::ModelError;
use crate::model::config::{ClipConfig, ClipVisionConfig};
use crate::model::weights::WeightsView;

/// What the vision tower returns for a batch.
#[derive(Debug, Clone)]
pub struct ImageEmbeddings {
    /// `visual_projection(post_layernorm(class token))`, `[B, P]`, not
    /// normalised: transformers' `image_embeds` before its L2 norm.
    pub image_embeds: Tensor,
    /// `visual_projection(post_layernorm(patch tokens))`, `[B, H*W, P]`,
    /// row-major over the patch grid.
    pub patch_embeds: Tensor,
}

/// CLIP's image tower with its projection (`vision_model.*`, `visual_projection.weight`).
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    config: ClipVisionConfig,
    projection_dim: usize,
    /// The patch convolution as a matrix `[D, C·p·p]` (stride = kernel).
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: candle_nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: candle_nn::LayerNorm,
    visual_projection: candle_nn::Linear,
}

impl ClipVisionTransformer {
    /// Builds the tower from the root view of a `CLIPModel` checkpoint.
    ///
    /// # Errors
    /// [`ModelError`] for a missing or misshapen tensor.
    pub fn new(config: &ClipConfig, root: &WeightsView<'_>) -> Result<Self, ModelError> {
        let c = &config.vision_config;
        let vb = root.pp("vision_model");
        let emb = vb.pp("embeddings");
        let d = c.hidden_size;
        let patch = emb
            .pp("patch_embedding")
            .get("weight", &[d, c.num_channels, c.patch_size, c.patch_size])?;
        let patch_weight = patch.reshape((d, c.num_channels * c.patch_size * c.patch_size))?;
        let class_embedding = emb.get("class_embedding", &[d])?;
        let position_embedding = emb
            .pp("position_embedding")
            .get("weight", &[c.num_patches() + 1, d])?;
        // A buffer transformers writes in older checkpoints; positions are implicit here.
        emb.skip("position_ids");
        let dims = EncoderDims {
            dim: d,
            mlp: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            act: c.hidden_act,
            eps: c.layer_norm_eps,
        };
        Ok(Self {
            config: c.clone(),
            projection_dim: config.projection_dim,
            patch_weight,
            class_embedding,
            position_embedding,
            pre_layrnorm: vb.pp("pre_layrnorm").layer_norm(d, c.layer_norm_eps)?,
            encoder: Encoder::new(&vb.pp("encoder"), dims)?,
            post_layernorm: vb.pp("post_layernorm").layer_norm(d, c.layer_norm_eps)?,
            visual_projection: root
                .pp("visual_projection")
                .linear_no_bias(d, config.projection_dim)?,
        })
    }

    /// Runs the encoder's matrix products with bf16 inputs and float32
    /// accumulation (`on`, where [`super::super::bf16::supported`]), or in
    /// float32. Returns the precision now in use.
    ///
    /// # Errors
    /// [`ModelError`] if a weight cannot be read back for packing.
    pub fn set_bf16(&mut self, on: bool) -> Result<super::super::Precision, ModelError> {
        let on = on && super::super::bf16::supported() && self.patch_weight.device().is_cpu();
        self.encoder.set_bf16(on)?;
        Ok(if on {
            super::super::Precision::Bf16
        } else {
            super::super::Precision::F32
        })
    }

    /// The tower's configuration.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Heads, activation and layer-norm epsilon of the encoder's layers
    /// (for [`super::layer_forward_differentiable`]).
    #[must_use]
    pub fn layer_shape(&self) -> super::LayerShape {
        super::LayerShape {
            heads: self.config.num_attention_heads,
            act: self.config.hidden_act,
            eps: self.config.layer_norm_eps,
        }
    }

    /// Dimension of the joint space.
    #[must_use]
    pub fn projection_dim(&self) -> usize {
        self.projection_dim
    }

    /// Encodes normalised pixels `[B, C, S, S]` (S = `image_size`).
    ///
    /// # Errors
    /// A tensor error, e.g. for pixels of another size.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<ImageEmbeddings> {
        let x = self.hidden_states(pixels, self.config.num_hidden_layers)?;
        let x = self.post_layernorm.forward(&x)?;
        Self::split_tokens(&self.visual_projection.forward(&x)?)
    }

    /// The hidden states `[B, 1 + N, D]` (class token first) after the
    /// embeddings, the pre-layer norm and the first `layers` encoder layers
    /// (all of them when `layers` is larger), with the inference kernels —
    /// no gradient flows back through them. A trainer runs its trained
    /// layers on these ([`super::layer_forward_differentiable`]), then
    /// [`Self::project_differentiable`].
    ///
    /// # Errors
    /// A tensor error, e.g. for pixels of another size.
    #[allow(clippy::many_single_char_names)] // shape letters
    pub fn hidden_states(&self, pixels: &Tensor, layers: usize) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = pixels.dims4()?;
        if ch != c.num_channels || h != c.image_size || w != c.image_size {
            candle_core::bail!(
                "expected pixels [B, {}, {}, {}], got [{b}, {ch}, {h}, {w}]",
                c.num_channels,
                c.image_size,
                c.image_size
            );
        }
        let (g, p, d) = (c.grid_side(), c.patch_size, c.hidden_size);
        // Patchify: [B, C, g, p, g, p] → [B, g, g, C, p, p] → [B, N, C·p·p];
        // the same products as the stride-p convolution.
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, ch * p * p))?;
        let x = patches
            .matmul(&self.patch_weight.t()?)?
            .reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.pre_layrnorm.forward(&x)?;
        self.encoder.forward_layers(&x, None, layers)
    }

    /// `post_layernorm` and the visual projection of hidden states
    /// `[B, 1 + N, D]`, in operations with gradients (the layer norm of
    /// [`Self::forward`] has none), their weights as loaded: the last step
    /// of a forward pass whose last layers are trained.
    ///
    /// # Errors
    /// A tensor error.
    #[allow(clippy::many_single_char_names)] // shape letters
    pub fn project_differentiable(&self, hidden: &Tensor) -> candle_core::Result<ImageEmbeddings> {
        let ln = &self.post_layernorm;
        let Some(bias) = ln.bias() else {
            candle_core::bail!("post_layernorm has no bias");
        };
        #[allow(clippy::cast_possible_truncation)] // epsilons are small
        let x = candle_nn::ops::layer_norm_slow(hidden, ln.weight(), bias, ln.eps() as f32)?;
        let (b, s, d) = x.dims3()?;
        let w = self.visual_projection.weight();
        let x = x
            .reshape((b * s, d))?
            .matmul(&w.t()?)?
            .reshape((b, s, w.dim(0)?))?;
        Self::split_tokens(&x)
    }

    /// Class token and patch tokens of projected tokens `[B, 1 + N, P]`.
    fn split_tokens(x: &Tensor) -> candle_core::Result<ImageEmbeddings> {
        Ok(ImageEmbeddings {
            image_embeds: x.i((.., 0, ..))?.contiguous()?,
            patch_embeds: x.i((.., 1.., ..))?.contiguous()?,
        })
    }
}
