//! CLIP configurations: read from a Hugging Face `config.json`
//! (`transformers.CLIPConfig`, missing fields take transformers' defaults),
//! or from presets for the `OpenAI` checkpoints.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;

/// The MLP activation of a transformer block (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`, used by the `OpenAI` CLIP checkpoints.
    QuickGelu,
    /// The exact (erf) GELU.
    Gelu,
}

/// The vision tower (`vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Side of the square input, in pixels.
    pub image_size: usize,
    /// Side of a patch, in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig` defaults.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    #[must_use]
    pub fn grid_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of patches.
    #[must_use]
    pub fn num_patches(&self) -> usize {
        self.grid_side() * self.grid_side()
    }
}

/// The text tower (`text_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Vocabulary size (49408 for CLIP's BPE).
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// End-of-text id. The value 2 is transformers' legacy marker: the
    /// pooled token is then the one with the highest id (CLIP's end token).
    pub eos_token_id: i64,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// A whole CLIP model (`config.json` of `transformers.CLIPModel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: ClipTextConfig,
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Dimension of the joint image-text space.
    pub projection_dim: usize,
    /// Initial value of the log logit scale (the file's `logit_scale` wins).
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self::vit_base_patch16()
    }
}

impl ClipConfig {
    /// `openai/clip-vit-base-patch16`: ViT-B/16 at 224 px, 512-d joint space.
    #[must_use]
    pub fn vit_base_patch16() -> Self {
        Self {
            text_config: ClipTextConfig {
                eos_token_id: 2,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                patch_size: 16,
                ..ClipVisionConfig::default()
            },
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }

    /// `openai/clip-vit-large-patch14`: ViT-L/14 at 224 px, 768-d joint space.
    #[must_use]
    pub fn vit_large_patch14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                eos_token_id: 2,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                patch_size: 14,
                ..ClipVisionConfig::default()
            },
            projection_dim: 768,
            logit_scale_init_value: 2.6592,
        }
    }

    /// Reads a Hugging Face `config.json` and checks it.
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

    /// Checks the dimensions fit together.
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn validate(&self) -> Result<(), String> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let positive = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("projection_dim", self.projection_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text_config.hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_b16_config_parses_with_defaults() {
        // The fields of openai/clip-vit-base-patch16's config.json that matter.
        let json = r#"{"projection_dim": 512, "logit_scale_init_value": 2.6592,
            "text_config": {"hidden_size": 512, "eos_token_id": 2, "hidden_act": "quick_gelu"},
            "vision_config": {"hidden_size": 768, "patch_size": 16, "image_size": 224,
                              "extra_field_is_ignored": true}}"#;
        let cfg: ClipConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, ClipConfig::vit_base_patch16());
        assert_eq!(cfg.vision_config.grid_side(), 14);
        assert_eq!(
            ClipConfig::vit_large_patch14().vision_config.grid_side(),
            16
        );
    }

    #[test]
    fn inconsistent_config_is_refused() {
        let mut cfg = ClipConfig::vit_base_patch16();
        cfg.vision_config.num_attention_heads = 7;
        assert!(cfg.validate().unwrap_err().contains("num_attention_heads"));
        let mut cfg = ClipConfig::vit_base_patch16();
        cfg.vision_config.image_size = 225;
        assert!(cfg.validate().unwrap_err().contains("patch_size"));
    }
}
