//! The SFAM detector (issue 3): CLIP backbone, text tower, tokenizer,
//! patch-level image-text alignment and facial-region mixture-of-experts
//! heads, strict weight loading, device choice and CLIP preprocessing.
//!
//! Reference: Luo, Chen, Liu, "Rethinking Cross-Domain Evaluation for Face
//! Forgery Detection with Semantic Fine-grained Alignment and
//! Mixture-of-Experts" (arXiv 2604.21478); the heads follow the project's
//! reconstruction in `../shared/docs/SFAM.md`, the model as built is
//! described in `docs/MODEL.md`. The CLIP towers follow Hugging Face
//! `transformers.CLIPModel` (key names of `openai/clip-vit-base-patch16`)
//! and are tested against it (`tests/model_parity.rs`).
//!
//! Layout:
//! - [`config`]: CLIP configurations (`config.json`, presets);
//! - [`weights`]: memory-mapped safetensors with strict key/shape checks;
//! - [`clip`]: the vision and text transformers ([`Backbone`] for CLIP);
//! - [`tokenizer`]: CLIP's BPE tokenizer, bundled (works offline);
//! - [`preprocess`]: the one CLIP image preprocessing function;
//! - [`heads`]: the SFAM heads, backbone-agnostic;
//! - [`sfam`]: a model folder: backbone + head + region masks → outputs;
//! - [`faceres`]: the bundled face-pretrained backbone (MobileNet-style,
//!   converted from TensorFlow.js), channels-last;
//! - [`faceres_ops`]: its layers as CPU custom ops with hand-written
//!   backward passes (training; the epilogue and texture statistics also
//!   when scoring);
//! - [`device`]: `--device cpu|cuda[:N]|metal`;
//! - `hub` (feature `hub`): downloading a model folder from the Hugging Face hub.

pub mod bf16;
pub mod clip;
pub mod config;
pub mod device;
pub mod faceres;
pub mod faceres_ops;
pub mod heads;
#[cfg(feature = "hub")]
pub mod hub;
pub mod preprocess;
pub mod sfam;
pub mod tokenizer;
mod tokenizer_tables;
pub mod training_images;
pub mod weights;

use std::path::PathBuf;

pub use clip::{ClipModel, ClipTextTransformer, ClipVisionTransformer};
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use device::DeviceSpec;
pub use heads::{
    HeadConfig, HeadOutput, SfamHead, TrainedDataset, TrainingData, UNSEEN_KINDS_CAVEAT,
};
pub use preprocess::{CLIP_MEAN, CLIP_STD, preprocess_clip};
pub use sfam::{SfamModel, SfamOutput};
pub use tokenizer::ClipTokenizer;
pub use weights::Weights;

/// What a backbone gives the SFAM heads for a batch of images.
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// The global token of each image, `[B, D]` (CLIP: the projected class token).
    pub global: candle_core::Tensor,
    /// The patch tokens, `[B, H*W, D]`, row-major over the patch grid.
    pub patches: candle_core::Tensor,
}

/// An image encoder the SFAM heads can sit on: images in, a global token
/// and a grid of patch tokens out, all of dimension [`Backbone::dim`].
pub trait Backbone: Send + Sync {
    /// Side of the square input, in pixels (224 for CLIP ViT-B/16).
    fn input_size(&self) -> usize;
    /// The patch grid, `(rows, columns)` (14 × 14 for CLIP ViT-B/16 at 224).
    fn grid(&self) -> (usize, usize);
    /// Dimension of the global and patch tokens.
    fn dim(&self) -> usize;
    /// Per-channel mean and standard deviation the input is normalised with.
    fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        (CLIP_MEAN, CLIP_STD)
    }
    /// Chooses the precision of the matrix products; returns the one in
    /// use (a backbone without a bf16 path stays in float32).
    ///
    /// # Errors
    /// [`ModelError`] if the weights cannot be repacked.
    fn set_precision(&mut self, precision: Precision) -> Result<Precision, ModelError> {
        let _ = precision;
        Ok(Precision::F32)
    }
    /// Encodes normalised pixels `[B, 3, S, S]`.
    ///
    /// # Errors
    /// A tensor error (wrong shape, device failure).
    fn encode(&self, pixels: &candle_core::Tensor) -> candle_core::Result<BackboneOutput>;
}

/// Precision of a backbone's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// bf16 where the CPU has AVX-512 BF16 and the backbone a bf16 path,
    /// else float32.
    #[default]
    Auto,
    /// float32 throughout.
    F32,
    /// bf16 inputs, float32 accumulation (falls back to float32 where not
    /// supported).
    Bf16,
}

impl Precision {
    /// `Auto` made concrete for this CPU.
    #[must_use]
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if bf16::supported() => Self::Bf16,
            Self::Auto => Self::F32,
            other => other,
        }
    }

    /// Lower-case name (`auto`, `f32`, `bf16`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision {other:?}: auto, f32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a model could not be loaded or run. Every variant that concerns a
/// file names it, last.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read ({source}): {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON configuration is malformed or inconsistent.
    #[error("invalid configuration ({message}): {}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file is truncated, corrupt or not safetensors.
    #[error("corrupt or truncated safetensors file ({message}): {}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("missing tensor `{name}` (expected shape {expected:?}): {}", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than the model expects.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}: {}", path.display())]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a data type the loader does not convert.
    #[error("tensor `{name}` has unsupported data type {dtype}: {}", path.display())]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        name: String,
        /// The data type in the file.
        dtype: String,
    },
    /// The file holds tensors the model does not use (a mismatched checkpoint).
    #[error("{count} unexpected tensor(s), e.g. {}: {}", names.join(", "), path.display())]
    UnexpectedTensors {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// The first few keys.
        names: Vec<String>,
    },
    /// The tokenizer could not be built or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An image could not be loaded.
    #[error(transparent)]
    Image(#[from] crate::data::image::ImageError),
    /// The requested device is not available in this build or on this machine.
    #[error("device `{spec}`: {message}")]
    Device {
        /// What was asked for.
        spec: String,
        /// Why it cannot be used.
        message: String,
    },
    /// Invalid input to a model (wrong image count, wrong mask shape …).
    #[error("invalid input: {0}")]
    Input(String),
    /// Downloading from the Hugging Face hub failed.
    #[error("hub: {0}")]
    Hub(String),
    /// A tensor computation failed.
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
}
