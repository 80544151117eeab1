//! Training data: the samples of the dataset roots, the train/validation
//! split by source identity, the CIPLAB region codes, and the aligned faces
//! (computed once by the face pipeline and cached beside the run).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::data::Label;
use crate::data::datasets::{DiscoverOptions, discover};
use crate::face::pipeline::{FaceDetector, FaceOptions};
use crate::face::template::ALIGNED_SIZE;

/// Bumped whenever detection or alignment changes what a cached face is.
pub const FACE_CACHE_VERSION: u32 = 2;

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used to fit the model.
    Train,
    /// Held out, for validation figures and model selection.
    Val,
}

/// Regions a CIPLAB fake's file name says were edited:
/// `{easy,mid,hard}_N_LRNM.jpg`, 1 = edited (left eye, right eye, nose,
/// mouth). Taken as the image's left and right, like the face pipeline's
/// regions (the dataset does not say which convention it uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // one flag per digit of the code
pub struct RegionCode {
    /// Left eye edited.
    pub left_eye: bool,
    /// Right eye edited.
    pub right_eye: bool,
    /// Nose edited.
    pub nose: bool,
    /// Mouth edited.
    pub mouth: bool,
}

impl RegionCode {
    /// Parses the last `_`-separated part of a file stem, exactly four
    /// `0`/`1` digits with at least one `1`.
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Self> {
        let stem = path.file_stem()?.to_str()?;
        let code = stem.rsplit('_').next()?;
        let b = code.as_bytes();
        if b.len() != 4 || !b.iter().all(|c| *c == b'0' || *c == b'1') || !b.contains(&b'1') {
            return None;
        }
        Some(Self {
            left_eye: b[0] == b'1',
            right_eye: b[1] == b'1',
            nose: b[2] == b'1',
            mouth: b[3] == b'1',
        })
    }

    /// The same code seen in a mirror (eyes swap).
    #[must_use]
    pub fn mirrored(self) -> Self {
        Self {
            left_eye: self.right_eye,
            right_eye: self.left_eye,
            ..self
        }
    }
}

/// One training image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Its dataset's name.
    pub dataset: String,
    /// Ground truth.
    pub label: Label,
    /// The source identity the split keeps together (source video, or the
    /// file itself).
    pub group: String,
    /// Train or validation.
    pub split: Split,
    /// Edited regions, for CIPLAB-style fakes.
    pub region_code: Option<RegionCode>,
    /// A fake known to be a face swap (its dataset named in
    /// `TrainOptions::swap_fakes`): the inner face replaced and blended
    /// in along the face outline.
    #[serde(default)]
    pub face_swap: bool,
}

/// Reads `groups.csv` (`label,file,source_video`, or any header with a
/// `file` column and a `source_video` or `group` column) of a dataset
/// folder: file name → group.
fn read_groups(dir: &Path) -> Result<HashMap<String, String>, TrainError> {
    let path = dir.join("groups.csv");
    let mut out = HashMap::new();
    if !path.is_file() {
        return Ok(out);
    }
    let bad = |message: String| TrainError::Data {
        path: path.clone(),
        message,
    };
    let mut reader = csv::Reader::from_path(&path).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(file), Some(group)) = (col("file"), col("source_video").or_else(|| col("group")))
    else {
        return Err(bad(
            "needs a `file` and a `source_video` (or `group`) column".into(),
        ));
    };
    for (line, row) in reader.records().enumerate() {
        let row = row.map_err(|e| bad(format!("line {}: {e}", line + 2)))?;
        if let (Some(f), Some(g)) = (row.get(file), row.get(group)) {
            out.insert(f.trim().to_owned(), g.trim().to_owned());
        }
    }
    Ok(out)
}

