//! Dataset discovery: find real and fake face images under folders,
//! manifests and `DeepfakeBench` JSON files.
//!
//! [`discover`] takes one or more roots. Each root is one of:
//!
//! * a folder of datasets, `<root>/<dataset>/<labeldir>/**`: every
//!   subfolder of the root that holds at least one label folder is a
//!   dataset named after that subfolder;
//! * a folder that is itself one dataset, `<root>/<labeldir>/**`, named
//!   after the root folder (this wins when the root holds label folders:
//!   its other subfolders are then not searched for datasets);
//! * a CSV manifest (`.csv`) with the header `path,label[,dataset][,video]`;
//! * a `DeepfakeBench` dataset JSON (`.json`).
//!
//! Label folders are matched case-insensitively: `real`, `original` and
//! `0_real` hold real faces, `fake`, `manipulated` and `1_fake` fake ones
//! (see [`label_for_folder_name`]). A dataset may have only one of the
//! two. An image in a subfolder of its label folder belongs to the video
//! named by that subfolder's path relative to the label folder
//! (`fake/vid001/0001.png` → `vid001`, `fake/a/b/1.png` → `a/b`); files
//! directly in the label folder have no video.
//!
//! Folders are walked recursively, following symbolic links, in file-name
//! order. Nothing stops the walk: a symlink loop, an unreadable folder or
//! any other I/O problem becomes an entry in [`Discovery::errors`] naming
//! the path, and the walk goes on.
//!
//! Manifests: column names in any case and order, extra columns ignored;
//! relative paths are resolved against the manifest's folder; an empty
//! `dataset` cell (or no such column) means the manifest's file stem, an
//! empty `video` cell means none. A bad row (empty path, unknown label) is
//! an error naming the file and line, and the other rows still load. Listed
//! files that do not exist are errors too: the first
//! [`MAX_MISSING_LISTED`] one by one, then one entry with the total.
//!
//! `DeepfakeBench` JSON: `{dataset: {label name: {split: ... {video id:
//! {"label": name, "frames": [path, ...]}}}}}`, any number of levels
//! (such as `c23`) between the split and the videos. A label name maps to
//! real when it contains `real` or `original`, else to fake (see
//! [`label_for_deepfakebench_name`]); the names met are reported in
//! [`Discovery::label_mapping`]. [`DiscoverOptions::split`] keeps one split.
//! Frame paths are resolved against the JSON's folder; missing frames are
//! reported as for manifests. A dataset with no video in the chosen split
//! is left out.
//!
//! **What goes into [`Discovery::skipped`]:** files found *inside label
//! folders* that are not images (by [`is_image_path`]), hidden files (name
//! starting with `.`, such as `.DS_Store` or macOS `._0001.jpg` resource
//! forks, even with an image extension), hidden folders (not descended
//! into) and special files; also files listed in a manifest or a
//! `DeepfakeBench` JSON that exist but are not images. Files outside label
//! folders (a `README.md` next to the datasets, a `groups.csv` at the top
//! of a dataset folder) are neither items nor skipped: they are ignored.
//!
//! **Duplicate names:** dataset names are unique in a [`Discovery`]. When
//! a root yields a dataset whose name an earlier one already has, the later
//! one is renamed `name#2` (the third `name#3`, and so on: the smallest
//! `N ≥ 2` whose `name#N` is free). Both are kept.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};
use serde_json::Value;
use walkdir::WalkDir;

use super::{Label, is_image_path};

/// Folder names (lowercase; matched in any case) that hold real faces.
pub const REAL_FOLDER_NAMES: &[&str] = &["real", "original", "0_real"];

/// Folder names (lowercase; matched in any case) that hold fake faces.
pub const FAKE_FOLDER_NAMES: &[&str] = &["fake", "manipulated", "1_fake"];

/// How many files listed in one manifest or JSON but missing on disk are
/// reported one by one; the total is always reported as well.
pub const MAX_MISSING_LISTED: usize = 20;

/// One face image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetItem {
    /// The image file. Folder datasets: the root joined with the path
    /// below it; manifests and JSON: resolved against the list's folder.
    #[serde(serialize_with = "serialize_path")]
    pub path: PathBuf,
    /// Ground truth.
    pub label: Label,
    /// Source video, for frame-level datasets; `None` when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
}

/// A named set of real and/or fake faces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dataset {
    /// Unique name within a [`Discovery`] (see the module docs for how a
    /// duplicate is renamed).
    pub name: String,
    /// Where the dataset came from: its folder, the manifest or the JSON.
    #[serde(serialize_with = "serialize_path")]
    pub source: PathBuf,
    /// The images, sorted by path.
    pub items: Vec<DatasetItem>,
}

