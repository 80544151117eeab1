//! A whole SFAM model: a backbone, the heads, and the region masks of the
//! aligned face, turned into the outputs the user sees.
//!
//! A model folder holds the CLIP model (`config.json`, `model.safetensors`,
//! Hugging Face layout) and the head (`sfam_head.json`,
//! `sfam_head.safetensors`); see `docs/MODEL.md`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use super::clip::{ClipModel, Towers};
use super::faceres::{self, FaceResBackbone};
use super::heads::{HeadOutput, SfamHead};
use super::preprocess::{preprocess_clip, to_tensor};
use super::training_images::TrainingImages;
use super::{Backbone, ModelError, Precision};
use crate::face::align::AlignedFace;
use crate::face::regions::{REGIONS, region_masks};
use crate::face::template::{ALIGNED_SIZE, TEMPLATE_LANDMARKS};

/// The head's hyper-parameters, prompts and regions.
pub const HEAD_CONFIG_FILE: &str = "sfam_head.json";
/// The head's weights.
pub const HEAD_WEIGHTS_FILE: &str = "sfam_head.safetensors";

/// Everything SFAM says about one face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SfamOutput {
    /// Probability that the face is fake, `sigmoid(logit)`.
    pub score: f32,
    /// Final logit = `global_logit + Σ region_contributions`.
    pub logit: f32,
    /// The global token's part of the logit.
    pub global_logit: f32,
    /// The patch grid `[rows, columns]` of the maps and masks.
    pub grid: [usize; 2],
    /// Region names, in the order of every per-region list below.
    pub regions: Vec<String>,
    /// Per-region logits `ℓ_r`.
    pub region_logits: Vec<f32>,
    /// Region attention `β_r` (sums to 1).
    pub region_attention: Vec<f32>,
    /// Each region's part of the logit, `β_r` · `ℓ_r`.
    pub region_contributions: Vec<f32>,
    /// Routing weights used, regions × experts (top-k, each row sums to 1).
    pub routing: Vec<Vec<f32>>,
    /// The router's full softmax, regions × experts.
    pub router_probs: Vec<Vec<f32>>,
    /// Soft region masks over the patch grid, row-major, one per region.
    pub region_masks: Vec<Vec<f32>>,
    /// The prompts' texts; the first describes a genuine face.
    pub prompts: Vec<String>,
    /// One alignment map per prompt over the patch grid, row-major: each
    /// patch's softmax over the prompts.
    pub alignment_maps: Vec<Vec<f32>>,
}

impl SfamOutput {
    /// Splits a batch of head outputs into one record per face.
    ///
    /// # Errors
    /// A tensor error.
    pub fn from_head(
        out: &HeadOutput,
        masks: &Tensor,
        head: &SfamHead,
    ) -> Result<Vec<Self>, ModelError> {
        let c = head.config();
        let f = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let f2 = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec2::<f32>();
        let f3 = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec3::<f32>();
        let score = f(&out.score)?;
        let logit = f(&out.logit)?;
        let global = f(&out.global_logit)?;
        let rl = f2(&out.region_logits)?;
        let ra = f2(&out.region_attention)?;
        let rc = f2(&out.region_contributions)?;
        let routing = f3(&out.routing)?;
        let probs = f3(&out.router_probs)?;
        let maps = f3(&out.alignment_maps)?;
        let masks = if masks.rank() == 2 {
            vec![f2(masks)?; score.len()]
        } else {
            f3(masks)?
        };
        Ok((0..score.len())
            .map(|i| Self {
                score: score[i],
                logit: logit[i],
                global_logit: global[i],
                grid: c.grid,
                regions: c.regions.clone(),
                region_logits: rl[i].clone(),
                region_attention: ra[i].clone(),
                region_contributions: rc[i].clone(),
                routing: routing[i].clone(),
                router_probs: probs[i].clone(),
                region_masks: masks[i].clone(),
                prompts: c.prompts.clone(),
                alignment_maps: maps[i].clone(),
            })
            .collect())
    }
}

