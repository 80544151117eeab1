//! `sfam embed`: CLIP embeddings of an image (class and patch tokens) or a text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use sfam_studio::data::image::load_rgb;
use sfam_studio::model::clip::{ClipModel, Towers};
use sfam_studio::model::preprocess::{preprocess_clip, to_tensor};
use sfam_studio::model::{CLIP_MEAN, CLIP_STD, ClipTokenizer, DeviceSpec};

use super::emit;

/// Arguments of `sfam embed`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["image", "text"])))]
pub struct Args {
    /// CLIP model folder: `config.json` + `model.safetensors` (Hugging Face
    /// layout, e.g. a download of `openai/clip-vit-base-patch16`). Builds
    /// with the `hub` feature also take `hf://OWNER/NAME[@REVISION]`.
    #[arg(long, value_name = "DIR")]
    pub clip: String,
    /// Image to embed (resized so its shorter side is the input size,
    /// bicubic, centre-cropped, CLIP mean/std).
    #[arg(long, value_name = "IMG")]
    pub image: Option<PathBuf>,
    /// Text to embed (CLIP tokenizer, at most 77 tokens: longer texts are cut).
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// Print JSON: `{"image_embeds": [...], "patch_embeds": [[...], ...]}`
    /// or `{"text_embeds": [...]}`, projected and not normalised, patches
    /// in row-major order.
    #[arg(long)]
    pub json: bool,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceSpec))]
    pub device: DeviceSpec,
    /// Write the output to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// A model folder named on the command line: a local folder, or (feature
/// `hub`) `hf://OWNER/NAME[@REVISION]`, downloaded into the hub cache.
pub fn resolve_model(arg: &str, with_head: bool) -> Result<PathBuf> {
    match arg.strip_prefix("hf://") {
        Some(repo) => download(repo, with_head),
        None => Ok(PathBuf::from(arg)),
    }
}

#[cfg(feature = "hub")]
fn download(repo: &str, with_head: bool) -> Result<PathBuf> {
    let (name, rev) = match repo.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (repo, None),
    };
    let dir = if with_head {
        sfam_studio::model::hub::download_sfam(name, rev)?
    } else {
        sfam_studio::model::hub::download_clip(name, rev)?
    };
    Ok(dir)
}

#[cfg(not(feature = "hub"))]
fn download(repo: &str, _with_head: bool) -> Result<PathBuf> {
    anyhow::bail!("hf://{repo}: this build has no hub support (rebuild with `--features hub`)")
}

/// Runs `sfam embed`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let device = args.device.open()?;
    let dir = resolve_model(&args.clip, false)?;
    let text = if let Some(path) = &args.image {
        embed_image(&dir, path, &device, args.json)?
    } else if let Some(t) = &args.text {
        embed_text(&dir, t, &device, args.json)?
    } else {
        anyhow::bail!("give --image or --text");
    };
    emit(&text, args.out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

fn embed_image(
    dir: &Path,
    path: &Path,
    device: &candle_core::Device,
    json: bool,
) -> Result<String> {
    let clip = ClipModel::load(dir, Towers::Vision, device)?;
    let vision = clip.vision().context("the model has no image tower")?;
    let img = load_rgb(path)?;
    let size = vision.config().image_size;
    let px = to_tensor(
        &[preprocess_clip(&img, size, CLIP_MEAN, CLIP_STD)],
        size,
        device,
    )?;
    let out = vision.forward(&px)?;
    let image_embeds = out.image_embeds.squeeze(0)?.to_vec1::<f32>()?;
    let patch_embeds = out.patch_embeds.squeeze(0)?.to_vec2::<f32>()?;
    if json {
        let mut s = serde_json::to_string(&serde_json::json!({
            "image_embeds": image_embeds,
            "patch_embeds": patch_embeds,
        }))?;
        s.push('\n');
        return Ok(s);
    }
    let mut s = String::new();
    writeln!(s, "image: {}", path.display())?;
    writeln!(
        s,
        "image_embeds: {} values, norm {:.4}",
        image_embeds.len(),
        norm(&image_embeds)
    )?;
    writeln!(
        s,
        "patch_embeds: {} patches ({g}×{g}) × {} values",
        patch_embeds.len(),
        patch_embeds.first().map_or(0, Vec::len),
        g = vision.config().grid_side()
    )?;
    writeln!(s, "(use --json for the values)")?;
    Ok(s)
}

fn embed_text(dir: &Path, text: &str, device: &candle_core::Device, json: bool) -> Result<String> {
    let clip = ClipModel::load(dir, Towers::Text, device)?;
    let tower = clip.text().context("the model has no text tower")?;
    let ids = ClipTokenizer::new()?.tokenize(text)?;
    let emb = tower
        .forward(std::slice::from_ref(&ids))?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    if json {
        let mut s = serde_json::to_string(&serde_json::json!({ "text_embeds": emb }))?;
        s.push('\n');
        return Ok(s);
    }
    let mut s = String::new();
    writeln!(s, "text: {text:?} ({} tokens)", ids.len())?;
    writeln!(
        s,
        "text_embeds: {} values, norm {:.4}",
        emb.len(),
        norm(&emb)
    )?;
    writeln!(s, "(use --json for the values)")?;
    Ok(s)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}
