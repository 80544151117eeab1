//! Model folders from the Hugging Face hub (cargo feature `hub`).
//!
//! Files are downloaded once into the hub's usual cache
//! (`$HF_HOME/hub`, `~/.cache/huggingface/hub`), with a progress bar, and
//! the snapshot folder is returned: it is then loaded exactly like a local
//! folder. Nothing else in the crate touches the network.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use super::ModelError;
use super::clip::{CONFIG_FILE, WEIGHTS_FILE};
use super::sfam::{HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE};

/// Downloads `files` of model repository `repo` (at `revision`, `main` by
/// default) into the cache and returns the local snapshot folder.
///
/// # Errors
/// [`ModelError::Hub`] naming the repository and file that failed.
pub fn download(repo: &str, revision: Option<&str>, files: &[&str]) -> Result<PathBuf, ModelError> {
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| ModelError::Hub(format!("{repo}: {e}")))?;
    let repo_ref = Repo::with_revision(
        repo.to_owned(),
        RepoType::Model,
        revision.unwrap_or("main").to_owned(),
    );
    let api_repo = api.repo(repo_ref);
    let mut dir = None;
    for file in files {
        let path = api_repo
            .get(file)
            .map_err(|e| ModelError::Hub(format!("{repo}/{file}: {e}")))?;
        dir = path.parent().map(std::path::Path::to_path_buf);
    }
    dir.ok_or_else(|| ModelError::Hub(format!("{repo}: no files requested")))
}

/// Downloads a CLIP model (`config.json`, `model.safetensors`), e.g.
/// `openai/clip-vit-base-patch16`.
///
/// # Errors
/// As [`download`].
pub fn download_clip(repo: &str, revision: Option<&str>) -> Result<PathBuf, ModelError> {
    download(repo, revision, &[CONFIG_FILE, WEIGHTS_FILE])
}

/// Downloads a whole SFAM model folder (CLIP files and the head).
///
/// # Errors
/// As [`download`].
pub fn download_sfam(repo: &str, revision: Option<&str>) -> Result<PathBuf, ModelError> {
    download(
        repo,
        revision,
        &[
            CONFIG_FILE,
            WEIGHTS_FILE,
            HEAD_CONFIG_FILE,
            HEAD_WEIGHTS_FILE,
        ],
    )
}
