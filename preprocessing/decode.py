"""Decoding and cropping one image file, in preprocess.py's worker processes:
the centred square (or CelebA's face box scaled with the image), any PIL mode
to RGB, JPEG DCT draft scaling, then LANCZOS to every output size.

    from preprocessing import decode
    decode.crop_box(178, 218, 140)                  # (19, 39, 159, 179)
    (buffer,) = decode.load_image("photos", "a.jpg", (64,), "square")  # 64*64*3 RGB bytes
"""
from __future__ import annotations

import io
import math
import os
import zipfile

import numpy as np
from PIL import Image

from preprocessing.celeba import CELEBA_IMAGE_SIZE, celeba_scale

FILTER = "lanczos"  # PIL Image.LANCZOS on the crop box (antialiased), after JPEG DCT draft scaling when it applies
_ZIP: dict = {}  # zip path -> its open ZipFile, one per worker process


def crop_box(width: int, height: int, crop) -> tuple[int, int, int, int]:
    """Centred square box (left, top, right, bottom); crop is an int side or
    'square'. 178x218 with 140 -> (19, 39, 159, 179)."""
    side = min(width, height) if crop == "square" else min(int(crop), width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def face_box(width: int, height: int, crop, aligned: bool) -> tuple:
    """The box cut from one image. Aligned CelebA at another size than 178x218
    (same 178:218 shape) gets the full-size box scaled with the image, so every
    resolution of CelebA gives the same face: 89x109 with 140 -> (9.5, 19.5,
    79.5, 89.5), a sub-pixel box that the resize filters exactly. Anything else:
    ``crop_box``."""
    scale = celeba_scale(width, height) if aligned and crop != "square" else None
    if scale is None or (width, height) == CELEBA_IMAGE_SIZE:
        return crop_box(width, height, crop)
    return tuple(v * scale for v in crop_box(*CELEBA_IMAGE_SIZE, crop))


def describe_crop(crop, size: tuple[int, int] | None, aligned: bool = False) -> str:
    """'crop 140 (19, 39, 159, 179) of 178x218': the side and the box it gives
    for an image of ``size`` (the first one)."""
    if size is None:
        return f"crop {crop}"
    box = face_box(size[0], size[1], crop, aligned)
    scaled = " (the CelebA face box scaled with the image)" if box != crop_box(size[0], size[1], crop) else ""
    return f"crop {crop} {tuple(round(v, 2) for v in box)} of {size[0]}x{size[1]}{scaled}"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale: scale to 8 bits
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def draft_factor(fmt: str, mode: str, side: int, size: int) -> int:
    """JPEG DCT scaling factor (1, 2, 4 or 8) for one output size: the largest
    that keeps the crop box at least ``size`` pixels. It depends on that size
    only, so {name}_64.npy is the same whichever other sizes are made with it."""
    if fmt != "JPEG" or mode not in ("RGB", "L", "YCbCr"):
        return 1
    return max(k for k in (1, 2, 4, 8) if k == 1 or side / k >= size)


def read_bytes(src: str, name: str) -> bytes:
    """The file ``name`` of a folder or of a zip (kept open per process)."""
    if src.lower().endswith(".zip"):
        archive = _ZIP.get(src)
        if archive is None:
            archive = _ZIP[src] = zipfile.ZipFile(src)
        return archive.read(name)
    with open(os.path.join(src, name), "rb") as handle:
        return handle.read()


def load_image(src: str, name: str, sizes: tuple, crop, aligned: bool = False) -> list[bytes]:
    """Decode one file, crop the centred square (``face_box``), resize to every size.
    Returns one raw uint8 HxWx3 buffer per size; raises on a bad file."""
    data = read_bytes(src, name)
    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size
        fmt, mode = probe.format, probe.mode
    left, top, right, bottom = face_box(width, height, crop, aligned)
    groups: dict[int, list] = {}  # draft factor -> the sizes decoded at it
    for s in sizes:
        groups.setdefault(draft_factor(fmt, mode, right - left, s), []).append(s)
    out = {}
    for factor, group in groups.items():
        with Image.open(io.BytesIO(data)) as img:
            scale = 1.0
            if factor > 1:
                result = img.draft("L" if mode == "L" else "RGB", (max(1, width // factor), max(1, height // factor)))
                if result is not None:
                    scale = result[1][2] / width  # the draft reports where the original lies in the reduced image
            img.load()
            rgb = to_rgb(img)
        # crop first, so the filter never reaches pixels outside the box; keep the sub-pixel box a draft leaves
        box = (left * scale, top * scale, right * scale, bottom * scale)
        outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
        inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
        rgb = rgb.crop(outer)
        for s in group:
            out[s] = rgb.resize((s, s), Image.LANCZOS, box=inner).tobytes()
    return [out[s] for s in sizes]


def decode_task(task):
    """(index, src, name, sizes, crop, aligned) -> (index, [RGB bytes per size], None),
    or (index, None, reason) for a file that cannot be decoded."""
    index, src, name, sizes, crop, aligned = task
    try:
        buffers = load_image(src, name, sizes, crop, aligned)
        for buf, s in zip(buffers, sizes):
            if len(buf) != s * s * 3:
                raise ValueError("unexpected decoded size")
        return index, buffers, None
    except Exception as err:  # corrupt, truncated, not an image: skipped and reported, never fatal
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        return index, None, reason[:200]
