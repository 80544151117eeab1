//! Helpers of the tests that run the real `sfam` binary on the tiny model.
// Each test binary uses its own subset of these.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The crate's folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny random-weight CLIP model of `tests/fixtures/model/tiny_l14`.
pub fn tiny() -> PathBuf {
    root().join("tests/fixtures/model/tiny_l14")
}

/// Runs the binary with these arguments, to its end.
pub fn sfam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfam"))
        .args(args)
        .output()
        .unwrap()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the binary and checks that it failed with `needle` in its
/// standard error.
pub fn fails_with(args: &[&str], needle: &str) {
    let o = sfam(args);
    let stderr = text(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded:\n{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
}

/// Runs the binary and checks that it succeeded without a panic; its
/// output.
pub fn succeeds(args: &[&str]) -> Output {
    let o = sfam(args);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    o
}
