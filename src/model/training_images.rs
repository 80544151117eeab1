//! Which images a model was trained on: `training_images.txt` in a model
//! folder, written by `sfam train` — the BLAKE3 of every file of the
//! training split, one per line (64 lowercase hex digits), sorted. Scoring
//! looks each image's content up in it, so that a score on an image the
//! model was trained on is never taken for a test of the model (the same
//! bytes under another name or in another folder are found too; a
//! re-encoded or resized copy is not).
//!
//! The file is optional: a model folder without it (older runs, other
//! tools) simply says nothing about its training images.

use std::collections::HashSet;
use std::path::Path;

use super::ModelError;

/// The file in a model folder.
pub const TRAINING_IMAGES_FILE: &str = "training_images.txt";

/// The first line of the file.
const HEADER: &str =
    "# sfam training images: BLAKE3 of each training-split file's bytes, one per line";

/// A larger file (about 4 million hashes) is refused rather than read
/// into memory whole.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// The content hashes of a model's training images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrainingImages {
    hashes: HashSet<[u8; 32]>,
}

impl TrainingImages {
    /// The set of these BLAKE3 hashes.
    pub fn new(hashes: impl IntoIterator<Item = [u8; 32]>) -> Self {
        Self {
            hashes: hashes.into_iter().collect(),
        }
    }

    /// The hashes of these files' bytes.
    pub fn of_bytes<'a>(files: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self::new(files.into_iter().map(|b| *blake3::hash(b).as_bytes()))
    }

    /// Whether an image with this BLAKE3 hash is one of them.
    #[must_use]
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.hashes.contains(hash)
    }

    /// Whether an image with these bytes is one of them.
    #[must_use]
    pub fn contains_bytes(&self, bytes: &[u8]) -> bool {
        self.contains(blake3::hash(bytes).as_bytes())
    }

    /// How many images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// No image at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The file's text: the header, then the hashes sorted, one per line.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut hex: Vec<String> = self
            .hashes
            .iter()
            .map(|h| blake3::Hash::from_bytes(*h).to_hex().to_string())
            .collect();
        hex.sort_unstable();
        let mut text = String::with_capacity(HEADER.len() + 65 * hex.len() + 1);
        text.push_str(HEADER);
        text.push('\n');
        for h in hex {
            text.push_str(&h);
            text.push('\n');
        }
        text
    }

    /// Parses the file's text (`path` names it in errors). Lines starting
    /// with `#` and blank lines are skipped; every other line must be one
    /// hash.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the file and the first bad line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let mut hashes = HashSet::new();
        for (k, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hash = blake3::Hash::from_hex(line).map_err(|_| ModelError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "line {}: not a BLAKE3 hash (64 hex digits): {:?}",
                    k + 1,
                    line.chars().take(80).collect::<String>()
                ),
            })?;
            hashes.insert(*hash.as_bytes());
        }
        Ok(Self { hashes })
    }

    /// Reads `dir/training_images.txt`; `None` when the folder has no such
    /// file.
    ///
    /// # Errors
    /// [`ModelError::Io`] when it cannot be read, [`ModelError::Config`]
    /// when it is too large, not text or holds a line that is no hash.
    pub fn load(dir: &Path) -> Result<Option<Self>, ModelError> {
        let path = dir.join(TRAINING_IMAGES_FILE);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ModelError::Io { path, source }),
        };
        if len > MAX_FILE_BYTES {
            return Err(ModelError::Config {
                path,
                message: format!("{len} bytes: too large for a list of hashes"),
            });
        }
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ModelError::Config {
            path: path.clone(),
            message: "not UTF-8 text".into(),
        })?;
        Self::parse(&text, &path).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup_by_content() {
        let set = TrainingImages::of_bytes([&b"face one"[..], b"face two", b"face one"]);
        assert_eq!(set.len(), 2);
        assert!(set.contains_bytes(b"face two"));
        assert!(!set.contains_bytes(b"face three"));
        let text = set.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines.len(), 3);
        assert!(lines[1] < lines[2], "sorted");
        assert!(lines[1..].iter().all(|l| l.len() == 64));
        let back = TrainingImages::parse(&text, Path::new("t.txt")).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn files_missing_bad_or_huge_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TrainingImages::load(dir.path()).unwrap(), None);
        let path = dir.path().join(TRAINING_IMAGES_FILE);
        let good = TrainingImages::of_bytes([&b"x"[..]]).to_text();
        std::fs::write(&path, format!("{good}\n\nnot a hash\n")).unwrap();
        let e = TrainingImages::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("line 5") && e.contains("training_images.txt"),
            "{e}"
        );
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        let e = TrainingImages::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        std::fs::write(&path, &good).unwrap();
        let set = TrainingImages::load(dir.path()).unwrap().unwrap();
        assert!(set.contains_bytes(b"x"));
        // A huge file is refused before it is read (a sparse one here).
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let e = TrainingImages::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        // A folder named like the file cannot be read.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(TrainingImages::load(dir.path()).is_err());
    }
}
