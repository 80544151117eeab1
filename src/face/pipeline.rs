//! From a photo or a face crop to aligned faces: [`FaceDetector`] runs
//! MTCNN, orders the faces (largest first), aligns each one to the
//! template, and says per image what happened — faces, "no face found", a
//! tight crop used whole (`precropped`), or an unreadable file.

use std::path::{Path, PathBuf};

use candle_core::Device;
use image::RgbImage;
use serde::Serialize;

use super::align::{self, AlignedFace};
use super::mtcnn::{Mtcnn, MtcnnConfig, Planar};
use crate::data::image::{ImageError, load_rgb};

/// Largest image, in pixels, searched at full resolution (about 6300 ×
/// 6300); see [`FaceDetector::detect`].
pub const MAX_DETECT_PIXELS: u64 = 40_000_000;

/// File name of the MTCNN weights inside a models folder.
pub const WEIGHTS_FILE: &str = "mtcnn.safetensors";

/// The MTCNN weights shipped in `models/face/`, compiled into the crate so
/// that detection works wherever the binary runs.
static BUNDLED_WEIGHTS: &[u8] = include_bytes!("../../models/face/mtcnn.safetensors");

/// Where the 5 landmarks of a face are assumed to lie in a tight face crop
/// when the detector finds no face in it, as fractions of the crop's width
/// and height (pixel centres at `(i + 0.5) / size`).
///
/// They are the mean landmarks of the 4 971 faces MTCNN finds alone in the
/// 5 000 DFDC crops of `../shared/data` (224×224; measured by
/// `tests/face_shared_data.rs`), so a crop used whole is aligned at the
/// scale and position of its detected peers. Such crops are tight: eyes at
/// about 21% of the height, mouth at 76%, the eyes half the width apart,
/// so the forehead and chin of the aligned face fall outside the crop
/// (black).
pub const TIGHT_CROP_LANDMARKS: [[f32; 2]; 5] = [
    [0.276, 0.208],
    [0.778, 0.203],
    [0.523, 0.453],
    [0.321, 0.756],
    [0.736, 0.757],
];

/// Why the face detector could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// The weights file could not be read.
    #[error("cannot read face-detector weights ({source}): {}", path.display())]
    ReadWeights {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The weights are not MTCNN weights in the expected layout.
    #[error("not MTCNN weights ({message}): {}", path.display())]
    BadWeights {
        /// The file (`<bundled>` for the compiled-in weights).
        path: PathBuf,
        /// What candle said.
        message: String,
    },
    /// The networks failed while running (a bug, not a property of the
    /// image).
    #[error("face detection failed ({message})")]
    Run {
        /// What candle said.
        message: String,
    },
}

/// What went wrong for one image, in [`ImageFaces::error`].
#[derive(Debug, thiserror::Error)]
pub enum ImageFacesError {
    /// The detector found no face (and the image was not treated as a tight
    /// crop).
    #[error("no face found: {}", path.display())]
    NoFace {
        /// The image.
        path: PathBuf,
    },
    /// The file could not be read or decoded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Detection itself failed.
    #[error("{source}: {}", path.display())]
    Detect {
        /// The image.
        path: PathBuf,
        /// The detector's error.
        source: FaceError,
    },
}

/// One face in a photo, in the photo's pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Face {
    /// `[x1, y1, x2, y2]` (serialised as `"box"`).
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The detector's face probability; 0 for a tight crop used whole
    /// (nothing was detected).
    pub score: f32,
    /// Left eye, right eye, nose tip, left mouth corner, right mouth corner
    /// (left = the image's left; see [`super::template`]).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// Width × height of the box.
    #[must_use]
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }
}

/// Options of [`FaceDetector::faces_in_image`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaceOptions {
    /// The images are tight face crops (like DFDC's): when no face is
    /// detected, use the whole crop with [`TIGHT_CROP_LANDMARKS`] and flag
    /// it `precropped`. Off: no face is "no face found".
    pub tight_crops: bool,
}

/// Everything the pipeline says about one image.
#[derive(Debug)]
pub struct ImageFaces {
    /// The image, as given.
    pub path: PathBuf,
    /// Its size (upright, after EXIF orientation), when it could be read.
    pub size: Option<(u32, u32)>,
    /// The faces, largest box first; for a precropped image, one stand-in
    /// face covering the crop.
    pub faces: Vec<Face>,
    /// One aligned face per entry of `faces`, same order.
    pub aligned: Vec<AlignedFace>,
    /// No face was detected and the whole image was used as a tight crop.
    pub precropped: bool,
    /// Why there is no face: none found, or the file could not be read.
    pub error: Option<ImageFacesError>,
}

