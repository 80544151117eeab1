//! `sfam faces`: faces, boxes, scores and landmarks of images, and
//! optionally the aligned 224×224 faces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use comfy_table::{Table, presets};
use rayon::prelude::*;
use serde::Serialize;
use sfam_studio::face::{FaceDetector, FaceOptions, ImageFaces, ImageFacesError};

use super::emit;

/// Arguments of `sfam faces`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image files, or folders searched (recursively, sorted) for images.
    #[arg(value_name = "IMG", required = true)]
    pub images: Vec<PathBuf>,
    /// Print a JSON array, one object per image: path, faces (box, score,
    /// landmarks), precropped, error.
    #[arg(long)]
    pub json: bool,
    /// Write each aligned face (224×224 PNG) into this folder, named
    /// `<image stem>_face<k>.png` (k = 0 for the largest face).
    #[arg(long, value_name = "DIR")]
    pub save_aligned: Option<PathBuf>,
    /// The images are tight face crops (like DFDC's): when no face is
    /// detected, use the whole crop as the face and mark it precropped
    /// instead of reporting "no face found".
    #[arg(long)]
    pub tight_crops: bool,
    /// Write the output to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// One face in the JSON output.
#[derive(Debug, Serialize)]
struct FaceJson {
    #[serde(rename = "box")]
    bbox: [f64; 4],
    score: f64,
    landmarks: [[f64; 2]; 5],
    #[serde(skip_serializing_if = "Option::is_none")]
    aligned: Option<String>,
}

/// One image in the JSON output.
#[derive(Debug, Serialize)]
struct ImageJson {
    path: String,
    faces: Vec<FaceJson>,
    precropped: bool,
    error: Option<String>,
}

/// Rounds to `decimals` places (in `f64`, so the JSON shows short numbers).
fn round(v: f32, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (f64::from(v) * p).round() / p
}

/// File names for the aligned faces of each image: `<stem>_face<k>.png`,
/// or `<stem>-<n>_face<k>.png` when two images share a stem.
fn aligned_stems(paths: &[PathBuf]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stem = p
                .file_stem()
                .map_or_else(|| "image".to_owned(), |s| s.to_string_lossy().into_owned());
            let count = seen.entry(stem.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                stem
            } else {
                format!("{stem}-{i}")
            }
        })
        .collect()
}

fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    use image::ImageEncoder as _;
    sfam_studio::data::atomic::write_atomic(path, |w| {
        image::codecs::png::PngEncoder::new(w)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(std::io::Error::other)
    })
    .with_context(|| format!("cannot write aligned face {}", path.display()))
}

/// Runs `sfam faces`. Exit status 1 when an image could not be read (its
/// entry says why); images without a face are reported, not failed.
pub fn run(args: &Args) -> Result<ExitCode> {
    let detector = FaceDetector::load_default().context("cannot load the face detector")?;
    let options = FaceOptions {
        tight_crops: args.tight_crops,
    };
    let paths = super::photos(&args.images);
    if paths.is_empty() {
        anyhow::bail!("no images found in the given folders");
    }
    let results: Vec<ImageFaces> = paths
        .par_iter()
        .map(|p| detector.faces_in_image(p, options))
        .collect();

    let mut saved: Vec<Vec<Option<String>>> =
        results.iter().map(|r| vec![None; r.faces.len()]).collect();
    if let Some(dir) = &args.save_aligned {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
        let stems = aligned_stems(&paths);
        for ((r, stem), names) in results.iter().zip(&stems).zip(saved.iter_mut()) {
            for (k, (a, name)) in r.aligned.iter().zip(names.iter_mut()).enumerate() {
                let path = dir.join(format!("{stem}_face{k}.png"));
                save_png(&a.image, &path)?;
                *name = Some(path.display().to_string());
            }
        }
    }

    let text = if args.json {
        let json: Vec<ImageJson> = results
            .iter()
            .zip(saved)
            .map(|(r, names)| ImageJson {
                path: r.path.display().to_string(),
                faces: r
                    .faces
                    .iter()
                    .zip(names)
                    .map(|(f, aligned)| FaceJson {
                        bbox: f.bbox.map(|v| round(v, 2)),
                        score: round(f.score, 5),
                        landmarks: f.landmarks.map(|p| p.map(|v| round(v, 2))),
                        aligned,
                    })
                    .collect(),
                precropped: r.precropped,
                error: r.error.as_ref().map(ToString::to_string),
            })
            .collect();
        let mut s = serde_json::to_string_pretty(&json)?;
        s.push('\n');
        s
    } else {
        table(&results)
    };
    emit(&text, args.out.as_deref())?;

    let n_faces: usize = results
        .iter()
        .filter(|r| !r.precropped)
        .map(|r| r.faces.len())
        .sum();
    let no_face = results
        .iter()
        .filter(|r| matches!(r.error, Some(ImageFacesError::NoFace { .. })))
        .count();
    let precropped = results.iter().filter(|r| r.precropped).count();
    let failed: Vec<&ImageFaces> = results
        .iter()
        .filter(|r| {
            matches!(
                r.error,
                Some(ImageFacesError::Image(_) | ImageFacesError::Detect { .. })
            )
        })
        .collect();
    eprintln!(
        "{} image(s): {n_faces} face(s) detected, {no_face} without a face, \
         {precropped} used whole as tight crops, {} unreadable",
        results.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human-readable table: one row per face (or per image without one).
fn table(results: &[ImageFaces]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    t.set_header(["image", "face", "score", "box [x1, y1, x2, y2]", "note"]);
    for r in results {
        let path = r.path.display().to_string();
        if r.faces.is_empty() {
            let note = r.error.as_ref().map_or_else(String::new, |e| match e {
                ImageFacesError::NoFace { .. } => "no face found".to_owned(),
                other => other.to_string(),
            });
            t.add_row([path, "-".into(), "-".into(), "-".into(), note]);
            continue;
        }
        for (k, f) in r.faces.iter().enumerate() {
            let bbox = format!(
                "[{:.1}, {:.1}, {:.1}, {:.1}]",
                f.bbox[0], f.bbox[1], f.bbox[2], f.bbox[3]
            );
            let note = if r.precropped {
                "precropped: whole crop used, no face detected".to_owned()
            } else {
                String::new()
            };
            let score = if r.precropped {
                "-".to_owned()
            } else {
                format!("{:.4}", f.score)
            };
            t.add_row([path.clone(), k.to_string(), score, bbox, note]);
        }
    }
    let mut s = t.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_unique() {
        let paths = [
            PathBuf::from("a/x.jpg"),
            PathBuf::from("b/x.png"),
            PathBuf::from("y.jpg"),
        ];
        assert_eq!(aligned_stems(&paths), ["x", "x-1", "y"]);
    }

    #[test]
    fn rounding_is_short() {
        assert_eq!(
            serde_json::to_string(&round(63.407_43, 2)).unwrap(),
            "63.41"
        );
        assert_eq!(
            serde_json::to_string(&round(0.999_866_4, 5)).unwrap(),
            "0.99987"
        );
    }
}