impl Dataset {
    /// Number of images with `label`.
    #[must_use]
    pub fn count(&self, label: Label) -> usize {
        self.items.iter().filter(|i| i.label == label).count()
    }

    /// Number of distinct videos with `label`; an image without a video
    /// counts as a video of its own.
    #[must_use]
    pub fn videos(&self, label: Label) -> usize {
        let mut ids = HashSet::new();
        let mut singles = 0;
        for item in self.items.iter().filter(|i| i.label == label) {
            match &item.video {
                Some(v) => {
                    ids.insert(v.as_str());
                }
                None => singles += 1,
            }
        }
        ids.len() + singles
    }
}

/// Everything [`discover`] found, and what it could not use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Discovery {
    /// Datasets in the order found: roots in the order given, datasets
    /// sorted by name within a root.
    pub datasets: Vec<Dataset>,
    /// Non-image, hidden and special files passed over (see the module
    /// docs for exactly which).
    #[serde(serialize_with = "serialize_paths")]
    pub skipped: Vec<PathBuf>,
    /// Problems with single paths; discovery carried on past each one.
    pub errors: Vec<DiscoveryError>,
    /// `DeepfakeBench` label names and the label each was mapped to, in the
    /// order first met (empty when no JSON was read).
    pub label_mapping: Vec<(String, Label)>,
}

impl Discovery {
    /// The dataset called `name`, if any.
    #[must_use]
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

/// A problem with one path. Discovery records it and goes on. Every
/// variant names the path; manifest rows also name the line. Serialized as
/// its `Display` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A root does not exist.
    #[error("no such file or folder: {}", path.display())]
    NotFound {
        /// The root.
        path: PathBuf,
    },
    /// A root is a file, but neither a `.csv` manifest nor a `.json` file.
    #[error("not a dataset folder, .csv manifest or .json file: {}", path.display())]
    Unsupported {
        /// The root.
        path: PathBuf,
    },
    /// A folder root holds no dataset.
    #[error(
        "no datasets found under {}: expected <root>/<dataset>/{{real,fake}}/ or <root>/{{real,fake}}/",
        path.display()
    )]
    NoDatasets {
        /// The root.
        path: PathBuf,
    },
    /// A manifest or JSON lists no usable image, or a folder of photos
    /// ([`find_images`]) holds none.
    #[error("no images found in: {}", path.display())]
    NoItems {
        /// The manifest, JSON or folder.
        path: PathBuf,
    },
    /// A `DeepfakeBench` JSON has no video in the requested split.
    #[error("no videos in split {split:?}: {}", path.display())]
    NoSplit {
        /// The JSON.
        path: PathBuf,
        /// The split asked for.
        split: String,
    },
    /// Following a symbolic link leads back to a folder being walked.
    #[error("symlink loop: {}", path.display())]
    SymlinkLoop {
        /// The link.
        path: PathBuf,
    },
    /// A file or folder could not be read (permission denied, broken link…).
    #[error("{message}: {}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error, in words.
        message: String,
    },
    /// A manifest row or header, or a JSON file, is malformed.
    #[error("line {line}: {message}: {}", path.display())]
    Parse {
        /// The manifest or JSON.
        path: PathBuf,
        /// 1-based line number (the CSV header is line 1).
        line: u64,
        /// What is wrong, in words.
        message: String,
    },
    /// A `DeepfakeBench` JSON does not have the expected structure.
    #[error("{message}: {}", path.display())]
    Invalid {
        /// The JSON.
        path: PathBuf,
        /// Where (`dataset/label/split/...`) and what is wrong.
        message: String,
    },
    /// A file listed in a manifest or JSON does not exist (only the first
    /// [`MAX_MISSING_LISTED`] per list are reported one by one).
    #[error(
        "{}listed file does not exist ({}): {}",
        line_prefix(*line),
        file.display(),
        list.display()
    )]
    MissingFile {
        /// The manifest or JSON.
        list: PathBuf,
        /// The manifest line; `None` for JSON.
        line: Option<u64>,
        /// The missing file, resolved.
        file: PathBuf,
    },
    /// How many files listed in a manifest or JSON do not exist in all.
    #[error("{count} listed file(s) do not exist: {}", path.display())]
    MissingFiles {
        /// The manifest or JSON.
        path: PathBuf,
        /// Total number of missing files.
        count: usize,
    },
}

impl Serialize for DiscoveryError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Options of [`discover`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// `DeepfakeBench` split to load (`train`, `val`, `test`; any case);
    /// `None` loads all. Folders and manifests ignore it.
    pub split: Option<String>,
}

