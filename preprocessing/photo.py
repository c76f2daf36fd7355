"""A person's photo, read as hostile input: in memory only, limits checked
before decoding, one-line UserError for anything refused.

    from preprocessing import photo
    img = photo.read_photo(uploaded_bytes, "me.jpg")   # RGB, EXIF orientation applied, fully loaded
    img = photo.read_photo_file("me.jpg")              # the file's size is checked before it is read

Accepted: JPEG (a phone's multi-picture MPO JPEG too: its first picture), PNG
and WebP, told by their bytes, never by the name; at most ``MAX_BYTES`` and
``MAX_PIXELS``, each side at least ``MIN_SIDE``, the long side at most
``MAX_ASPECT`` times the short one. Refused, each in one line: anything else
(SVG, HTML, GIF, text, random bytes), animations (APNG, animated WebP),
truncated or damaged files, decompression bombs (the header's width x height
is checked before a pixel is decoded). Nothing is written to disk.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from preprocessing.decode import to_rgb
from utils import UserError

MAX_BYTES = 10 * 1024 * 1024  # 10 MB: a phone's full-size JPEG is 2-8 MB
MAX_PIXELS = 25_000_000       # 25 megapixels, far below Pillow's own bomb limit (89 M warns, 179 M refuses)
MIN_SIDE = 64                 # px: the generator's size, the least a photo worth aligning has
MAX_ASPECT = 8.0              # long side / short side: a panorama is 3-6
FORMATS = ("JPEG", "PNG", "WEBP")  # the PIL plugins allowed to open an upload (MPO comes through JPEG's)
ANIMATABLE = ("PNG", "WEBP")  # formats whose several frames are an animation (an MPO's are views of one photo)


def sniff(data: bytes) -> str | None:
    """What the first bytes say a refused file is, for the message: 'SVG or HTML', 'GIF', ... or None."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<"):
        return "an SVG, HTML or XML file"
    for magic, kind in ((b"gif8", "a GIF"), (b"bm", "a BMP"), (b"%pdf", "a PDF"), (b"ii*\x00", "a TIFF"),
                        (b"mm\x00*", "a TIFF"), (b"pk\x03\x04", "a zip archive")):
        if head.startswith(magic):
            return kind
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIC/AVIF file"
    return None


def check_header(img: Image.Image, name: str) -> None:
    """Refuse by what the header says, before any pixel is decoded."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise UserError(f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels; at most "
                        f"{MAX_PIXELS / 1e6:.0f} are accepted (a smaller copy of the photo works)")
    if min(width, height) < MIN_SIDE:
        raise UserError(f"{name}: {width}x{height} is too small; each side must be at least {MIN_SIDE} px")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UserError(f"{name}: {width}x{height} is too elongated for a portrait "
                        f"(the long side may be at most {MAX_ASPECT:g} times the short one)")
    if img.format in ANIMATABLE and getattr(img, "n_frames", 1) > 1:
        raise UserError(f"{name}: an animated {img.format} ({img.n_frames} frames); a still photo is needed")


def read_photo(data: bytes, name: str = "photo") -> Image.Image:
    """Untrusted bytes -> an RGB PIL image, EXIF orientation applied, fully
    loaded and detached from ``data``. Transparent pixels are put on white,
    as preprocess.py does for the training images (decode.to_rgb): a cut-out
    portrait's background is white far more often than black. Raises
    UserError (one line, starting with ``name``) for whatever is refused."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UserError(f"{name}: not an image (got {type(data).__name__}, expected the file's bytes)")
    data = bytes(data)
    if len(data) > MAX_BYTES:
        raise UserError(f"{name}: {len(data) / 2**20:.1f} MB; at most {MAX_BYTES / 2**20:.0f} MB are accepted")
    if not data:
        raise UserError(f"{name}: an empty file, not an image")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone in this process let Pillow pad truncated files with grey
        raise UserError(f"{name}: cannot check for truncation (PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            check_header(img, name)
            img.seek(0)
            img.load()
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:  # a damaged EXIF block: keep the pixels as stored
                upright = img
            rgb = to_rgb(upright)
            return rgb.copy() if rgb is img else rgb
    except UnidentifiedImageError:
        kind = sniff(data)
        raise UserError(f"{name}: {kind or 'not an image'}; only JPEG, PNG and WebP photos are accepted") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{name}: a decompression bomb (its header claims more pixels than Pillow allows); "
                        f"at most {MAX_PIXELS / 1e6:.0f} megapixels are accepted") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, MemoryError) as err:
        detail = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        raise UserError(f"{name}: a truncated or damaged image ({detail})") from None


def read_photo_file(path) -> Image.Image:
    """``read_photo`` on a file, its size checked before a byte is read."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if size > MAX_BYTES:
        raise UserError(f"{path.name}: {size / 2**20:.1f} MB; at most {MAX_BYTES / 2**20:.0f} MB are accepted")
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)  # a file that grew since stat is still caught by read_photo
    return read_photo(data, path.name)