/// A backbone with the SFAM heads on top.
pub struct SfamModel {
    backbone: Box<dyn Backbone>,
    head: SfamHead,
    device: Device,
    precision: Precision,
    /// The images it was trained on, when its folder says
    /// ([`super::training_images::TRAINING_IMAGES_FILE`]).
    training_images: Option<Arc<TrainingImages>>,
}

impl std::fmt::Debug for SfamModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfamModel")
            .field("head", self.head.config())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl SfamModel {
    /// Loads a model folder: the head (`sfam_head.*`) and its backbone —
    /// `faceres.safetensors` when present (the bundled default model), else
    /// the CLIP image tower from `config.json` + `model.safetensors` (its
    /// text tower's keys are skipped: the prompt vectors are stored with the
    /// head) — and the list of its training images when the folder has one
    /// ([`super::training_images::TRAINING_IMAGES_FILE`]).
    ///
    /// # Errors
    /// [`ModelError`] naming the file that is missing or wrong, or the
    /// mismatch between backbone and head.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let mut model = Self::load_networks(dir, device)?;
        model.training_images = TrainingImages::load(dir)?.map(Arc::new);
        Ok(model)
    }

    /// The head and backbone of a model folder.
    fn load_networks(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let faceres = dir.join(faceres::BACKBONE_FILE);
        if faceres.is_file() {
            let head = SfamHead::load(
                &dir.join(HEAD_CONFIG_FILE),
                &dir.join(HEAD_WEIGHTS_FILE),
                device,
            )?;
            let backbone = FaceResBackbone::load(&faceres, head.config().dim, device)?;
            return Self::new(Box::new(backbone), head, device).map_err(|e| match e {
                ModelError::Input(message) => ModelError::Config {
                    path: dir.join(HEAD_CONFIG_FILE),
                    message,
                },
                other => other,
            });
        }
        let clip = ClipModel::load(dir, Towers::Vision, device)?;
        let head = SfamHead::load(
            &dir.join(HEAD_CONFIG_FILE),
            &dir.join(HEAD_WEIGHTS_FILE),
            device,
        )?;
        let vision = clip.into_vision().ok_or_else(|| ModelError::Config {
            path: dir.to_path_buf(),
            message: "no image tower".into(),
        })?;
        Self::new(Box::new(vision), head, device).map_err(|e| match e {
            ModelError::Input(message) => ModelError::Config {
                path: dir.join(HEAD_CONFIG_FILE),
                message,
            },
            other => other,
        })
    }

    /// Puts `head` on `backbone`.
    ///
    /// # Errors
    /// [`ModelError::Input`] when the dimensions or grids disagree.
    pub fn new(
        backbone: Box<dyn Backbone>,
        head: SfamHead,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (gh, gw) = backbone.grid();
        let c = head.config();
        if backbone.dim() != c.dim || [gh, gw] != c.grid {
            return Err(ModelError::Input(format!(
                "the head expects dimension {} on a {}×{} grid, the backbone gives {} on {gh}×{gw}",
                c.dim,
                c.grid[0],
                c.grid[1],
                backbone.dim()
            )));
        }
        Ok(Self {
            backbone,
            head,
            device: device.clone(),
            precision: Precision::F32,
            training_images: None,
        })
    }

    /// The images this model was trained on, if its folder lists them.
    #[must_use]
    pub fn training_images(&self) -> Option<&Arc<TrainingImages>> {
        self.training_images.as_ref()
    }

    /// Sets the images this model was trained on.
    pub fn set_training_images(&mut self, images: Option<Arc<TrainingImages>>) {
        self.training_images = images;
    }

    /// Chooses the precision of the backbone's matrix products (bf16 for a
    /// CLIP backbone on a CPU with AVX-512 BF16; faceres stays float32) and
    /// returns the one in use. A new model starts in float32.
    ///
    /// # Errors
    /// [`ModelError`] if the weights cannot be repacked.
    pub fn set_precision(&mut self, precision: Precision) -> Result<Precision, ModelError> {
        self.precision = self.backbone.set_precision(precision)?;
        Ok(self.precision)
    }

    /// The precision in use ([`Self::set_precision`]).
    #[must_use]
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The backbone.
    #[must_use]
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// The heads.
    #[must_use]
    pub fn head(&self) -> &SfamHead {
        &self.head
    }

    /// The heads, to change the prompts.
    pub fn head_mut(&mut self) -> &mut SfamHead {
        &mut self.head
    }

    /// The device the model runs on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Region masks `[R, H·W]` over the patch grid for a face whose 5
    /// landmarks are `landmarks`, in the coordinates of a
    /// `ALIGNED_SIZE × ALIGNED_SIZE` aligned face.
    ///
    /// # Errors
    /// [`ModelError::Input`] when the head's regions are not the face
    /// pipeline's nine regions, in order, or its grid is not square.
    pub fn region_masks(&self, landmarks: &[[f32; 2]; 5]) -> Result<Tensor, ModelError> {
        let c = self.head.config();
        let names: Vec<&str> = REGIONS.iter().map(|r| r.name()).collect();
        if c.regions
            .iter()
            .map(String::as_str)
            .ne(names.iter().copied())
        {
            return Err(ModelError::Input(format!(
                "the head's regions {:?} are not the face pipeline's {names:?}; pass masks explicitly",
                c.regions
            )));
        }
        if c.grid[0] != c.grid[1] {
            return Err(ModelError::Input(
                "region masks need a square patch grid".into(),
            ));
        }
        #[allow(clippy::cast_precision_loss)]
        let size = ALIGNED_SIZE as f32;
        let masks = region_masks(landmarks, size, c.grid[0]);
        let flat: Vec<f32> = masks.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(
            flat,
            (masks.len(), c.num_patches()),
            &self.device,
        )?)
    }

    /// Masks for a face aligned to the template (its landmarks are the
    /// template's).
    ///
    /// # Errors
    /// As [`SfamModel::region_masks`].
    pub fn template_masks(&self) -> Result<Tensor, ModelError> {
        self.region_masks(&TEMPLATE_LANDMARKS)
    }

    /// Preprocesses aligned faces into a `[B, 3, S, S]` tensor.
    ///
    /// # Errors
    /// A tensor error.
    pub fn pixels<'a>(
        &self,
        faces: impl IntoIterator<Item = &'a RgbImage>,
    ) -> Result<Tensor, ModelError> {
        let s = self.backbone.input_size();
        let (mean, std) = self.backbone.normalization();
        let px: Vec<Vec<f32>> = faces
            .into_iter()
            .map(|f| preprocess_clip(f, s, mean, std))
            .collect();
        Ok(to_tensor(&px, s, &self.device)?)
    }

    /// Runs backbone and heads on normalised pixels `[B, 3, S, S]` with
    /// region masks `[B, R, N]` or `[R, N]`.
    ///
    /// # Errors
    /// [`ModelError`] for wrong shapes or a failing computation.
    pub fn forward(&self, pixels: &Tensor, masks: &Tensor) -> Result<Vec<SfamOutput>, ModelError> {
        let tokens = self.backbone.encode(pixels)?;
        let out = self.head.forward(&tokens.global, &tokens.patches, masks)?;
        SfamOutput::from_head(&out, masks, &self.head)
    }

    /// Scores faces already aligned to the template (masks from the
    /// template landmarks).
    ///
    /// # Errors
    /// As [`SfamModel::forward`].
    pub fn inspect_aligned(&self, faces: &[RgbImage]) -> Result<Vec<SfamOutput>, ModelError> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.pixels(faces)?;
        let masks = self.template_masks()?;
        self.forward(&pixels, &masks)
    }

    /// Scores faces from the face pipeline: each face's region masks come
    /// from its own landmarks in the aligned face (the way the bundled
    /// model was trained). The one entry point for scoring detected faces.
    ///
    /// # Errors
    /// As [`SfamModel::forward`].
    pub fn inspect_faces(&self, faces: &[&AlignedFace]) -> Result<Vec<SfamOutput>, ModelError> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.pixels(faces.iter().map(|f| &f.image))?;
        let masks = faces
            .iter()
            .map(|f| self.region_masks(&f.landmarks_aligned))
            .collect::<Result<Vec<_>, _>>()?;
        let masks = Tensor::stack(&masks, 0)?;
        self.forward(&pixels, &masks)
    }
}
