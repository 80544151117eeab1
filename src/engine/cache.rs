//! The score cache: one small file per image content, in a folder per
//! (model, preprocessing) key, so that a rerun — after a crash, or on a
//! dataset that grew — scores only what is new.
//!
//! Layout under the cache root:
//!
//! ```text
//! <root>/<model id, 16 hex>-p<PREPROCESS_VERSION>-<settings, 8 hex>/
//!     KEY.json                    what the key stands for (for people)
//!     <h0 h1>/<content hash>.entry one image
//! ```
//!
//! The content hash is BLAKE3 of the image file's bytes (two files with
//! the same bytes share an entry; a file edited in place gets a new one).
//! The model id is BLAKE3 over the model folder's configuration and weight
//! files ([`ModelId::of_dir`]); "settings" hashes the face detector's tuning
//! and the number of faces scored per image.
//!
//! An entry is one line `sfam-cache 1 <BLAKE3 of the rest, hex>` followed
//! by the [`ImageScore`] as JSON. Entries are written atomically
//! (temporary file, sync, rename), so a killed run leaves whole entries or
//! none; an entry whose checksum or JSON does not hold (a disk fault, a
//! hand edit) is reported as [`Lookup::Corrupt`] and the image is scored
//! again. Only successes are cached: a file that failed is tried again on
//! every run (its error is cheap to find again and may have been fixed).

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{EngineError, ImageScore};
use crate::data::atomic::write_atomic;
use crate::model::sfam::{HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE};

/// First word of every entry file.
const MAGIC: &str = "sfam-cache";
/// Version of the entry file format.
const ENTRY_VERSION: u32 = 1;

/// The files of a model folder that make up its identity, in hashing order.
pub const MODEL_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    crate::model::faceres::BACKBONE_FILE,
    HEAD_CONFIG_FILE,
    HEAD_WEIGHTS_FILE,
];

/// BLAKE3 of an image file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(blake3::Hash);

impl ContentHash {
    /// The hash of `bytes`.
    #[must_use]
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(blake3::hash(bytes))
    }

    /// The hash's 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// 64 lowercase hex digits.
    #[must_use]
    pub fn to_hex(&self) -> String {
        self.0.to_hex().to_string()
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a model is, for the cache: BLAKE3 (64 hex digits) of its files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ModelId(String);

impl ModelId {
    /// Hashes the [`MODEL_FILES`] of a model folder that exist (the head
    /// always; CLIP or faceres weights, whichever it has): each file's name,
    /// length and bytes, streamed (a 600 MB checkpoint is never held in
    /// memory).
    ///
    /// # Errors
    /// [`EngineError::ModelFile`] naming the file that cannot be read.
    pub fn of_dir(dir: &Path) -> Result<Self, EngineError> {
        let mut hasher = blake3::Hasher::new();
        for name in MODEL_FILES {
            let path = dir.join(name);
            // The backbone is CLIP's pair or faceres: whichever is there
            // (a folder without either fails to load before this).
            let head = name == HEAD_CONFIG_FILE || name == HEAD_WEIGHTS_FILE;
            if !head && !path.is_file() {
                continue;
            }
            let err = |source| EngineError::ModelFile {
                path: path.clone(),
                source,
            };
            let mut file = fs::File::open(&path).map_err(err)?;
            let len = file.metadata().map_err(err)?.len();
            hasher.update(name.as_bytes());
            hasher.update(&[0]);
            hasher.update(&len.to_le_bytes());
            let copied = io::copy(&mut file, &mut hasher).map_err(err)?;
            if copied != len {
                return Err(err(io::Error::other(
                    "the file changed while it was being hashed",
                )));
            }
        }
        Ok(Self(hasher.finalize().to_hex().to_string()))
    }

    /// An id for a model that has no folder (built in memory, e.g. random
    /// weights in a benchmark): BLAKE3 of `name`. Two models given the same
    /// name share cache entries, so the name must say what the weights are.
    #[must_use]
    pub fn named(name: &str) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"named model\0");
        hasher.update(name.as_bytes());
        Self(hasher.finalize().to_hex().to_string())
    }

    /// The id of the same model run differently (e.g. `bf16` products):
    /// BLAKE3 of this id and `variant`.
    #[must_use]
    pub fn variant(&self, variant: &str) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"model variant\0");
        hasher.update(self.0.as_bytes());
        hasher.update(&[0]);
        hasher.update(variant.as_bytes());
        Self(hasher.finalize().to_hex().to_string())
    }

    /// The 64 hex digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a cached score depends on besides the image's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheKey {
    /// The model.
    pub model: ModelId,
    /// [`super::PREPROCESS_VERSION`] when the entry was made.
    pub preprocess_version: u32,
    /// The face detector's tuning and the engine's face settings, as text.
    pub settings: String,
}

