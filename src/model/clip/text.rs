//! The CLIP text transformer (causal), pooled at the end-of-text token and projected.

use candle_core::{DType, Device, Module, Tensor};

use super::{Encoder, EncoderDims};
use crate::model::ModelError;
use crate::model::config::{ClipConfig, ClipTextConfig};
use crate::model::weights::WeightsView;

/// CLIP's text tower with its projection (`text_model.*`, `text_projection.weight`).
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    config: ClipTextConfig,
    projection_dim: usize,
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: candle_nn::LayerNorm,
    text_projection: candle_nn::Linear,
}

impl ClipTextTransformer {
    /// Builds the tower from the root view of a `CLIPModel` checkpoint.
    ///
    /// # Errors
    /// [`ModelError`] for a missing or misshapen tensor.
    pub fn new(config: &ClipConfig, root: &WeightsView<'_>) -> Result<Self, ModelError> {
        let c = &config.text_config;
        let vb = root.pp("text_model");
        let emb = vb.pp("embeddings");
        let d = c.hidden_size;
        let token_embedding = emb
            .pp("token_embedding")
            .get("weight", &[c.vocab_size, d])?;
        let position_embedding = emb
            .pp("position_embedding")
            .get("weight", &[c.max_position_embeddings, d])?;
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
            token_embedding,
            position_embedding,
            encoder: Encoder::new(&vb.pp("encoder"), dims)?,
            final_layer_norm: vb.pp("final_layer_norm").layer_norm(d, c.layer_norm_eps)?,
            text_projection: root
                .pp("text_projection")
                .linear_no_bias(d, config.projection_dim)?,
        })
    }

    /// The tower's configuration.
    #[must_use]
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Dimension of the joint space.
    #[must_use]
    pub fn projection_dim(&self) -> usize {
        self.projection_dim
    }

    /// Where transformers pools a sequence: the first token with the
    /// highest id when `eos_token_id == 2` (its legacy rule), else the
    /// first `eos_token_id` (0 when there is none).
    fn pool_index(&self, ids: &[u32]) -> usize {
        if self.config.eos_token_id == 2 {
            let mut best = 0;
            for (i, &id) in ids.iter().enumerate() {
                if id > ids[best] {
                    best = i;
                }
            }
            best
        } else {
            ids.iter()
                .position(|&id| i64::from(id) == self.config.eos_token_id)
                .unwrap_or(0)
        }
    }

    /// Encodes token sequences (from [`crate::model::ClipTokenizer::tokenize`],
    /// each at most `max_position_embeddings` long, not padded) into
    /// projected, not normalised, text embeddings `[B, P]`.
    ///
    /// Sequences are padded with 0 to the longest one only: the attention
    /// is causal, so tokens after the pooled one cannot change it.
    ///
    /// # Errors
    /// [`ModelError::Input`] for an empty batch, a sequence that is empty,
    /// too long or has an id outside the vocabulary; a tensor error.
    pub fn forward(&self, sequences: &[Vec<u32>]) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if sequences.is_empty() || sequences.iter().any(Vec::is_empty) {
            return Err(ModelError::Input("empty token sequence".into()));
        }
        if len > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{len} tokens, the text tower takes at most {}",
                c.max_position_embeddings
            )));
        }
        if let Some(id) = sequences
            .iter()
            .flatten()
            .find(|&&id| id as usize >= c.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {id} outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let b = sequences.len();
        let device = self.token_embedding.device();
        let mut flat = Vec::with_capacity(b * len);
        let mut pooled = Vec::with_capacity(b);
        for (i, s) in sequences.iter().enumerate() {
            flat.extend(super::super::tokenizer::pad(s, len));
            pooled.push(u32::try_from(i * len + self.pool_index(s)).unwrap_or(0));
        }
        let ids = Tensor::from_vec(flat, b * len, device)?;
        let d = c.hidden_size;
        let x = self
            .token_embedding
            .index_select(&ids, 0)?
            .reshape((b, len, d))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, len)?)?;
        let mask = causal_mask(len, device)?.to_dtype(x.dtype())?;
        let x = self.encoder.forward(&x, Some(&mask))?;
        let pooled = Tensor::from_vec(pooled, b, device)?;
        let x = x.reshape((b * len, d))?.index_select(&pooled, 0)?;
        let x = self.final_layer_norm.forward(&x)?;
        Ok(self.text_projection.forward(&x)?)
    }
}

/// Additive causal mask `[n, n]`: 0 on and below the diagonal, the lowest
/// `f32` above (as transformers).
fn causal_mask(n: usize, device: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (n, n), device)?.to_dtype(DType::F32)
}
