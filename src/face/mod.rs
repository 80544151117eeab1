//! The face pipeline (issue 4): detection, landmarks, alignment,
//! facial-region masks.
//!
//! - [`mtcnn`]: the MTCNN detector (P-Net, R-Net, O-Net) in candle, a
//!   step-by-step port of facenet-pytorch's `detect_face`.
//! - [`template`]: the 224×224 aligned-face template and its 5 landmarks.
//! - [`align`]: similarity transform to the template, bilinear warp, and
//!   the inverse that maps overlays back onto the photo.
//! - [`regions`]: the 9 facial regions of SFAM as soft masks from landmarks.
//! - [`pipeline`]: [`FaceDetector`], from a file or image to ordered,
//!   aligned faces, with "no face found" and the tight-crop fallback.
//!
//! Landmark order everywhere: left eye, right eye, nose tip, left mouth
//! corner, right mouth corner, where "left" is the image's left (the
//! subject's right), as MTCNN and `ArcFace` number them.

pub mod align;
pub mod mtcnn;
pub mod pipeline;
pub mod regions;
pub mod template;

pub use align::AlignedFace;
pub use pipeline::{Face, FaceDetector, FaceError, FaceOptions, ImageFaces, ImageFacesError};
pub use regions::{REGIONS, Region, region_masks};
pub use template::{ALIGNED_SIZE, TEMPLATE_LANDMARKS};
