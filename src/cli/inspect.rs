//! `sfam inspect`: the full SFAM output for each face of an image.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;
use sfam_studio::data::image::load_rgb;
use sfam_studio::face::pipeline::{FaceDetector, FaceOptions};
use sfam_studio::face::template::TEMPLATE_LANDMARKS;
use sfam_studio::model::{DeviceSpec, Precision, SfamModel, SfamOutput, UNSEEN_KINDS_CAVEAT};

use super::emit;

/// Arguments of `sfam inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images of faces, or folders of them (searched recursively).
    #[arg(value_name = "IMG", required = true)]
    pub images: Vec<PathBuf>,
    /// SFAM model folder: `sfam_head.json` + `sfam_head.safetensors` and
    /// the backbone (`faceres.safetensors`, or CLIP's `config.json` +
    /// `model.safetensors`; see docs/MODEL.md). Builds with the `hub`
    /// feature also take `hf://OWNER/NAME[@REVISION]`. Default: the
    /// bundled model, `models/default`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// The images are faces already aligned to the 224×224 template: skip
    /// detection, take each whole image (shorter side resized,
    /// centre-cropped) with the template's landmarks.
    #[arg(long)]
    pub aligned: bool,
    /// Print JSON (every output: score, logit parts, routing, masks, maps, prompts).
    #[arg(long)]
    pub json: bool,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceSpec))]
    pub device: DeviceSpec,
    /// Precision of a CLIP backbone's matrix products: auto (bf16 where the
    /// CPU has AVX-512 BF16), f32, or bf16 (bf16 inputs, float32 sums; the
    /// faceres backbone always runs in float32).
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(Precision))]
    pub precision: Precision,
    /// Write the output to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// How the face was put into the template.
const ALIGNED: &str = "whole image (shorter side resized, centre-cropped), taken as aligned to the template (--aligned)";
const DETECTED: &str = "detected (MTCNN) and aligned to the 224x224 template by its 5 landmarks";
const PRECROPPED: &str = "no face detected: the whole image used as a tight face crop (precropped)";

#[derive(Debug, Serialize)]
struct Face<'a> {
    image: String,
    /// Index of the face in its image (largest first).
    #[serde(rename = "face")]
    index: usize,
    alignment: &'a str,
    /// The face box `[x1, y1, x2, y2]` in the image (after EXIF orientation).
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    bbox: Option<[f32; 4]>,
    /// The 5 landmarks in the aligned 224×224 face.
    landmarks: [[f32; 2]; 5],
    #[serde(flatten)]
    output: SfamOutput,
}

/// Runs `sfam inspect`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let device = args.device.open()?;
    let dir = super::score::model_dir(args.model.as_deref())?;
    let mut model = SfamModel::load(&dir, &device)?;
    model.set_precision(args.precision)?;
    eprintln!(
        "model {}: {}\n  {UNSEEN_KINDS_CAVEAT}",
        dir.display(),
        model.head().config().training_note()
    );
    let detector = FaceDetector::load_default()?;
    let paths = super::photos(&args.images);
    let mut faces = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in &paths {
        if args.aligned {
            let img = match load_rgb(path) {
                Ok(img) => img,
                Err(e) => {
                    eprintln!("{e}");
                    errors.push(e.to_string());
                    continue;
                }
            };
            let out = model.inspect_aligned(std::slice::from_ref(&img))?;
            for (i, output) in out.into_iter().enumerate() {
                faces.push(Face {
                    image: path.display().to_string(),
                    index: i,
                    alignment: ALIGNED,
                    bbox: None,
                    landmarks: TEMPLATE_LANDMARKS,
                    output,
                });
            }
            continue;
        }
        let found = detector.faces_in_image(path, FaceOptions { tight_crops: true });
        if let Some(e) = found.error {
            eprintln!("{e}");
            errors.push(e.to_string());
            continue;
        }
        let aligned: Vec<_> = found.aligned.iter().collect();
        let out = model.inspect_faces(&aligned)?;
        for (i, ((output, a), f)) in out
            .into_iter()
            .zip(&found.aligned)
            .zip(&found.faces)
            .enumerate()
        {
            faces.push(Face {
                image: path.display().to_string(),
                index: i,
                alignment: if found.precropped {
                    PRECROPPED
                } else {
                    DETECTED
                },
                bbox: Some(f.bbox),
                landmarks: a.landmarks_aligned,
                output,
            });
        }
    }
    if faces.is_empty() {
        anyhow::bail!(
            "no face could be inspected ({} image(s) failed)",
            errors.len()
        );
    }
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&serde_json::json!({
            "model": dir.display().to_string(),
            "model_training": model.head().config().training,
            "faces": faces,
            "errors": errors,
        }))?;
        s.push('\n');
        s
    } else {
        table(&faces)?
    };
    emit(&text, args.out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

fn table(faces: &[Face<'_>]) -> Result<String> {
    let mut s = String::new();
    for f in faces {
        let o = &f.output;
        writeln!(
            s,
            "{} (face {}, {}): score {:.4}  logit {:+.4} = global {:+.4} + regions {:+.4}",
            f.image,
            f.index,
            f.alignment,
            o.score,
            o.logit,
            o.global_logit,
            o.logit - o.global_logit
        )?;
        writeln!(
            s,
            "  {:<14} {:>8} {:>8} {:>9}  experts (weight)",
            "region", "logit", "attn", "part"
        )?;
        for (r, name) in o.regions.iter().enumerate() {
            let experts: Vec<String> = o.routing[r]
                .iter()
                .enumerate()
                .filter(|(_, g)| **g > 0.0)
                .map(|(e, g)| format!("{e} ({g:.2})"))
                .collect();
            writeln!(
                s,
                "  {:<14} {:>+8.4} {:>8.4} {:>+9.4}  {}",
                name,
                o.region_logits[r],
                o.region_attention[r],
                o.region_contributions[r],
                experts.join(", ")
            )?;
        }
        writeln!(
            s,
            "  alignment: share of patches whose most likely prompt is …"
        )?;
        let n = o.alignment_maps.first().map_or(0, Vec::len);
        for (k, prompt) in o.prompts.iter().enumerate() {
            let wins = (0..n)
                .filter(|&i| {
                    let v = o.alignment_maps[k][i];
                    o.alignment_maps.iter().all(|m| m[i] <= v)
                })
                .count();
            writeln!(s, "    {wins:>4}/{n}  {prompt}")?;
        }
    }
    s.push_str("(use --json for every value)\n");
    Ok(s)
}