impl CacheKey {
    /// The key's folder name: `<model, 16 hex>-p<version>-<settings, 8 hex>`.
    #[must_use]
    pub fn folder_name(&self) -> String {
        let settings = blake3::hash(self.settings.as_bytes()).to_hex();
        format!(
            "{}-p{}-{}",
            &self.model.as_str()[..16],
            self.preprocess_version,
            &settings.as_str()[..8]
        )
    }
}

/// What the cache holds for an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A valid entry.
    Hit(ImageScore),
    /// No entry.
    Miss,
    /// An entry that cannot be trusted (why, in words, naming the file):
    /// the image is scored again and the entry replaced.
    Corrupt(String),
}

/// A cache folder for one [`CacheKey`].
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating it when needed) the folder of `key` under `root`,
    /// and writes its `KEY.json` when missing.
    ///
    /// # Errors
    /// [`EngineError::Cache`] naming the folder or file that cannot be
    /// created.
    pub fn open(root: &Path, key: &CacheKey) -> Result<Self, EngineError> {
        let dir = root.join(key.folder_name());
        fs::create_dir_all(&dir).map_err(|source| EngineError::Cache {
            path: dir.clone(),
            source,
        })?;
        let about = dir.join("KEY.json");
        if !about.exists() {
            write_atomic(&about, |w| {
                serde_json::to_writer_pretty(&mut *w, key)?;
                w.write_all(b"\n")
            })
            .map_err(|source| EngineError::Cache {
                path: about.clone(),
                source,
            })?;
        }
        Ok(Self { dir })
    }

    /// The key's folder.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of `hash` lives.
    #[must_use]
    pub fn entry_path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.entry"))
    }

    /// Looks an image up. Never fails: an entry that cannot be read or
    /// checked is [`Lookup::Corrupt`].
    #[must_use]
    pub fn get(&self, hash: &ContentHash) -> Lookup {
        let path = self.entry_path(hash);
        let mut bytes = Vec::new();
        match fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("unreadable ({e}): {}", path.display())),
        }
        match parse_entry(&bytes) {
            Ok(score) => Lookup::Hit(score),
            Err(why) => Lookup::Corrupt(format!("{why}: {}", path.display())),
        }
    }

    /// Stores the score of the image whose content hash is `hash`,
    /// atomically.
    ///
    /// # Errors
    /// Any I/O error creating the folder or writing the file.
    pub fn put(&self, hash: &ContentHash, score: &ImageScore) -> io::Result<()> {
        let path = self.entry_path(hash);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let payload = serde_json::to_vec(score)?;
        let sum = blake3::hash(&payload).to_hex();
        write_atomic(&path, |w| {
            writeln!(w, "{MAGIC} {ENTRY_VERSION} {sum}")?;
            w.write_all(&payload)
        })
    }
}

