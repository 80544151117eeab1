//! Image decoding with limits: a file a user points at either becomes an
//! RGB image the right way up, or a clear error naming it.
//!
//! Limits are on by default (a PNG whose header claims 100000×100000
//! pixels is refused before any allocation), the format is sniffed from
//! the content (a `.jpg` that is really a PNG still decodes), and the EXIF
//! orientation of camera photos is applied. Grayscale, 16-bit, CMYK and
//! alpha images are converted to 8-bit RGB.

use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted decoding allocation, in bytes.
pub const MAX_ALLOC_BYTES: u64 = 1 << 30;

/// Why an image could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error("cannot read image ({source}): {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The content is not an image format this build decodes.
    #[error("not a supported image ({message}): {}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The image is larger than the decoding limits.
    #[error("image too large ({message}; limit {MAX_SIDE}×{MAX_SIDE} pixels): {}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The data is corrupt or truncated.
    #[error("corrupt or truncated image ({message}): {}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
}

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_ALLOC_BYTES);
    l
}

fn classify(path: &Path, e: image::ImageError) -> ImageError {
    let path = path.to_path_buf();
    let message = e.to_string();
    match e {
        image::ImageError::IoError(source) => ImageError::Io { path, source },
        image::ImageError::Limits(_) => ImageError::TooLarge { path, message },
        image::ImageError::Unsupported(_) => ImageError::Unsupported { path, message },
        _ => ImageError::Decode { path, message },
    }
}

/// Decodes an image from memory; `path` names it in errors.
///
/// # Errors
/// [`ImageError`] when the bytes are not a supported image, exceed the
/// limits, or are corrupt.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    let mut reader = ImageReader::new(BufReader::new(Cursor::new(bytes)));
    reader.limits(limits());
    let reader = reader
        .with_guessed_format()
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match reader.format() {
        None => {
            return Err(ImageError::Unsupported {
                path: path.to_path_buf(),
                message: "unknown format".into(),
            });
        }
        // The JPEG decoder renders a cut file as grey below the cut
        // without an error; refuse it instead.
        Some(image::ImageFormat::Jpeg) if jpeg_is_truncated(bytes) => {
            return Err(ImageError::Decode {
                path: path.to_path_buf(),
                message: "truncated JPEG: the data ends before the end-of-image marker".into(),
            });
        }
        Some(_) => {}
    }
    let mut decoder = reader.into_decoder().map_err(|e| classify(path, e))?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify(path, e))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

/// Whether JPEG data ends before its end-of-image marker. Follows the
/// file's structure — segments by their lengths (so an EXIF thumbnail's own
/// markers are skipped), entropy-coded data to the next marker that is
/// neither byte stuffing nor a restart — and stops at the first
/// end-of-image marker, so data appended after it does not matter.
fn jpeg_is_truncated(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // Segment level: find the next marker (decoders skip stray bytes).
        let Some(p) = b
            .get(i..)
            .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
        else {
            return true;
        };
        let Some(q) = b[i + p..].iter().position(|&x| x != 0xFF) else {
            return true;
        };
        let at = i + p + q; // the marker code
        i = at + 1;
        match b[at] {
            0xD9 => return false,
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            code => {
                let Some(len) = b
                    .get(i..i + 2)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                else {
                    return true;
                };
                if len < 2 || i + len > b.len() {
                    return true;
                }
                i += len;
                if code == 0xDA {
                    // Entropy-coded data: up to a marker other than a
                    // stuffed 0xFF00 or a restart marker.
                    loop {
                        let Some(p) = b[i..].iter().position(|&x| x == 0xFF) else {
                            return true;
                        };
                        let Some(q) = b[i + p..].iter().position(|&x| x != 0xFF) else {
                            return true;
                        };
                        let next = i + p + q;
                        if b[next] == 0x00 || (0xD0..=0xD7).contains(&b[next]) {
                            i = next + 1;
                        } else {
                            i = next - 1; // the 0xFF before the marker
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Reads an image file's bytes, refusing an empty file (for callers that
/// need the bytes themselves, e.g. to hash them, before [`decode_rgb`]).
///
/// # Errors
/// [`ImageError::Io`] when the file cannot be read, [`ImageError::Decode`]
/// when it is empty; both name the file.
pub fn read_image_bytes(path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: "empty file".into(),
        });
    }
    Ok(bytes)
}

/// Reads and decodes an image file (see the module docs).
///
/// # Errors
/// [`ImageError`] naming the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    decode_rgb(&read_image_bytes(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgb};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_and_gray_and_sniffs_content() {
        let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 3, Rgb([10, 20, 30])));
        let png = encode(&rgb, ImageFormat::Png);
        // Named .jpg, but PNG inside: decoded by content.
        let img = decode_rgb(&png, Path::new("x.jpg")).unwrap();
        assert_eq!((img.width(), img.height()), (4, 3));
        assert_eq!(img.get_pixel(0, 0), &Rgb([10, 20, 30]));
        let gray = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(2, 2, Luma([77])));
        let img = decode_rgb(&encode(&gray, ImageFormat::Png), Path::new("g.png")).unwrap();
        assert_eq!(img.get_pixel(1, 1), &Rgb([77, 77, 77]));
    }

    #[test]
    fn bad_bytes_give_errors_naming_the_file() {
        let e = decode_rgb(b"hello, not an image", Path::new("note.jpg")).unwrap_err();
        assert!(matches!(e, ImageError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("note.jpg"));
        let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(64, 64, Rgb([1, 2, 3])));
        let jpg = encode(&rgb, ImageFormat::Jpeg);
        let e = decode_rgb(&jpg[..jpg.len() / 3], Path::new("cut.jpg")).unwrap_err();
        assert!(matches!(e, ImageError::Decode { .. }), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(
            load_rgb(&empty)
                .unwrap_err()
                .to_string()
                .contains("empty.png")
        );
        assert!(matches!(
            load_rgb(&dir.path().join("missing.png")).unwrap_err(),
            ImageError::Io { .. }
        ));
    }

    #[test]
    fn truncated_jpeg_is_refused_and_trailing_data_is_not() {
        // Noise, so that most of the file is entropy-coded data.
        let mut s: u32 = 0x1234_5678;
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(96, 96, |_, _| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            Rgb(s.to_le_bytes()[..3].try_into().unwrap())
        }));
        let jpg = encode(&img, ImageFormat::Jpeg);
        assert!(!jpeg_is_truncated(&jpg));
        decode_rgb(&jpg, Path::new("whole.jpg")).unwrap();
        for cut in [jpg.len() - 2, jpg.len() * 2 / 3, 40, 3] {
            let e = decode_rgb(&jpg[..cut], Path::new("cut.jpg")).unwrap_err();
            assert!(matches!(e, ImageError::Decode { .. }), "cut at {cut}: {e}");
            assert!(e.to_string().contains("cut.jpg"));
        }
        let mut longer = jpg.clone();
        longer.extend_from_slice(b"\xFF\xDA appended data, e.g. another picture");
        decode_rgb(&longer, Path::new("appended.jpg")).unwrap();
    }

    #[test]
    fn huge_header_is_refused_before_allocation() {
        // A valid PNG header claiming 100000×100000 pixels, no data.
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = crc_of(&png[12..]);
        png.extend_from_slice(&crc.to_be_bytes());
        let e = decode_rgb(&png, Path::new("huge.png")).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }

    /// CRC-32 of a PNG chunk (type + data), bitwise.
    fn crc_of(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
}