/// Discovers the samples of `roots` and splits them: whole groups (source
/// videos from `groups.csv`, else the dataset item's video, else the file)
/// go to validation until `val_fraction` of each dataset's groups is
/// there, in an order shuffled with a fixed seed (the split does not
/// change with the training seed).
///
/// # Errors
/// [`TrainError::Data`] when nothing usable is found or a `groups.csv` is bad.
pub fn collect_samples(roots: &[PathBuf], val_fraction: f64) -> Result<Vec<Sample>, TrainError> {
    let found = discover(roots, &DiscoverOptions::default());
    if let Some(e) = found.errors.first() {
        return Err(TrainError::Data {
            path: roots.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        });
    }
    let mut samples = Vec::new();
    for ds in &found.datasets {
        let groups = read_groups(&ds.source)?;
        let mut items: Vec<Sample> = ds
            .items
            .iter()
            .map(|item| {
                let file = item
                    .path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let group = groups
                    .get(&file)
                    .cloned()
                    .or_else(|| item.video.clone())
                    .unwrap_or_else(|| item.path.display().to_string());
                Sample {
                    region_code: match item.label {
                        Label::Fake => RegionCode::from_path(&item.path),
                        Label::Real => None,
                    },
                    path: item.path.clone(),
                    dataset: ds.name.clone(),
                    label: item.label,
                    group,
                    split: Split::Train,
                    face_swap: false,
                }
            })
            .collect();
        let mut names: Vec<&str> = items
            .iter()
            .map(|s| s.group.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5FA4);
        names.shuffle(&mut rng);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let n_val = ((names.len() as f64) * val_fraction.clamp(0.0, 1.0)).round() as usize;
        let val: BTreeSet<String> = names[..n_val].iter().map(|s| (*s).to_owned()).collect();
        for s in &mut items {
            if val.contains(&s.group) {
                s.split = Split::Val;
            }
        }
        samples.extend(items);
    }
    if samples.is_empty() {
        return Err(TrainError::Data {
            path: roots.first().cloned().unwrap_or_default(),
            message: "no images found (expected <root>/<dataset>/{real,fake}/…)".into(),
        });
    }
    Ok(samples)
}

/// A sample's aligned face.
#[derive(Debug, Clone)]
pub struct PreparedFace {
    /// The aligned face, `ALIGNED_SIZE`².
    pub image: RgbImage,
    /// Its 5 landmarks in the aligned face.
    pub landmarks: [[f32; 2]; 5],
    /// No face was detected; the whole image was used as a tight crop.
    pub precropped: bool,
}