/// The label a label folder called `name` holds (any case), or `None` when
/// `name` is not a label folder name.
#[must_use]
pub fn label_for_folder_name(name: &str) -> Option<Label> {
    if REAL_FOLDER_NAMES
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
    {
        Some(Label::Real)
    } else if FAKE_FOLDER_NAMES
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
    {
        Some(Label::Fake)
    } else {
        None
    }
}

/// The label a `DeepfakeBench` label name (such as `FF-real` or `FF-DF`)
/// maps to: `real`/`fake`/`0`/`1` as [`Label::parse`] reads them, else real
/// when the name contains `real` or `original` (any case), else fake.
#[must_use]
pub fn label_for_deepfakebench_name(name: &str) -> Label {
    Label::parse(name).unwrap_or_else(|| {
        let lower = name.to_lowercase();
        if lower.contains("real") || lower.contains("original") {
            Label::Real
        } else {
            Label::Fake
        }
    })
}

/// Finds the datasets under `roots` (folders, `.csv` manifests or
/// `DeepfakeBench` `.json` files; see the module docs). Never fails as a
/// whole: a root that cannot be used, and any problem inside one, is
/// recorded in [`Discovery::errors`] and the other roots go on.
#[must_use]
pub fn discover(roots: &[PathBuf], options: &DiscoverOptions) -> Discovery {
    let mut out = Discovery::default();
    let mut taken: HashSet<String> = HashSet::new();
    for root in roots {
        let mut found = discover_root(root, options, &mut out);
        found.sort_by(|a, b| a.name.cmp(&b.name));
        for mut dataset in found {
            dataset.items.sort_by(|a, b| a.path.cmp(&b.path));
            dataset.name = unique_name(&dataset.name, &taken);
            taken.insert(dataset.name.clone());
            out.datasets.push(dataset);
        }
    }
    out
}

/// `name`, or `name#N` with the smallest `N ≥ 2` not in `taken`.
fn unique_name(name: &str, taken: &HashSet<String>) -> String {
    if !taken.contains(name) {
        return name.to_owned();
    }
    let mut n = 2_usize;
    loop {
        let candidate = format!("{name}#{n}");
        if !taken.contains(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

fn discover_root(root: &Path, options: &DiscoverOptions, out: &mut Discovery) -> Vec<Dataset> {
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.errors.push(DiscoveryError::NotFound {
                path: root.to_path_buf(),
            });
            return Vec::new();
        }
        Err(e) => {
            out.errors.push(io_error(root, &e));
            return Vec::new();
        }
    };
    if meta.is_dir() {
        discover_folder(root, out)
    } else if has_extension(root, "csv") {
        read_manifest(root, out)
    } else if has_extension(root, "json") {
        read_deepfakebench(root, options.split.as_deref(), out)
    } else {
        out.errors.push(DiscoveryError::Unsupported {
            path: root.to_path_buf(),
        });
        Vec::new()
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn io_error(path: &Path, error: &io::Error) -> DiscoveryError {
    DiscoveryError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

fn line_prefix(line: Option<u64>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// The name a folder dataset gets: the folder's own name (resolving `.`
/// and `..` through the file system), else the path as given.
fn folder_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            fs::canonicalize(path)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| path.display().to_string())
}

// ---------------------------------------------------------------- folders

/// The entries of `dir`, sorted by file name; `None` (with an error
/// recorded) when `dir` cannot be listed.
fn sorted_children(dir: &Path, out: &mut Discovery) -> Option<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.errors.push(io_error(dir, &e));
            return None;
        }
    };
    let mut children = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => children.push(entry.path()),
            Err(e) => out.errors.push(io_error(dir, &e)),
        }
    }
    children.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Some(children)
}

/// The label folders among `children` (folders, links to folders
/// included), with their labels.
fn label_dirs(children: &[PathBuf]) -> Vec<(PathBuf, Label)> {
    children
        .iter()
        .filter_map(|child| {
            let name = child.file_name()?.to_str()?;
            let label = label_for_folder_name(name)?;
            child.is_dir().then(|| (child.clone(), label))
        })
        .collect()
}

fn discover_folder(root: &Path, out: &mut Discovery) -> Vec<Dataset> {
    let Some(children) = sorted_children(root, out) else {
        return Vec::new();
    };
    let own = label_dirs(&children);
    if !own.is_empty() {
        return vec![load_folder_dataset(folder_name(root), root, &own, out)];
    }
    let mut datasets = Vec::new();
    for child in children.iter().filter(|c| c.is_dir()) {
        let Some(grandchildren) = sorted_children(child, out) else {
            continue;
        };
        let labels = label_dirs(&grandchildren);
        if !labels.is_empty() {
            datasets.push(load_folder_dataset(folder_name(child), child, &labels, out));
        }
    }
    if datasets.is_empty() {
        out.errors.push(DiscoveryError::NoDatasets {
            path: root.to_path_buf(),
        });
    }
    datasets
}

