//! Strict, memory-mapped safetensors loading.
//!
//! candle's `VarBuilder` can fall back to random initialisation when a key
//! is missing (some of its builders do, and candle-transformers' CLIP draws
//! a random class embedding when the key is absent), so the model is built
//! from [`Weights`] instead: every tensor is fetched by its full key with the
//! shape the model expects, each fetch is recorded, and
//! [`Weights::finish`] fails when the file holds a key that nothing
//! consumed. A missing key, a wrong shape, an unsupported data type, a
//! truncated or corrupt file: each is an error naming the file, the tensor
//! and the expected shape.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::ModelError;

/// How many unexpected keys an error lists.
const LIST_AT_MOST: usize = 5;

/// One safetensors file, memory-mapped, with a record of the keys consumed.
pub struct Weights {
    path: PathBuf,
    /// `None`: random weights for benchmarks ([`Weights::random`]).
    file: Option<MmapedSafetensors>,
    /// Shape and data type of each tensor in the file.
    index: BTreeMap<String, (Vec<usize>, safetensors::Dtype)>,
    used: RefCell<BTreeSet<String>>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("tensors", &self.index.len())
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl Weights {
    /// Memory-maps `path` and reads its header; tensors are converted to
    /// `dtype` on `device` when fetched.
    ///
    /// # Errors
    /// [`ModelError::Io`] when the file cannot be opened,
    /// [`ModelError::Corrupt`] when it is not a complete safetensors file.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        // Open once ourselves first, so that a missing file is an I/O error
        // and not a parse error.
        let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.len() < 8 {
            return Err(ModelError::Corrupt {
                path: path.to_path_buf(),
                message: format!("{} bytes, shorter than a safetensors header", meta.len()),
            });
        }
        let file = mmap(path)?;
        let mut index = BTreeMap::new();
        for (name, view) in file.tensors() {
            index.insert(name, (view.shape().to_vec(), view.dtype()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            index,
            used: RefCell::new(BTreeSet::new()),
            dtype,
            device: device.clone(),
        })
    }

    /// Random weights of any requested shape, for benchmarks: layer-norm
    /// scales are 1, other tensors normal with standard deviation 0.02.
    /// Nothing is checked (there is no file).
    #[must_use]
    pub fn random(dtype: DType, device: &Device) -> Self {
        Self {
            path: PathBuf::from("<random>"),
            file: None,
            index: BTreeMap::new(),
            used: RefCell::new(BTreeSet::new()),
            dtype,
            device: device.clone(),
        }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device tensors are loaded on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The data type tensors are converted to.
    #[must_use]
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the file holds `name`.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.file.is_none() || self.index.contains_key(name)
    }

    /// All keys of the file.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The shape of `name` in the file, if it is there.
    #[must_use]
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(shape, _)| shape.clone())
    }

    /// Fetches `name`, which must have exactly `shape`.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`], [`ModelError::WrongShape`],
    /// [`ModelError::WrongDtype`], or a conversion error.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.get_as(name, shape, self.dtype)
    }

    /// Fetches `name` as `dtype` (for buffers that stay in `f32`).
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, ModelError> {
        let Some(file) = &self.file else {
            let t = if name.contains("norm") && name.ends_with(".weight") {
                Tensor::ones(shape, dtype, &self.device)?
            } else {
                Tensor::randn(0.0_f32, 0.02, shape, &self.device)?.to_dtype(dtype)?
            };
            return Ok(t);
        };
        let Some((found, file_dtype)) = self.index.get(name) else {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
            });
        };
        if found.as_slice() != shape {
            return Err(ModelError::WrongShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        if !matches!(
            file_dtype,
            safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
        ) {
            return Err(ModelError::WrongDtype {
                path: self.path.clone(),
                name: name.to_owned(),
                dtype: format!("{file_dtype:?}"),
            });
        }
        let tensor = file
            .load(name, &self.device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| ModelError::Corrupt {
                path: self.path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })?;
        self.used.borrow_mut().insert(name.to_owned());
        Ok(tensor)
    }

    /// Marks `name` as known and deliberately unused (a buffer such as
    /// transformers' `position_ids`), if the file has it.
    pub fn skip(&self, name: &str) {
        if self.index.contains_key(name) {
            self.used.borrow_mut().insert(name.to_owned());
        }
    }

    /// Marks every key under `prefix` as deliberately unused (a tower that
    /// is not needed), e.g. `text_model.`.
    pub fn skip_prefix(&self, prefix: &str) {
        let mut used = self.used.borrow_mut();
        for name in self.index.keys().filter(|k| k.starts_with(prefix)) {
            used.insert(name.clone());
        }
    }

    /// A view whose keys are prefixed with `prefix.`.
    #[must_use]
    pub fn pp(&self, prefix: &str) -> WeightsView<'_> {
        WeightsView {
            weights: self,
            prefix: prefix.to_owned(),
        }
    }

    /// Checks that every key of the file was consumed or skipped.
    ///
    /// # Errors
    /// [`ModelError::UnexpectedTensors`] listing the first few others.
    pub fn finish(&self) -> Result<(), ModelError> {
        let used = self.used.borrow();
        let unexpected: Vec<&String> = self.index.keys().filter(|k| !used.contains(*k)).collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        Err(ModelError::UnexpectedTensors {
            path: self.path.clone(),
            count: unexpected.len(),
            names: unexpected
                .iter()
                .take(LIST_AT_MOST)
                .map(|s| (*s).clone())
                .collect(),
        })
    }
}