/// MTCNN plus alignment: the face pipeline.
#[derive(Debug, Clone)]
pub struct FaceDetector {
    mtcnn: Mtcnn,
}

impl FaceDetector {
    /// The detector with the bundled weights (those of `models/face/`,
    /// compiled in), on the CPU.
    ///
    /// # Errors
    /// Only if the bundled weights are broken (a build problem).
    pub fn load_default() -> Result<Self, FaceError> {
        Self::from_bytes(BUNDLED_WEIGHTS, Path::new("<bundled>"), &Device::Cpu)
    }

    /// The detector with the weights of a models folder
    /// (`<dir>/mtcnn.safetensors`), on `device`.
    ///
    /// # Errors
    /// When the file cannot be read or is not MTCNN weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, FaceError> {
        let path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|source| FaceError::ReadWeights {
            path: path.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &path, device)
    }

    fn from_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<Self, FaceError> {
        let mtcnn = Mtcnn::from_safetensors(bytes, device).map_err(|e| FaceError::BadWeights {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self { mtcnn })
    }

    /// The detector's tuning (facenet-pytorch's defaults unless changed).
    #[must_use]
    pub fn config(&self) -> MtcnnConfig {
        self.mtcnn.config()
    }

    /// Changes the detector's tuning (minimum face size, thresholds,
    /// pyramid factor).
    #[must_use]
    pub fn with_config(mut self, config: MtcnnConfig) -> Self {
        self.mtcnn.set_config(config);
        self
    }

    /// Every face in the image, largest box first (ties: higher score
    /// first). Empty when there is none.
    ///
    /// Images of more than [`MAX_DETECT_PIXELS`] pixels are searched on a
    /// copy shrunk to that size (triangle filter), the coordinates scaled
    /// back: the one departure from facenet-pytorch, which would need
    /// gigabytes and minutes for them. Faces smaller than about 20 px of the
    /// shrunk copy are then missed.
    ///
    /// # Errors
    /// [`FaceError::Run`] if the networks fail (not expected with valid
    /// weights).
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>, FaceError> {
        let pixels = u64::from(img.width()) * u64::from(img.height());
        let shrunk = pixels > MAX_DETECT_PIXELS;
        let (found, back) = if shrunk {
            #[allow(clippy::cast_precision_loss)]
            let s = (MAX_DETECT_PIXELS as f64 / pixels as f64).sqrt();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (w, h) = (
                ((f64::from(img.width()) * s).floor() as u32).max(1),
                ((f64::from(img.height()) * s).floor() as u32).max(1),
            );
            let small = image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle);
            let found = self.mtcnn.detect(&Planar::from_rgb(&small));
            #[allow(clippy::cast_precision_loss)]
            let back = (
                img.width() as f32 / w as f32,
                img.height() as f32 / h as f32,
            );
            (found, back)
        } else {
            (self.mtcnn.detect(&Planar::from_rgb(img)), (1.0, 1.0))
        };
        let found = found.map_err(|e| FaceError::Run {
            message: e.to_string(),
        })?;
        let (sx, sy) = back;
        // Pixel centres map as (x + ½)·s − ½.
        let fx = |x: f32| (x + 0.5) * sx - 0.5;
        let fy = |y: f32| (y + 0.5) * sy - 0.5;
        let found = found.into_iter().map(|mut d| {
            if shrunk {
                d.bbox = [fx(d.bbox[0]), fy(d.bbox[1]), fx(d.bbox[2]), fy(d.bbox[3])];
                d.landmarks = d.landmarks.map(|[x, y]| [fx(x), fy(y)]);
            }
            d
        });
        let mut faces: Vec<Face> = found
            .into_iter()
            .filter(|d| {
                d.bbox.iter().all(|v| v.is_finite())
                    && d.landmarks.iter().flatten().all(|v| v.is_finite())
            })
            .map(|d| Face {
                bbox: d.bbox,
                score: d.score,
                landmarks: d.landmarks,
            })
            .collect();
        faces.sort_by(|a, b| {
            b.area()
                .total_cmp(&a.area())
                .then(b.score.total_cmp(&a.score))
        });
        Ok(faces)
    }

    /// Aligns a face with these landmarks (image coordinates) to the
    /// 224×224 template; `None` when the landmarks are degenerate.
    #[must_use]
    pub fn align(&self, img: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Option<AlignedFace> {
        align::align(img, landmarks)
    }

    /// The stand-in face of a tight crop used whole: the crop's box and
    /// [`TIGHT_CROP_LANDMARKS`] scaled to it.
    #[must_use]
    pub fn precropped_face(width: u32, height: u32) -> Face {
        #[allow(clippy::cast_precision_loss)]
        let (w, h) = (width as f32, height as f32);
        Face {
            bbox: [0.0, 0.0, w, h],
            score: 0.0,
            landmarks: TIGHT_CROP_LANDMARKS.map(|[x, y]| [x * w - 0.5, y * h - 0.5]),
        }
    }

    /// Faces of an image already in memory: detection, alignment, and the
    /// tight-crop fallback. `path` names the image in the result.
    #[must_use]
    pub fn faces_in_rgb(&self, img: &RgbImage, path: &Path, options: FaceOptions) -> ImageFaces {
        let mut out = ImageFaces {
            path: path.to_path_buf(),
            size: Some(img.dimensions()),
            faces: Vec::new(),
            aligned: Vec::new(),
            precropped: false,
            error: None,
        };
        let detected = match self.detect(img) {
            Ok(f) => f,
            Err(source) => {
                out.error = Some(ImageFacesError::Detect {
                    path: path.to_path_buf(),
                    source,
                });
                return out;
            }
        };
        for face in detected {
            // MTCNN landmarks are never degenerate in practice; a face that
            // cannot be aligned is left out rather than given a made-up
            // crop.
            if let Some(a) = align::align(img, &face.landmarks) {
                out.faces.push(face);
                out.aligned.push(a);
            }
        }
        if out.faces.is_empty() {
            let stand_in = Self::precropped_face(img.width(), img.height());
            match (options.tight_crops, align::align(img, &stand_in.landmarks)) {
                (true, Some(a)) => {
                    out.faces.push(stand_in);
                    out.aligned.push(a);
                    out.precropped = true;
                }
                _ => {
                    out.error = Some(ImageFacesError::NoFace {
                        path: path.to_path_buf(),
                    });
                }
            }
        }
        out
    }

    /// Reads an image (EXIF orientation applied, any colour type) and finds
    /// its faces; see [`Self::faces_in_rgb`]. Never fails as a whole: an
    /// unreadable file or no face is reported in [`ImageFaces::error`].
    #[must_use]
    pub fn faces_in_image(&self, path: &Path, options: FaceOptions) -> ImageFaces {
        match load_rgb(path) {
            Ok(img) => self.faces_in_rgb(&img, path, options),
            Err(e) => ImageFaces {
                path: path.to_path_buf(),
                size: None,
                faces: Vec::new(),
                aligned: Vec::new(),
                precropped: false,
                error: Some(ImageFacesError::Image(e)),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values on purpose
mod tests {
    use super::*;

    #[test]
    fn bundled_weights_load() {
        let d = FaceDetector::load_default().unwrap();
        assert_eq!(d.config(), MtcnnConfig::default());
    }

    #[test]
    fn missing_weights_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = FaceDetector::load(dir.path(), &Device::Cpu).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("mtcnn.safetensors"), "{msg}");
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
        let e = FaceDetector::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(matches!(e, FaceError::BadWeights { .. }), "{e}");
        assert!(e.to_string().contains("mtcnn.safetensors"));
    }

    #[test]
    fn blank_image_has_no_face_unless_tight_crop() {
        let d = FaceDetector::load_default().unwrap();
        let img = RgbImage::from_pixel(120, 120, image::Rgb([90, 90, 90]));
        let r = d.faces_in_rgb(&img, Path::new("blank.png"), FaceOptions::default());
        assert!(r.faces.is_empty() && !r.precropped);
        let msg = r.error.unwrap().to_string();
        assert_eq!(msg, "no face found: blank.png");
        let r = d.faces_in_rgb(
            &img,
            Path::new("blank.png"),
            FaceOptions { tight_crops: true },
        );
        assert!(r.precropped && r.error.is_none());
        assert_eq!(r.faces.len(), 1);
        assert_eq!(r.faces[0].bbox, [0.0, 0.0, 120.0, 120.0]);
        assert_eq!(r.aligned[0].image.dimensions(), (224, 224));
    }

    #[test]
    fn tight_crop_landmarks_are_a_plausible_face() {
        let t = TIGHT_CROP_LANDMARKS;
        assert!(t[0][0] < t[1][0] && t[3][0] < t[4][0]);
        assert!(t[0][1] < t[2][1] && t[2][1] < t[3][1]);
        assert!(t.iter().flatten().all(|v| (0.0..1.0).contains(v)));
    }
}