fn load_folder_dataset(
    name: String,
    dir: &Path,
    labels: &[(PathBuf, Label)],
    out: &mut Discovery,
) -> Dataset {
    let mut items = Vec::new();
    for (label_dir, label) in labels {
        walk_label_dir(label_dir, *label, &mut items, out);
    }
    Dataset {
        name,
        source: dir.to_path_buf(),
        items,
    }
}

fn walk_label_dir(
    label_dir: &Path,
    label: Label,
    items: &mut Vec<DatasetItem>,
    out: &mut Discovery,
) {
    walk_images(label_dir, &mut out.skipped, &mut out.errors, |path| {
        items.push(DatasetItem {
            path: path.to_path_buf(),
            label,
            video: video_id(label_dir, path),
        });
    });
}

/// Walks `dir` (following links, in file-name order) and hands every image
/// file to `found`; hidden entries, non-images and special files go to
/// `skipped` (hidden folders are not descended into), walk problems to
/// `errors`.
fn walk_images(
    dir: &Path,
    skipped: &mut Vec<PathBuf>,
    errors: &mut Vec<DiscoveryError>,
    mut found: impl FnMut(&Path),
) {
    let mut walk = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter();
    while let Some(next) = walk.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(walk_error(&e, dir));
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type();
        if kind.is_dir() {
            if is_hidden(path) {
                skipped.push(path.to_path_buf());
                walk.skip_current_dir();
            }
            continue;
        }
        if !kind.is_file() || is_hidden(path) || !is_image_path(path) {
            skipped.push(path.to_path_buf());
            continue;
        }
        found(path);
    }
}

/// What a folder holds, judged from a bounded look at it
/// ([`folder_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// A dataset (it has a label folder) or a folder of datasets (a
    /// subfolder has one).
    Datasets,
    /// Image files, and no label folder among the entries looked at.
    Photos,
    /// Neither was seen (an empty folder, an unreadable one, or only
    /// other files among the entries looked at).
    Unknown,
}

/// How many entries of a folder, and of each subfolder it opens,
/// [`folder_kind`] looks at.
pub const FOLDER_KIND_ENTRIES: usize = 64;

/// How many subfolders [`folder_kind`] opens.
pub const FOLDER_KIND_SUBFOLDERS: usize = 16;

/// Whether `dir` is a dataset layout (`<dir>/{real,fake}/` or
/// `<dir>/<dataset>/{real,fake}/`) or a folder of photos, from at most
/// [`FOLDER_KIND_ENTRIES`] entries of it and of each of the first
/// [`FOLDER_KIND_SUBFOLDERS`] subfolders met among them — quick enough to
/// decide, on the UI thread, where a dropped folder goes without walking
/// it.
#[must_use]
pub fn folder_kind(dir: &Path) -> FolderKind {
    let names = |d: &Path| -> Vec<(PathBuf, bool)> {
        fs::read_dir(d).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .filter_map(Result::ok)
                    .take(FOLDER_KIND_ENTRIES)
                    .map(|e| {
                        let path = e.path();
                        // The entry's own type costs no system call on
                        // most platforms; only a link is followed.
                        let is_dir = match e.file_type() {
                            Ok(t) if t.is_symlink() => path.is_dir(),
                            Ok(t) => t.is_dir(),
                            Err(_) => false,
                        };
                        (path, is_dir)
                    })
                    .collect()
            },
        )
    };
    let is_label_dir = |(p, is_dir): &(PathBuf, bool)| {
        *is_dir
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| label_for_folder_name(n).is_some())
    };
    let top = names(dir);
    if top.iter().any(is_label_dir)
        || top
            .iter()
            .filter(|(p, is_dir)| *is_dir && !is_hidden(p))
            .take(FOLDER_KIND_SUBFOLDERS)
            .any(|(p, _)| names(p).iter().any(is_label_dir))
    {
        return FolderKind::Datasets;
    }
    if top
        .iter()
        .any(|(p, is_dir)| !is_dir && !is_hidden(p) && is_image_path(p))
    {
        FolderKind::Photos
    } else {
        FolderKind::Unknown
    }
}