/// Checks and parses an entry file; the reason in words when it does not
/// hold.
fn parse_entry(bytes: &[u8]) -> Result<ImageScore, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not text")?;
    let payload = &bytes[newline + 1..];
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err("not a cache entry".into());
    }
    if words.next() != Some(&ENTRY_VERSION.to_string()) {
        return Err("unknown entry version".into());
    }
    let sum = words.next().ok_or("no checksum")?;
    if blake3::hash(payload).to_hex().as_str() != sum {
        return Err("checksum mismatch".into());
    }
    let score: ImageScore =
        serde_json::from_slice(payload).map_err(|e| format!("bad JSON ({e})"))?;
    score.check().map_err(str::to_owned)?;
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FaceScore;

    fn sample() -> ImageScore {
        ImageScore {
            score: 0.25,
            size: [224, 224],
            faces_found: 1,
            precropped: false,
            faces: vec![FaceScore {
                bbox: [1.0, 2.0, 100.0, 120.0],
                detector_score: 0.99,
                landmarks: [[10.0, 10.0]; 5],
                score: 0.25,
                logit: -1.0986,
                global_logit: -0.5,
                regions: vec!["nose".into()],
                region_logits: vec![0.1],
                region_attention: vec![1.0],
                region_contributions: vec![0.1],
                routing: vec![vec![0.5, 0.5]],
            }],
        }
    }

    fn key() -> CacheKey {
        CacheKey {
            model: ModelId::named("test"),
            preprocess_version: 1,
            settings: "s".into(),
        }
    }

    #[test]
    fn round_trip_miss_and_corruption() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), &key()).unwrap();
        assert!(cache.dir().join("KEY.json").is_file());
        let h = ContentHash::of_bytes(b"image bytes");
        assert_eq!(cache.get(&h), Lookup::Miss);
        cache.put(&h, &sample()).unwrap();
        assert_eq!(cache.get(&h), Lookup::Hit(sample()));

        // One flipped byte in the payload: checksum mismatch.
        let path = cache.entry_path(&h);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let Lookup::Corrupt(why) = cache.get(&h) else {
            panic!("not corrupt")
        };
        assert!(why.contains("checksum") && why.contains(".entry"), "{why}");

        // Truncated and garbage entries.
        fs::write(&path, b"sfam-cache 1").unwrap();
        assert!(matches!(cache.get(&h), Lookup::Corrupt(_)));
        fs::write(&path, b"").unwrap();
        assert!(matches!(cache.get(&h), Lookup::Corrupt(_)));

        // A valid checksum over JSON that breaks the invariants.
        let mut bad = sample();
        bad.faces.clear();
        let payload = serde_json::to_vec(&bad).unwrap();
        let sum = blake3::hash(&payload).to_hex();
        let mut text = format!("sfam-cache 1 {sum}\n").into_bytes();
        text.extend_from_slice(&payload);
        fs::write(&path, text).unwrap();
        assert!(matches!(cache.get(&h), Lookup::Corrupt(_)));

        // Rewriting repairs it.
        cache.put(&h, &sample()).unwrap();
        assert_eq!(cache.get(&h), Lookup::Hit(sample()));
    }

    #[test]
    fn keys_differ_by_model_version_and_settings() {
        let a = key();
        let mut b = key();
        b.preprocess_version = 2;
        let mut c = key();
        c.settings = "t".into();
        let mut d = key();
        d.model = ModelId::named("other");
        let names: std::collections::HashSet<String> =
            [&a, &b, &c, &d].iter().map(|k| k.folder_name()).collect();
        assert_eq!(names.len(), 4);
        assert!(a.folder_name().starts_with(&a.model.as_str()[..16]));
    }

    #[test]
    fn model_id_hashes_the_files_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in MODEL_FILES {
            fs::write(dir.path().join(name), name).unwrap();
        }
        let a = ModelId::of_dir(dir.path()).unwrap();
        assert_eq!(a, ModelId::of_dir(dir.path()).unwrap());
        fs::write(dir.path().join(HEAD_WEIGHTS_FILE), b"changed").unwrap();
        assert_ne!(a, ModelId::of_dir(dir.path()).unwrap());
        // Backbone files count when present; the head is required.
        let b = ModelId::of_dir(dir.path()).unwrap();
        fs::remove_file(dir.path().join("config.json")).unwrap();
        assert_ne!(b, ModelId::of_dir(dir.path()).unwrap());
        fs::remove_file(dir.path().join(HEAD_CONFIG_FILE)).unwrap();
        let e = ModelId::of_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains(HEAD_CONFIG_FILE), "{e}");
    }
}