#[allow(unsafe_code)]
fn mmap(path: &Path) -> Result<MmapedSafetensors, ModelError> {
    // SAFETY: the file is mapped read-only and candle copies each tensor out
    // of the mapping when it is loaded. The remaining hazard of any mmap is
    // another process truncating or rewriting the file while it is mapped
    // (undefined behaviour, typically SIGBUS); model files are not written
    // while a model loads, and the mapping is dropped with `Weights`.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A prefixed view of [`Weights`], mirroring the checkpoint's key tree
/// (`vision_model.encoder.layers.0.self_attn.q_proj.weight`).
#[derive(Debug, Clone)]
pub struct WeightsView<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightsView<'a> {
    /// A view one level down.
    #[must_use]
    pub fn pp(&self, name: &str) -> WeightsView<'a> {
        WeightsView {
            weights: self.weights,
            prefix: self.key(name),
        }
    }

    /// The full key of `name` in this view.
    #[must_use]
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Fetches `name` with exactly `shape`.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.weights.get(&self.key(name), shape)
    }

    /// Fetches `name` with exactly `shape`, as `dtype`.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, ModelError> {
        self.weights.get_as(&self.key(name), shape, dtype)
    }

    /// Marks `name` as deliberately unused.
    pub fn skip(&self, name: &str) {
        self.weights.skip(&self.key(name));
    }

    /// The underlying file.
    #[must_use]
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    /// A `Linear` layer `out × in` with bias (`weight`, `bias`).
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn linear(&self, in_dim: usize, out_dim: usize) -> Result<candle_nn::Linear, ModelError> {
        let w = self.get("weight", &[out_dim, in_dim])?;
        let b = self.get("bias", &[out_dim])?;
        Ok(candle_nn::Linear::new(w, Some(b)))
    }

    /// A `Linear` layer without bias.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn linear_no_bias(
        &self,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<candle_nn::Linear, ModelError> {
        let w = self.get("weight", &[out_dim, in_dim])?;
        Ok(candle_nn::Linear::new(w, None))
    }

    /// A `LayerNorm` over `dim` (`weight`, `bias`), computed in `f32`.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn layer_norm(&self, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm, ModelError> {
        let w = self.get("weight", &[dim])?;
        let b = self.get("bias", &[dim])?;
        Ok(candle_nn::LayerNorm::new(w, b, eps))
    }
}

#[cfg(test)]
#[allow(clippy::many_single_char_names)]
mod tests {
    use super::*;

    fn write(dir: &Path, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join("w.safetensors");
        let map: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| ((*k).to_owned(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    #[test]
    fn strict_loading_names_file_tensor_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F16, &dev).unwrap();
        let path = write(dir.path(), &[("x.a", a), ("x.b", b)]);
        let w = Weights::open(&path, DType::F32, &dev).unwrap();

        let e = w.get("x.a", &[3, 2]).unwrap_err().to_string();
        assert!(
            e.contains("x.a") && e.contains("[3, 2]") && e.contains("w.safetensors"),
            "{e}"
        );
        let e = w.pp("x").get("c", &[4]).unwrap_err().to_string();
        assert!(
            e.contains("missing tensor `x.c`") && e.contains("[4]"),
            "{e}"
        );

        let t = w.pp("x").get("b", &[3]).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("1 unexpected") && e.contains("x.a"), "{e}");
        w.skip("x.a");
        w.finish().unwrap();
    }

    #[test]
    fn truncated_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let a = Tensor::zeros((64, 64), DType::F32, &dev).unwrap();
        let path = write(dir.path(), &[("a", a)]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let e = Weights::open(&path, DType::F32, &dev).unwrap_err();
        assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
        std::fs::write(&path, b"not a safetensors file at all").unwrap();
        let e = Weights::open(&path, DType::F32, &dev).unwrap_err();
        assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
        std::fs::write(&path, b"").unwrap();
        assert!(Weights::open(&path, DType::F32, &dev).is_err());
        let e = Weights::open(&dir.path().join("none"), DType::F32, &dev).unwrap_err();
        assert!(matches!(e, ModelError::Io { .. }), "{e}");
    }
}