/// Images without labels — the photos and folders an analyst points the
/// tool at — found by [`find_images`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageList {
    /// The images: inputs in the order given, each folder's images in
    /// file-name order; a file reached twice is listed once.
    pub images: Vec<PathBuf>,
    /// Non-image, hidden and special files passed over inside folders (as
    /// for label folders, see the module docs).
    pub skipped: Vec<PathBuf>,
    /// Inputs that do not exist, folders without an image, walk problems;
    /// each names its path.
    pub errors: Vec<DiscoveryError>,
}

/// The images named by `inputs`: a file is taken as given (whatever its
/// extension: decoding reads the content), a folder is walked like a
/// label folder (recursively, following links, in file-name order, hidden
/// and non-image files skipped). Nothing stops the search: a missing input,
/// an empty folder or an unreadable subfolder is an entry in
/// [`ImageList::errors`] and the other inputs are still searched.
#[must_use]
pub fn find_images(inputs: &[PathBuf]) -> ImageList {
    let mut out = ImageList::default();
    let mut seen = HashSet::new();
    for input in inputs {
        match fs::metadata(input) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                out.errors.push(DiscoveryError::NotFound {
                    path: input.clone(),
                });
            }
            Err(e) => out.errors.push(io_error(input, &e)),
            Ok(meta) if meta.is_dir() => {
                let before = out.images.len();
                let images = &mut out.images;
                walk_images(input, &mut out.skipped, &mut out.errors, |path| {
                    if seen.insert(path.to_path_buf()) {
                        images.push(path.to_path_buf());
                    }
                });
                if out.images.len() == before {
                    out.errors.push(DiscoveryError::NoItems {
                        path: input.clone(),
                    });
                }
            }
            Ok(_) => {
                if seen.insert(input.clone()) {
                    out.images.push(input.clone());
                }
            }
        }
    }
    out
}

fn walk_error(error: &walkdir::Error, fallback: &Path) -> DiscoveryError {
    let path = error.path().unwrap_or(fallback).to_path_buf();
    if error.loop_ancestor().is_some() {
        return DiscoveryError::SymlinkLoop { path };
    }
    let dangling = error
        .io_error()
        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
        && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    let message = if dangling {
        "broken symbolic link".to_owned()
    } else {
        error
            .io_error()
            .map_or_else(|| error.to_string(), ToString::to_string)
    };
    DiscoveryError::Io { path, message }
}

