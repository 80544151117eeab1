#!/usr/bin/env python3
"""Makes the files of tests/bad/ (run from anywhere; needs Pillow).

Valid but unusual images, each holding a real face from assets/samples/
(they must score): a CMYK JPEG, a 16-bit RGB PNG, a grayscale JPEG, and a
photo stored on its side with an EXIF orientation tag. Broken or
unsupported files (each must be a per-file error naming it): an empty
file, a truncated JPEG, a PNG whose header claims 100000 x 100000 pixels,
a text file named .jpg, and a TIFF in the CIELab colour space, which the
decoder does not read. Every file stays under 50 KB.
"""

import struct
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent.parent / "assets" / "samples"
PHOTO = SAMPLES / "ciplab_real_real_00128.jpg"  # 320 x 320, one face
CROP = SAMPLES / "dfdc_real_kbodjivgqu.jpg"  # 224 x 224 tight crop


def chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png16(img: Image.Image) -> bytes:
    """An RGB PNG with 16 bits per sample (Pillow writes 16-bit only for
    grayscale), each 8-bit value v stored as v * 257."""
    w, h = img.size
    px = img.convert("RGB").tobytes()
    rows = []
    for y in range(h):
        row = bytearray([0])  # filter: none
        for v in px[y * w * 3 : (y + 1) * w * 3]:
            row += struct.pack(">H", v * 257)
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def huge_png() -> bytes:
    """A valid PNG signature and header claiming 100000 x 100000 RGB pixels,
    with one tiny data chunk: a decoder without limits would try to
    allocate 30 GB."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def main() -> None:
    photo = Image.open(PHOTO).convert("RGB")
    crop = Image.open(CROP).convert("RGB")

    # Valid but unusual: must score.
    photo.convert("CMYK").save(HERE / "cmyk.jpg", "JPEG", quality=75)
    (HERE / "rgb16.png").write_bytes(png16(photo.resize((96, 96), Image.LANCZOS)))
    photo.convert("L").save(HERE / "grayscale.jpg", "JPEG", quality=85)
    # Stored turned 90 degrees counter-clockwise; orientation 6 says
    # "rotate 90 degrees clockwise to display", which makes it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.rotate(90, expand=True).save(
        HERE / "exif_rotated.jpg", "JPEG", quality=85, exif=exif.tobytes()
    )

    # Broken or unsupported: must be per-file errors.
    (HERE / "empty.jpg").write_bytes(b"")
    whole = CROP.read_bytes()
    (HERE / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (HERE / "huge_header.png").write_bytes(huge_png())
    (HERE / "not_an_image.jpg").write_text("This is a text file, not a JPEG.\n")
    crop.resize((64, 64), Image.LANCZOS).convert("LAB").save(HERE / "unsupported_cielab.tif")

    for p in sorted(HERE.iterdir()):
        if p.suffix != ".py":
            assert p.stat().st_size < 50_000, p
            print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
