//! Weight averaging over a run's last fine-tuning epochs (`--average-last
//! K`, after Izmailov et al., "Averaging Weights Leads to Wider Optima and
//! Better Generalization", UAI 2018): each of those epochs leaves its model
//! folder in `snapshots/epoch-NNN/`, and the run's `average/` is their
//! tensor-wise mean.
//!
//! The folders are averaged as written, so the faceres projections are
//! averaged with the feature standardisation folded in; folding is linear
//! in the weights for a fixed standardisation, so this is the folded
//! average of the trained variables. A CLIP checkpoint is averaged too
//! (its last layers may be trained). Frozen tensors are the same in every
//! snapshot and come out unchanged (sums in double precision).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::TrainError;
use crate::model::clip::WEIGHTS_FILE as CLIP_WEIGHTS_FILE;
use crate::model::faceres::BACKBONE_FILE;
use crate::model::sfam::HEAD_WEIGHTS_FILE;

/// Where `--average-last` keeps the model folder of fine-tuning epoch
/// `epoch` (1-based, probe epochs counted).
#[must_use]
pub fn snapshot_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join("snapshots").join(format!("epoch-{epoch:03}"))
}

/// Writes into `out` the model folder whose weight files
/// (`sfam_head.safetensors`, and `faceres.safetensors` or a CLIP
/// `model.safetensors` when present) are the tensor-wise means of those of
/// `dirs` (summed in double precision, stored in the first folder's
/// types); every other file (the head's configuration, CLIP's
/// `config.json`) is copied from the last folder.
///
/// # Errors
/// [`TrainError::Data`] naming the folder or file that is missing or whose
/// tensors differ in name or shape from the first folder's;
/// [`TrainError::Io`] when `out` cannot be written.
pub fn average_model_folders(dirs: &[PathBuf], out: &Path) -> Result<(), TrainError> {
    let Some(last) = dirs.last() else {
        return Err(TrainError::Options("no model folder to average".into()));
    };
    let entries = std::fs::read_dir(last).map_err(|e| TrainError::Data {
        path: last.clone(),
        message: format!("cannot read this model folder ({e})"),
    })?;
    let mut files: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::Data {
            path: last.clone(),
            message: e.to_string(),
        })?;
        if entry.path().is_file() {
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if !files.iter().any(|f| f == HEAD_WEIGHTS_FILE) {
        return Err(TrainError::Data {
            path: last.join(HEAD_WEIGHTS_FILE),
            message: "not a model folder: no head weights".into(),
        });
    }
    files.sort();
    std::fs::create_dir_all(out).map_err(|e| TrainError::Io {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    for name in &files {
        let target = out.join(name);
        if [HEAD_WEIGHTS_FILE, BACKBONE_FILE, CLIP_WEIGHTS_FILE].contains(&name.as_str()) {
            let mean = mean_tensors(dirs, name)?;
            super::net::save_tensors(&target, &mean)?;
        } else {
            let from = last.join(name);
            let bytes = std::fs::read(&from).map_err(|e| TrainError::Io {
                path: from.clone(),
                message: e.to_string(),
            })?;
            super::net::write_file(&target, &bytes)?;
        }
    }
    Ok(())
}

/// The mean of the tensors of file `name` over `dirs`, each in the first
/// folder's type.
fn mean_tensors(dirs: &[PathBuf], name: &str) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut sums: HashMap<String, (Tensor, DType)> = HashMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let path = dir.join(name);
        let bad = |message: String| TrainError::Data {
            path: path.clone(),
            message,
        };
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read these weights ({e})")))?;
        if i > 0 && tensors.len() != sums.len() {
            return Err(bad(format!(
                "{} tensors where the first folder has {}",
                tensors.len(),
                sums.len()
            )));
        }
        for (key, t) in tensors {
            let dtype = t.dtype();
            let t = t.to_dtype(DType::F64).map_err(|e| bad(e.to_string()))?;
            if i == 0 {
                sums.insert(key, (t, dtype));
                continue;
            }
            let Some((sum, _)) = sums.get_mut(&key) else {
                return Err(bad(format!("tensor {key} is not in the first folder")));
            };
            if sum.dims() != t.dims() {
                return Err(bad(format!(
                    "tensor {key} has shape {:?}, the first folder's {:?}",
                    t.dims(),
                    sum.dims()
                )));
            }
            *sum = (&*sum + t).map_err(|e| bad(e.to_string()))?;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let n = dirs.len() as f64;
    sums.into_iter()
        .map(|(k, (s, dtype))| {
            let mean = (s / n)
                .and_then(|m| m.to_dtype(dtype))
                .map_err(|e| TrainError::Data {
                    path: dirs[0].join(name),
                    message: e.to_string(),
                })?;
            Ok((k, mean))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn folder(dir: &Path, head: &[f32], backbone: &[f32], json: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let t = |v: &[f32]| Tensor::from_slice(v, (v.len(),), &Device::Cpu).unwrap();
        let mut h = HashMap::new();
        h.insert("w".to_owned(), t(head));
        super::super::net::save_tensors(&dir.join(HEAD_WEIGHTS_FILE), &h).unwrap();
        let mut b = HashMap::new();
        b.insert("blocks.0".to_owned(), t(backbone));
        let half = t(&[0.1, 0.7]).to_dtype(DType::F16).unwrap();
        b.insert("frozen".to_owned(), half);
        super::super::net::save_tensors(&dir.join(BACKBONE_FILE), &b).unwrap();
        std::fs::write(dir.join("sfam_head.json"), json).unwrap();
    }

    fn read(path: &Path) -> HashMap<String, Vec<f32>> {
        candle_core::safetensors::load(path, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn the_average_is_the_mean_and_frozen_tensors_stay_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("e{i}"))).collect();
        folder(&dirs[0], &[1.0, 2.0], &[0.0, 3.0], "first");
        folder(&dirs[1], &[2.0, 4.0], &[3.0, 3.0], "second");
        folder(&dirs[2], &[6.0, 0.0], &[0.3, 3.0], "third");
        let out = tmp.path().join("avg");
        average_model_folders(&dirs, &out).unwrap();
        assert_eq!(read(&out.join(HEAD_WEIGHTS_FILE))["w"], [3.0, 2.0]);
        let b = read(&out.join(BACKBONE_FILE));
        assert_eq!(b["blocks.0"], [1.1, 3.0]);
        let frozen = candle_core::safetensors::load(out.join(BACKBONE_FILE), &Device::Cpu)
            .unwrap()
            .remove("frozen")
            .unwrap();
        assert_eq!(frozen.dtype(), DType::F16);
        let f16 = |x: f32| half::f16::from_f32(x).to_f32();
        assert_eq!(b["frozen"], [f16(0.1), f16(0.7)]);
        // Everything else comes from the newest folder.
        assert_eq!(
            std::fs::read_to_string(out.join("sfam_head.json")).unwrap(),
            "third"
        );
    }

    #[test]
    fn folders_that_do_not_match_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        folder(&a, &[1.0, 2.0], &[0.0, 3.0], "{}");
        folder(&b, &[1.0, 2.0, 3.0], &[0.0, 3.0], "{}");
        let out = tmp.path().join("avg");
        let e = average_model_folders(&[a.clone(), b.clone()], &out).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("shape") && msg.contains("b/sfam_head"),
            "{msg}"
        );
        let missing = tmp.path().join("gone");
        let e = average_model_folders(&[missing.clone(), a.clone()], &out).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        let e = average_model_folders(&[a, missing], &out).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        assert!(average_model_folders(&[], &out).is_err());
    }
}