/// The path of `file`'s folder relative to `label_dir`, `/`-separated;
/// `None` for a file directly in `label_dir`.
fn video_id(label_dir: &Path, file: &Path) -> Option<String> {
    let folder = file.strip_prefix(label_dir).ok()?.parent()?;
    let parts: Vec<String> = folder
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

// ------------------------------------------------------- manifests and JSON

/// Counts the listed files that do not exist and reports the first
/// [`MAX_MISSING_LISTED`] of them.
struct MissingFiles {
    list: PathBuf,
    count: usize,
}

impl MissingFiles {
    fn new(list: &Path) -> Self {
        Self {
            list: list.to_path_buf(),
            count: 0,
        }
    }

    fn record(&mut self, line: Option<u64>, file: PathBuf, errors: &mut Vec<DiscoveryError>) {
        self.count += 1;
        if self.count <= MAX_MISSING_LISTED {
            errors.push(DiscoveryError::MissingFile {
                list: self.list.clone(),
                line,
                file,
            });
        }
    }

    fn finish(self, errors: &mut Vec<DiscoveryError>) {
        if self.count > 0 {
            errors.push(DiscoveryError::MissingFiles {
                path: self.list,
                count: self.count,
            });
        }
    }
}

/// `listed` resolved against `base` when relative.
fn resolve(base: &Path, listed: &str) -> PathBuf {
    let path = Path::new(listed);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Files a list names that exist but are not usable images.
fn is_listed_image(path: &Path) -> bool {
    is_image_path(path) && !is_hidden(path)
}

fn csv_error(path: &Path, error: &csv::Error) -> DiscoveryError {
    if let csv::ErrorKind::Io(e) = error.kind() {
        return io_error(path, e);
    }
    DiscoveryError::Parse {
        path: path.to_path_buf(),
        line: error.position().map_or(0, csv::Position::line),
        message: error.to_string(),
    }
}

/// Where the manifest columns are.
struct ManifestColumns {
    path: usize,
    label: usize,
    dataset: Option<usize>,
    video: Option<usize>,
}

impl ManifestColumns {
    /// Finds the columns by name (any case, a UTF-8 byte-order mark
    /// ignored); `None` without a `path` or a `label` column.
    fn find(headers: &csv::StringRecord) -> Option<Self> {
        let column = |name: &str| {
            headers.iter().position(|h| {
                h.trim_start_matches('\u{feff}')
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
        };
        Some(Self {
            path: column("path")?,
            label: column("label")?,
            dataset: column("dataset"),
            video: column("video"),
        })
    }
}

/// One good manifest row.
struct ManifestRow {
    listed: String,
    label: Label,
    dataset: Option<String>,
    video: Option<String>,
}

/// Reads one row, or says what is wrong with it.
fn manifest_row(
    record: &csv::StringRecord,
    columns: &ManifestColumns,
) -> Result<ManifestRow, String> {
    let cell = |col: usize| record.get(col).unwrap_or("");
    let listed = cell(columns.path);
    if listed.is_empty() {
        return Err("empty path".to_owned());
    }
    let label_text = cell(columns.label);
    let Some(label) = Label::parse(label_text) else {
        return Err(if label_text.is_empty() {
            "empty label".to_owned()
        } else {
            format!("unknown label {label_text:?}")
        });
    };
    let optional = |col: Option<usize>| {
        col.map(cell)
            .filter(|text| !text.is_empty())
            .map(ToOwned::to_owned)
    };
    Ok(ManifestRow {
        listed: listed.to_owned(),
        label,
        dataset: optional(columns.dataset),
        video: optional(columns.video),
    })
}

fn read_manifest(manifest: &Path, out: &mut Discovery) -> Vec<Dataset> {
    let bad_line = |line: u64, message: String| DiscoveryError::Parse {
        path: manifest.to_path_buf(),
        line,
        message,
    };
    let mut reader = match csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(manifest)
    {
        Ok(reader) => reader,
        Err(e) => {
            out.errors.push(csv_error(manifest, &e));
            return Vec::new();
        }
    };
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => {
            out.errors.push(csv_error(manifest, &e));
            return Vec::new();
        }
    };
    let Some(columns) = ManifestColumns::find(&headers) else {
        let found = headers.iter().collect::<Vec<_>>().join(",");
        out.errors.push(bad_line(
            1,
            format!("the header needs \"path\" and \"label\" columns, found {found:?}"),
        ));
        return Vec::new();
    };
    let default_name = manifest.file_stem().map_or_else(
        || manifest.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let base = manifest.parent().unwrap_or_else(|| Path::new(""));

    let mut groups: BTreeMap<String, Vec<DatasetItem>> = BTreeMap::new();
    let mut missing = MissingFiles::new(manifest);
    for result in reader.records() {
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                let fatal = matches!(e.kind(), csv::ErrorKind::Io(_));
                out.errors.push(csv_error(manifest, &e));
                if fatal {
                    break;
                }
                continue;
            }
        };
        let line = record.position().map_or(0, csv::Position::line);
        let row = match manifest_row(&record, &columns) {
            Ok(row) => row,
            Err(message) => {
                out.errors.push(bad_line(line, message));
                continue;
            }
        };
        let file = resolve(base, &row.listed);
        if !file.is_file() {
            missing.record(Some(line), file, &mut out.errors);
        } else if !is_listed_image(&file) {
            out.skipped.push(file);
        } else {
            let dataset = row.dataset.unwrap_or_else(|| default_name.clone());
            groups.entry(dataset).or_default().push(DatasetItem {
                path: file,
                label: row.label,
                video: row.video,
            });
        }
    }
    missing.finish(&mut out.errors);

    let datasets: Vec<Dataset> = groups
        .into_iter()
        .map(|(name, items)| Dataset {
            name,
            source: manifest.to_path_buf(),
            items,
        })
        .collect();
    if datasets.is_empty() {
        out.errors.push(DiscoveryError::NoItems {
            path: manifest.to_path_buf(),
        });
    }
    datasets
}

/// State while reading one `DeepfakeBench` JSON.
struct JsonReader<'a> {
    json: &'a Path,
    base: &'a Path,
    missing: MissingFiles,
    mapping: BTreeMap<String, Label>,
}

impl JsonReader<'_> {
    fn invalid(&self, message: String) -> DiscoveryError {
        DiscoveryError::Invalid {
            path: self.json.to_path_buf(),
            message,
        }
    }

    /// Collects the videos at or below `value` (reached by `key`, at
    /// `trail`). Returns how many videos it found.
    fn collect_videos(
        &mut self,
        key: &str,
        value: &Value,
        trail: &str,
        label_key: &str,
        items: &mut Vec<DatasetItem>,
        out: &mut Discovery,
    ) -> usize {
        let Some(object) = value.as_object() else {
            return 0;
        };
        let Some(frames) = object.get("frames") else {
            let mut videos = 0;
            for (child_key, child) in object {
                let child_trail = format!("{trail}/{child_key}");
                videos +=
                    self.collect_videos(child_key, child, &child_trail, label_key, items, out);
            }
            return videos;
        };
        let label_name = object
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or(label_key);
        let label = label_for_deepfakebench_name(label_name);
        self.mapping.insert(label_name.to_owned(), label);
        let Some(frames) = frames.as_array() else {
            out.errors
                .push(self.invalid(format!("{trail}: \"frames\" is not an array")));
            return 1;
        };
        let mut not_text = 0_usize;
        for frame in frames {
            let Some(listed) = frame.as_str() else {
                not_text += 1;
                continue;
            };
            let file = resolve(self.base, listed);
            if !file.is_file() {
                self.missing.record(None, file, &mut out.errors);
            } else if !is_listed_image(&file) {
                out.skipped.push(file);
            } else {
                items.push(DatasetItem {
                    path: file,
                    label,
                    video: Some(key.to_owned()),
                });
            }
        }
        if not_text > 0 {
            out.errors.push(self.invalid(format!(
                "{trail}: {not_text} \"frames\" entries are not strings"
            )));
        }
        1
    }
}