#[derive(Serialize, Deserialize)]
struct CacheIndex {
    version: u32,
    /// (path, file length) of each face, in order; `None` entries failed.
    entries: Vec<(String, u64)>,
    landmarks: Vec<Option<[[f32; 2]; 5]>>,
    precropped: Vec<bool>,
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Aligned faces of `samples` (`None` where the face pipeline found no face
/// or could not read the file; `problems` lists those), from the cache file
/// `cache` when it matches the samples, else computed in parallel and cached.
///
/// # Errors
/// [`TrainError::Cancelled`]; [`TrainError::Io`] when the cache cannot be written.
pub fn prepare_faces(
    samples: &[Sample],
    cache: &Path,
    on_progress: &(dyn Fn(usize, usize) + Sync),
    cancel: &AtomicBool,
) -> Result<(Vec<Option<PreparedFace>>, Vec<String>), TrainError> {
    let entries: Vec<(String, u64)> = samples
        .iter()
        .map(|s| (s.path.display().to_string(), file_len(&s.path)))
        .collect();
    if let Some(faces) = read_cache(cache, &entries) {
        let problems = faces
            .iter()
            .zip(samples)
            .filter(|(f, _)| f.is_none())
            .map(|(_, s)| format!("no face: {}", s.path.display()))
            .collect();
        return Ok((faces, problems));
    }
    let detector = FaceDetector::load_default().map_err(|e| TrainError::Data {
        path: PathBuf::from("models/face"),
        message: e.to_string(),
    })?;
    let done = AtomicUsize::new(0);
    let total = samples.len();
    let results: Vec<Result<PreparedFace, String>> = samples
        .par_iter()
        .map(|s| {
            if cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            let r = detector.faces_in_image(&s.path, FaceOptions { tight_crops: true });
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(64) || n == total {
                on_progress(n, total);
            }
            if let Some(e) = r.error {
                return Err(e.to_string());
            }
            match r.aligned.into_iter().next() {
                Some(a) => Ok(PreparedFace {
                    image: a.image,
                    landmarks: a.landmarks_aligned,
                    precropped: r.precropped,
                }),
                None => Err(format!("no face found: {}", s.path.display())),
            }
        })
        .collect();
    if cancel.load(Ordering::Relaxed) {
        return Err(TrainError::Cancelled);
    }
    let mut problems = Vec::new();
    let faces: Vec<Option<PreparedFace>> = results
        .into_iter()
        .map(|r| r.map_err(|e| problems.push(e)).ok())
        .collect();
    write_cache(cache, &entries, &faces)?;
    Ok((faces, problems))
}

fn read_cache(path: &Path, entries: &[(String, u64)]) -> Option<Vec<Option<PreparedFace>>> {
    let bytes = std::fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let index: CacheIndex = serde_json::from_str(meta.metadata().as_ref()?.get("index")?).ok()?;
    if index.version != FACE_CACHE_VERSION
        || index.entries != entries
        || index.landmarks.len() != entries.len()
        || index.precropped.len() != entries.len()
    {
        return None;
    }
    let pixels = st.tensor("faces").ok()?;
    let side = ALIGNED_SIZE as usize;
    let per = side * side * 3;
    let data = pixels.data();
    let n_ok = index.landmarks.iter().filter(|l| l.is_some()).count();
    if data.len() != n_ok * per {
        return None;
    }
    let mut k = 0;
    let mut out = Vec::with_capacity(entries.len());
    for (lm, pre) in index.landmarks.iter().zip(&index.precropped) {
        match lm {
            Some(l) => {
                let img = RgbImage::from_raw(
                    ALIGNED_SIZE,
                    ALIGNED_SIZE,
                    data[k * per..(k + 1) * per].to_vec(),
                )?;
                k += 1;
                out.push(Some(PreparedFace {
                    image: img,
                    landmarks: *l,
                    precropped: *pre,
                }));
            }
            None => out.push(None),
        }
    }
    Some(out)
}

fn write_cache(
    path: &Path,
    entries: &[(String, u64)],
    faces: &[Option<PreparedFace>],
) -> Result<(), TrainError> {
    let index = CacheIndex {
        version: FACE_CACHE_VERSION,
        entries: entries.to_vec(),
        landmarks: faces
            .iter()
            .map(|f| f.as_ref().map(|f| f.landmarks))
            .collect(),
        precropped: faces
            .iter()
            .map(|f| f.as_ref().is_some_and(|f| f.precropped))
            .collect(),
    };
    let data: Vec<u8> = faces
        .iter()
        .flatten()
        .flat_map(|f| f.image.as_raw().iter().copied())
        .collect();
    let side = ALIGNED_SIZE as usize;
    let n = faces.iter().flatten().count();
    let io = |e: String| TrainError::Io {
        path: path.to_path_buf(),
        message: e,
    };
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![n, side, side, 3], &data)
            .map_err(|e| io(e.to_string()))?;
    let meta = HashMap::from([(
        "index".to_owned(),
        serde_json::to_string(&index).map_err(|e| io(e.to_string()))?,
    )]);
    let bytes =
        safetensors::serialize([("faces", view)], Some(meta)).map_err(|e| io(e.to_string()))?;
    crate::data::atomic::write_atomic(path, |w| w.write_all(&bytes)).map_err(|e| io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciplab_codes_parse() {
        let c = RegionCode::from_path(Path::new("fake/mid_12_1001.jpg")).unwrap();
        assert!(c.left_eye && !c.right_eye && !c.nose && c.mouth);
        assert!(c.mirrored().right_eye);
        assert!(RegionCode::from_path(Path::new("fake/mid_12_101.jpg")).is_none());
        assert!(RegionCode::from_path(Path::new("fake/mid_12_0000.jpg")).is_none());
        assert!(RegionCode::from_path(Path::new("real/real_00012.jpg")).is_none());
    }

    #[test]
    fn split_keeps_groups_together() {
        let dir = tempfile::tempdir().unwrap();
        let ds = dir.path().join("vids");
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
        let mut groups = String::from("label,file,source_video\n");
        for label in ["real", "fake"] {
            std::fs::create_dir_all(ds.join(label)).unwrap();
            for i in 0..20 {
                let f = format!("{label}{i}.png");
                img.save(ds.join(label).join(&f)).unwrap();
                groups.extend([label, ",", &f, ",v", &(i % 5).to_string(), ".mp4\n"]);
            }
        }
        std::fs::write(ds.join("groups.csv"), groups).unwrap();
        let s = collect_samples(&[dir.path().to_path_buf()], 0.2).unwrap();
        assert_eq!(s.len(), 40);
        let val: BTreeSet<&str> = s
            .iter()
            .filter(|s| s.split == Split::Val)
            .map(|s| s.group.as_str())
            .collect();
        let train: BTreeSet<&str> = s
            .iter()
            .filter(|s| s.split == Split::Train)
            .map(|s| s.group.as_str())
            .collect();
        assert_eq!(val.len(), 1);
        assert!(val.is_disjoint(&train));
    }
}
