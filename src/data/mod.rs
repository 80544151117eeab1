//! Files the user owns: score tables ([`scores`]), dataset folders and
//! manifests ([`datasets`]), and atomic writing ([`atomic`]).

pub mod atomic;
pub mod datasets;
pub mod image;
pub mod scores;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Ground truth of a face: genuine or forged. A score is "higher = more
/// likely fake", so [`Label::Fake`] is the positive class everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// A genuine face (negative class, `0`).
    Real,
    /// A manipulated or synthesised face (positive class, `1`).
    Fake,
}

impl Label {
    /// Parses `real`/`fake` (any case) or `0`/`1`, ignoring surrounding
    /// whitespace. Anything else is `None`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("real") || t == "0" {
            Some(Self::Real)
        } else if t.eq_ignore_ascii_case("fake") || t == "1" {
            Some(Self::Fake)
        } else {
            None
        }
    }

    /// The canonical lowercase name written to score files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Fake => "fake",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Label::from_str`]: the text that is not a label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown label {0:?} (expected real, fake, 0 or 1)")]
pub struct UnknownLabel(pub String);

impl FromStr for Label {
    type Err = UnknownLabel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| UnknownLabel(s.to_owned()))
    }
}

/// File extensions (lowercase) that dataset discovery treats as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"];

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (any case).
#[must_use]
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_in_any_case_and_as_digits() {
        assert_eq!(Label::parse(" REAL "), Some(Label::Real));
        assert_eq!(Label::parse("Fake"), Some(Label::Fake));
        assert_eq!(Label::parse("0"), Some(Label::Real));
        assert_eq!(Label::parse("1"), Some(Label::Fake));
        assert_eq!(Label::parse("2"), None);
        assert_eq!(Label::parse("genuine"), None);
        assert!("x".parse::<Label>().is_err());
    }

    #[test]
    fn image_paths_are_recognised_by_extension() {
        assert!(is_image_path(Path::new("a/b.JPG")));
        assert!(is_image_path(Path::new("a.webp")));
        assert!(!is_image_path(Path::new("a.txt")));
        assert!(!is_image_path(Path::new("jpg")));
    }
}