fn read_deepfakebench(json: &Path, split: Option<&str>, out: &mut Discovery) -> Vec<Dataset> {
    let text = match fs::read_to_string(json) {
        Ok(text) => text,
        Err(e) => {
            out.errors.push(io_error(json, &e));
            return Vec::new();
        }
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(e) => {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full
                .strip_suffix(&suffix)
                .map_or_else(|| full.clone(), |m| format!("{m} (column {})", e.column()));
            out.errors.push(DiscoveryError::Parse {
                path: json.to_path_buf(),
                line: u64::try_from(e.line()).unwrap_or(u64::MAX),
                message,
            });
            return Vec::new();
        }
    };
    let mut reader = JsonReader {
        json,
        base: json.parent().unwrap_or_else(|| Path::new("")),
        missing: MissingFiles::new(json),
        mapping: BTreeMap::new(),
    };
    let Some(top) = value.as_object() else {
        out.errors.push(reader.invalid(
            "expected a DeepfakeBench object {\"<dataset>\": {\"<label>\": {\"<split>\": ...}}}"
                .to_owned(),
        ));
        return Vec::new();
    };

    let mut datasets = Vec::new();
    for (name, labels) in top {
        let Some(labels) = labels.as_object() else {
            out.errors
                .push(reader.invalid(format!("{name}: expected an object of labels")));
            continue;
        };
        let mut items = Vec::new();
        let mut videos = 0;
        for (label_key, splits) in labels {
            let Some(splits) = splits.as_object() else {
                out.errors.push(
                    reader.invalid(format!("{name}/{label_key}: expected an object of splits")),
                );
                continue;
            };
            for (split_key, content) in splits {
                if split.is_some_and(|want| !split_key.eq_ignore_ascii_case(want)) {
                    continue;
                }
                let trail = format!("{name}/{label_key}/{split_key}");
                videos +=
                    reader.collect_videos(split_key, content, &trail, label_key, &mut items, out);
            }
        }
        if videos > 0 {
            datasets.push(Dataset {
                name: name.clone(),
                source: json.to_path_buf(),
                items,
            });
        }
    }
    let JsonReader {
        missing, mapping, ..
    } = reader;
    missing.finish(&mut out.errors);
    for (name, label) in mapping {
        if !out.label_mapping.iter().any(|(n, _)| *n == name) {
            out.label_mapping.push((name, label));
        }
    }
    if datasets.is_empty() {
        out.errors.push(match split {
            Some(split) => DiscoveryError::NoSplit {
                path: json.to_path_buf(),
                split: split.to_owned(),
            },
            None => DiscoveryError::NoItems {
                path: json.to_path_buf(),
            },
        });
    }
    datasets
}

// ------------------------------------------------------------ serializing

fn serialize_path<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&path.display())
}

fn serialize_paths<S: Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(paths.iter().map(|p| p.display().to_string()))
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;

    #[test]
    fn label_folder_names_match_in_any_case() {
        for name in ["real", "Real", "ORIGINAL", "0_real", "0_Real"] {
            assert_eq!(label_for_folder_name(name), Some(Label::Real), "{name}");
        }
        for name in ["fake", "Fake", "Manipulated", "1_fake", "1_FAKE"] {
            assert_eq!(label_for_folder_name(name), Some(Label::Fake), "{name}");
        }
        for name in ["reals", "0", "1", "real_0", "train", ""] {
            assert_eq!(label_for_folder_name(name), None, "{name}");
        }
    }

    #[test]
    fn deepfakebench_label_names_map_by_substring() {
        assert_eq!(label_for_deepfakebench_name("FF-real"), Label::Real);
        assert_eq!(label_for_deepfakebench_name("Celeb-REAL"), Label::Real);
        assert_eq!(label_for_deepfakebench_name("DFD_original"), Label::Real);
        assert_eq!(label_for_deepfakebench_name("0"), Label::Real);
        assert_eq!(label_for_deepfakebench_name("FF-DF"), Label::Fake);
        assert_eq!(label_for_deepfakebench_name("Celeb-synthesis"), Label::Fake);
        assert_eq!(label_for_deepfakebench_name("1"), Label::Fake);
    }

    #[test]
    fn duplicate_names_get_the_smallest_free_number() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name("a", &taken), "a");
        taken.insert("a".to_owned());
        assert_eq!(unique_name("a", &taken), "a#2");
        taken.insert("a#2".to_owned());
        assert_eq!(unique_name("a", &taken), "a#3");
        assert_eq!(unique_name("b", &taken), "b");
    }

    #[test]
    fn video_ids_are_folder_paths_below_the_label_folder() {
        let dir = Path::new("/d/fake");
        assert_eq!(video_id(dir, Path::new("/d/fake/1.png")), None);
        assert_eq!(
            video_id(dir, Path::new("/d/fake/v1/1.png")).as_deref(),
            Some("v1")
        );
        assert_eq!(
            video_id(dir, Path::new("/d/fake/a/b/1.png")).as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn videos_count_distinct_ids_and_loose_frames_once_each() {
        let item = |path: &str, label, video: Option<&str>| DatasetItem {
            path: PathBuf::from(path),
            label,
            video: video.map(ToOwned::to_owned),
        };
        let dataset = Dataset {
            name: "d".to_owned(),
            source: PathBuf::from("/d"),
            items: vec![
                item("1", Label::Fake, Some("v1")),
                item("2", Label::Fake, Some("v1")),
                item("3", Label::Fake, Some("v2")),
                item("4", Label::Fake, None),
                item("5", Label::Fake, None),
                item("6", Label::Real, Some("v1")),
            ],
        };
        assert_eq!(dataset.count(Label::Fake), 5);
        assert_eq!(dataset.videos(Label::Fake), 4);
        assert_eq!(dataset.count(Label::Real), 1);
        assert_eq!(dataset.videos(Label::Real), 1);
    }

    #[test]
    fn errors_display_the_path_and_line() {
        let e = DiscoveryError::Parse {
            path: PathBuf::from("/m.csv"),
            line: 4,
            message: "unknown label \"x\"".to_owned(),
        };
        assert_eq!(e.to_string(), "line 4: unknown label \"x\": /m.csv");
        let e = DiscoveryError::SymlinkLoop {
            path: PathBuf::from("/a/b"),
        };
        assert_eq!(e.to_string(), "symlink loop: /a/b");
        let e = DiscoveryError::MissingFile {
            list: PathBuf::from("/m.csv"),
            line: Some(3),
            file: PathBuf::from("/x.jpg"),
        };
        assert_eq!(
            e.to_string(),
            "line 3: listed file does not exist (/x.jpg): /m.csv"
        );
        let e = DiscoveryError::MissingFile {
            list: PathBuf::from("/d.json"),
            line: None,
            file: PathBuf::from("/x.jpg"),
        };
        assert_eq!(
            e.to_string(),
            "listed file does not exist (/x.jpg): /d.json"
        );
        let json = serde_json::to_string(&vec![e]).unwrap_or_default();
        assert_eq!(json, r#"["listed file does not exist (/x.jpg): /d.json"]"#);
    }

    #[test]
    fn many_missing_files_are_capped_but_counted() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let manifest = dir.path().join("m.csv");
        let mut text = String::from("path,label\n");
        for i in 0..25 {
            text.push_str("missing");
            text.push_str(&i.to_string());
            text.push_str(".jpg,fake\n");
        }
        fs::write(&manifest, text)?;
        let found = discover(std::slice::from_ref(&manifest), &DiscoverOptions::default());
        assert!(found.datasets.is_empty());
        let missing = found
            .errors
            .iter()
            .filter(|e| matches!(e, DiscoveryError::MissingFile { .. }))
            .count();
        assert_eq!(missing, MAX_MISSING_LISTED);
        assert!(found.errors.contains(&DiscoveryError::MissingFiles {
            path: manifest.clone(),
            count: 25
        }));
        assert!(
            found
                .errors
                .contains(&DiscoveryError::NoItems { path: manifest })
        );
        assert_eq!(found.errors.len(), MAX_MISSING_LISTED + 2);
        Ok(())
    }
}
