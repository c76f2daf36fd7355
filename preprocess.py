"""Stage 1: turn a folder (or zip) of face photos into small uint8 arrays.

For each size S it writes ``{out}/{name}_{S}.npy`` (uint8, N x S x S x 3,
memory-mappable), ``{out}/{name}_{S}.json`` (source, count, crop, filter,
skipped files with reasons, content fingerprint) and
``{out}/{name}_{S}_preview.png`` (an 8x8 grid).

    python preprocess.py                                    # CelebA from data/celeba/... -> data/celeba_{64,128}.npy
    python preprocess.py --src ~/img_align_celeba.zip --sizes 64 --crop 108
    python preprocess.py --synthetic 2000                   # offline cartoon faces -> data/synthetic_{64,128}.npy

Images are decoded by ``--workers`` processes and streamed straight into the
output file, so memory stays bounded whatever the number of images; outputs
appear atomically (temp file, then rename) and a re-run with the same input and
options does nothing unless ``--force``. ``--synthetic N`` writes cartoon faces
drawn by ``preprocessing/synthetic.py`` the same way.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import utils
from preprocessing import synthetic
from utils import UserError

FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CELEBA_CROP = 140
FILTER = "lanczos"  # PIL Image.LANCZOS on the crop box (antialiased), after JPEG DCT draft scaling when it applies
SEARCH_PLACES = (
    "data/celeba/img_align_celeba",
    "data/img_align_celeba",
    "data/celeba/img_align_celeba.zip",
    "data/img_align_celeba.zip",
)
SPLITS = {"train": 0, "valid": 1, "test": 2}
DOWNLOAD_ADVICE = (
    "get CelebA with `python preprocess.py --download` (torchvision; needs `pip install gdown`, network access, "
    "and Google Drive often refuses with a quota error), or download img_align_celeba.zip by hand from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and put it at data/celeba/img_align_celeba.zip "
    "(no need to unzip); or use any image folder with --src, or --synthetic N for built-in offline faces"
)
CROP_HELP = (
    "centred square crop before resizing: an integer side N, or 'square' for the largest centred square. "
    "The box is left=(W-N)//2, top=(H-N)//2, right=left+N, bottom=top+N; for a 178x218 CelebA image and N=140 "
    "that is (19, 39, 159, 179). Default: 140 for aligned CelebA, recognised by its folder or zip name or by its "
    "178x218 images (108 reproduces the TTUR / DCGAN-tensorflow protocol, "
    "178 the PyTorch DCGAN tutorial), 'square' for other folders. Aligned CelebA at another size with the same "
    "178:218 shape (the half-size 89x109 copies, the quarter-size 44x54) gets the same face: N counts full-size "
    "pixels and the box is scaled with the image (140 on 89x109: (9.5, 19.5, 79.5, 89.5)). An image smaller "
    "than N uses its largest centred square"
)
ATTRIBUTES_FILE = "list_attr_celeba.txt"


# --------------------------------------------------------------------------- #
# Sources: a folder searched recursively, or a zip read in place
# --------------------------------------------------------------------------- #
def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not Path(name).name.startswith("._")


def list_folder(root: Path) -> tuple[list[str], int]:
    """Sorted relative paths of image files under ``root``, plus the number of
    other (ignored) files."""
    names, other = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for fname in filenames:
            if is_image_name(fname):
                names.append(str(rel / fname) if str(rel) != "." else fname)
            elif not fname.startswith("."):
                other += 1
    return sorted(names), other


def list_zip(path: Path) -> tuple[list[str], int]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"--src {path} is not a readable zip file ({err})") from None
    names = sorted(m.filename for m in members if is_image_name(m.filename) and "__MACOSX" not in m.filename)
    return names, len(members) - len(names)


def source_signature(src: Path, names: list[str]) -> str:
    """Cheap identity of the input: names, sizes and mtimes (folder) or the zip's
    size and mtime. Changes when files are added, removed or replaced."""
    digest = hashlib.blake2b(digest_size=16)
    if src.is_file():
        stat = src.stat()
        digest.update(f"zip:{src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{len(names)}".encode())
    else:
        for name in names:
            stat = (src / name).stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_celeba(src: Path) -> bool:
    """The aligned CelebA folder or zip (or the celeba folder holding it);
    not e.g. CelebA-HQ, whose images are already cropped."""
    name = src.name.lower()
    return "img_align_celeba" in name or name == "celeba"


CELEBA_IMAGE_SIZE = (178, 218)  # width, height of every aligned CelebA image
CELEBA_PROBE = 3  # images whose header is read to recognise aligned CelebA by content


def image_sizes(src: Path, names: list[str]) -> list[tuple[int, int] | None]:
    """(width, height) of each named image from its header alone (no
    decoding; a zip's directory is read once), None for one that cannot be read."""
    def size_of(opener, name):
        try:
            with opener(name) as handle, Image.open(handle) as img:
                return img.size
        except Exception:  # an unreadable file says nothing about the folder; decoding reports it later
            return None

    if src.is_file():
        with zipfile.ZipFile(src) as archive:
            return [size_of(archive.open, name) for name in names]
    return [size_of(lambda name: open(src / name, "rb"), name) for name in names]


def celeba_scale(width: int, height: int) -> float | None:
    """width / 178 for an image of aligned CelebA's 178:218 shape at any size
    (89x109, 44x54: the height within a pixel of 218/178 of the width), else None."""
    full_width, full_height = CELEBA_IMAGE_SIZE
    if width >= 16 and abs(width * full_height / full_width - height) <= 1:
        return width / full_width
    return None


def looks_like_aligned_celeba(src: Path, names: list[str]) -> bool:
    """True when the first images (by name) all have the 178:218 shape of
    aligned CelebA (178x218, or a half- or quarter-size copy), so a renamed or
    re-packed copy of CelebA still gets the face crop instead of the largest
    centred square."""
    sizes = [size for size in image_sizes(src, names[:CELEBA_PROBE]) if size is not None]
    return bool(sizes) and all(celeba_scale(*size) is not None for size in sizes)


def describe_crop(crop, size: tuple[int, int] | None, aligned: bool = False) -> str:
    """'crop 140 (19, 39, 159, 179) of 178x218': the side and the box it gives
    for an image of ``size`` (the first one)."""
    if size is None:
        return f"crop {crop}"
    box = face_box(size[0], size[1], crop, aligned)
    scaled = " (the CelebA face box scaled with the image)" if box != crop_box(size[0], size[1], crop) else ""
    return f"crop {crop} {tuple(round(v, 2) for v in box)} of {size[0]}x{size[1]}{scaled}"


def find_default_source() -> Path:
    for place in SEARCH_PLACES:
        if Path(place).exists():
            return Path(place)
    raise UserError(f"no CelebA found (looked in {', '.join(SEARCH_PLACES)}); {DOWNLOAD_ADVICE}")


def download_celeba(root: Path) -> Path:
    """Fetch CelebA with torchvision into ``root/celeba/img_align_celeba``."""
    created = [p for p in (root, root / "celeba") if not p.exists()]
    try:
        import torchvision

        torchvision.datasets.CelebA(root=str(root), split="all", target_type="attr", download=True)
    except Exception as err:  # offline, missing gdown, Drive quota: all one sentence for the user
        for folder in reversed(created):  # leave no empty folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"download of CelebA failed ({type(err).__name__}: {first}); {DOWNLOAD_ADVICE}") from None
    return root / "celeba" / "img_align_celeba"


def read_partition(src: Path) -> dict[str, int]:
    """CelebA's list_eval_partition.txt (``000001.jpg 0``) from beside the images."""
    places = [src.parent / "list_eval_partition.txt"]
    if src.is_dir():
        places.insert(0, src / "list_eval_partition.txt")
    for place in places:
        if place.is_file():
            parts = {}
            for line in place.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[1].isdigit():
                    parts[fields[0]] = int(fields[1])
            return parts
    raise UserError(
        f"--split needs CelebA's list_eval_partition.txt beside the images (looked at "
        f"{', '.join(map(str, places))}); download it from the CelebA page or use --split all"
    )


def find_attributes(src: Path, explicit: Path | None) -> Path | None:
    """CelebA's list_attr_celeba.txt: ``--attrs`` when given, else inside the
    image folder, beside it (torchvision's layout) or in its parent's Anno/
    (the official Img/ + Anno/ layout); None when there is none."""
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"--attrs {explicit} does not exist")
        return explicit
    places = [src.parent / ATTRIBUTES_FILE, src.parent / "Anno" / ATTRIBUTES_FILE,
              src.parent.parent / ATTRIBUTES_FILE, src.parent.parent / "Anno" / ATTRIBUTES_FILE]
    if src.is_dir():
        places.insert(0, src / ATTRIBUTES_FILE)
    return next((place for place in places if place.is_file()), None)


def read_attributes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The official attribute format: a count line, the attribute names, then
    ``000001.jpg -1  1 ...`` rows (1 = has it, -1 = has not). -> (names,
    {file name: int8 row}). A malformed file is a UserError naming the line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the attribute file {path}: {err}") from None

    def fault(number: int, what: str) -> UserError:
        return UserError(f"{path} line {number}: {what} (expected CelebA's list_attr_celeba.txt format: a count "
                         f"line, the attribute names, then one 'file.jpg -1 1 ...' row per image)")

    if not lines or not lines[0].strip().isdigit():
        raise fault(1, "the first line is not the number of images")
    if len(lines) < 2 or not lines[1].split():
        raise fault(2, "no attribute names")
    names = lines[1].split()
    rows: dict[str, np.ndarray] = {}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise fault(number, f"{len(fields) - 1} values for {len(names)} attributes")
        if any(value not in ("1", "-1") for value in fields[1:]):
            raise fault(number, "values must be 1 or -1")
        if fields[0] in rows:
            raise fault(number, f"a second row for {fields[0]}")
        rows[fields[0]] = np.array([int(value) for value in fields[1:]], np.int8)
    if len(rows) != int(lines[0]):
        raise fault(1, f"says {int(lines[0])} images, but the file has {len(rows)} rows")
    return names, rows


def attribute_table(path: Path, names: list[str]) -> dict:
    """Labels for ``names`` (the images, matched by file name) from the file at
    ``path``: int8 (len(names), K), 0 where the file has no row for an image."""
    attribute_names, rows = read_attributes(path)
    missing = np.zeros(len(attribute_names), np.int8)
    labels = np.stack([rows.get(Path(n).name, missing) for n in names] or [missing[:0]]).reshape(len(names), -1)
    labelled = sum(Path(n).name in rows for n in names)
    return {"path": path, "paths": [path], "names": attribute_names, "labels": labels, "labelled": labelled,
            "rows_without_image": len(rows) - labelled}


# --------------------------------------------------------------------------- #
# Decoding (runs in the worker processes)
# --------------------------------------------------------------------------- #
_ZIP: dict = {}


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


def load_image(src: str, name: str, sizes: tuple, crop, aligned: bool = False) -> list[bytes]:
    """Decode one file, crop the centred square (``face_box``), resize to every size.
    Returns one raw uint8 HxWx3 buffer per size; raises on a bad file."""
    if src.lower().endswith(".zip"):
        archive = _ZIP.get(src)
        if archive is None:
            archive = _ZIP[src] = zipfile.ZipFile(src)
        data = archive.read(name)
    else:
        with open(os.path.join(src, name), "rb") as handle:
            data = handle.read()
    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size
        fmt, mode = probe.format, probe.mode
    left, top, right, bottom = face_box(width, height, crop, aligned)
    groups: dict[int, list] = {}
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


def _decode_task(task):
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


# --------------------------------------------------------------------------- #
# Streaming .npy writer: the array is appended image by image, never in RAM
# --------------------------------------------------------------------------- #
def _npy_header(shape: tuple, total: int | None = None) -> bytes:
    """A version 1.0 .npy header for uint8 C-order data, padded to ``total``
    bytes (so a shorter shape can later overwrite it in place)."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(int(d) for d in shape),)
    if total is None:
        total = -(-(10 + len(text) + 1 + 32) // 64) * 64  # 64-byte aligned, with slack
    pad = total - 10 - len(text) - 1
    assert pad >= 0
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", total - 10) + text.encode("latin1") + b" " * pad + b"\n"


class NpyStreamWriter:
    """Append uint8 images to a .npy file; ``close()`` fixes the header to the
    number actually written (skipped files leave no holes)."""

    def __init__(self, path: str, capacity: int, size: int):
        self.path, self.size, self.count = path, size, 0
        self.header = _npy_header((capacity, size, size, 3))
        self.file = open(path, "wb")
        self.file.write(self.header)
        self.digest = hashlib.blake2b(digest_size=16)

    def append(self, buffer: bytes) -> None:
        self.file.write(buffer)
        self.digest.update(buffer)
        self.count += 1

    def close(self) -> str:
        shape = (self.count, self.size, self.size, 3)
        self.file.seek(0)
        self.file.write(_npy_header(shape, total=len(self.header)))
        self.file.truncate(len(self.header) + self.count * self.size * self.size * 3)
        self.file.close()
        self.digest.update(repr(shape).encode())
        return self.digest.hexdigest()


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #
def output_paths(out: Path, name: str, size: int) -> dict:
    stem = out / f"{name}_{size}"
    return {"npy": stem.with_suffix(".npy"), "json": stem.with_suffix(".json"),
            "preview": out / f"{name}_{size}_preview.png", "attrs": out / f"{name}_{size}.attrs.npz"}


def is_up_to_date(paths: dict, signature: dict) -> bool:
    """True when the json beside an existing .npy records the same input and options."""
    try:
        meta = json.loads(paths["json"].read_text())
    except (OSError, ValueError):
        return False
    return paths["npy"].is_file() and meta.get("signature") == signature


def run_pool(tasks: list, worker, workers: int, writers: dict, sizes: tuple, names: list | None, desc: str) -> list:
    """Stream ``worker(task)`` results, in order, into the writers; returns
    ([[file, reason], ...] for skipped inputs, the indices of the written ones)."""
    skipped, kept = [], []
    bar = tqdm(total=len(tasks), desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5)
    chunk = max(1, min(64, len(tasks) // (8 * max(1, workers)) or 1))
    if workers <= 1:
        results = map(worker, tasks)
        pool = contextlib.nullcontext()
    else:
        import multiprocessing

        # forkserver, not fork: a forked worker inherits the parent's locks mid-use when the parent runs
        # threads (a notebook, a web server, a test session), and a Pool whose worker dies that way waits forever
        pool = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver").Pool(workers)
        results = pool.imap(worker, tasks, chunksize=chunk)
    with pool, bar:
        for index, buffers, reason in results:
            if buffers is None:
                skipped.append([names[index], reason])
                bar.set_postfix(skipped=len(skipped), refresh=False)
            else:
                for size, buf in zip(sizes, buffers):
                    writers[size].append(buf)
                kept.append(index)
            bar.update(1)
    return skipped, kept


def write_outputs(out: Path, name: str, sizes: tuple, capacity: int, tasks: list, worker, workers: int,
                  names: list | None, meta_for_size, desc: str, crop_text: str | None = None,
                  attributes: dict | None = None) -> dict:
    """Run the pool into temp files, then publish npy, attribute labels (when
    ``attributes`` has them, one row per input name), preview and json for
    every size; the json, which marks the outputs up to date, comes last.
    Nothing is replaced unless every size finished. ``crop_text`` (the crop box
    used) goes into the summary line."""
    start = time.time()
    results = {}
    with contextlib.ExitStack() as stack:
        writers = {}
        for size in sizes:
            tmp = stack.enter_context(utils.atomic_path(output_paths(out, name, size)["npy"]))
            writers[size] = NpyStreamWriter(tmp, capacity, size)
            stack.callback(writers[size].file.close)
        skipped, kept = run_pool(tasks, worker, workers, writers, sizes, names, desc)
        count = capacity - len(skipped)
        if count == 0:
            raise UserError(f"none of the {capacity} input files could be read (first: {skipped[0][0]}: "
                            f"{skipped[0][1]}); nothing written")
        fingerprints = {size: writers[size].close() for size in sizes}
        for size in sizes:  # a stale json or label file must never describe a new .npy
            for stale in ("json", "attrs"):
                with contextlib.suppress(FileNotFoundError):
                    output_paths(out, name, size)[stale].unlink()
    # the ExitStack has renamed every temp .npy into place; now the sidecars
    seconds = time.time() - start
    for size in sizes:
        paths = output_paths(out, name, size)
        if attributes is not None:
            write_attributes(paths["attrs"], attributes, [names[i] for i in kept], attributes["labels"][kept])
        preview = np.load(paths["npy"], mmap_mode="r")[:64]
        utils.save_png(utils.image_grid(np.ascontiguousarray(preview), nrow=8), paths["preview"])
        meta = meta_for_size(size)
        if attributes is not None:
            meta["attributes"] = {"file": ", ".join(str(f.resolve()) for f in attributes["paths"]), "labels": str(paths["attrs"]),
                                  "images_with_a_row": int(np.count_nonzero(attributes["labels"][kept].any(1))),
                                  "rows_without_an_image": attributes["rows_without_image"]}
        meta.update(count=count, size=size, skipped=skipped, fingerprint=fingerprints[size],
                    seconds=round(seconds, 2), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        utils.save_json(meta, paths["json"])
        results[size] = paths
    rate = capacity / max(seconds, 1e-9)
    written = ", ".join(str(results[s]["npy"]) for s in sizes)
    crop_part = f", {crop_text}" if crop_text else ""
    print(f"wrote {written}: {count} images, {len(skipped)} skipped{crop_part}, {seconds:.1f} s, {rate:.0f} images/s")
    return results


def write_attributes(path: Path, attributes: dict, files: list[str], labels: np.ndarray) -> None:
    """``<name>_<size>.attrs.npz``: names (the attribute names), labels (int8,
    one row per image of the array, in its order: 1, -1, or 0 where the file
    has no row for that image) and files (each row's source file), atomically."""
    with utils.atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, names=np.array(attributes["names"]), labels=labels.astype(np.int8), files=np.array(files))


def sizes_to_build(args, name: str, sizes: tuple, signature: dict) -> tuple:
    """The sizes whose outputs are missing or were made from other input or
    options (all of them with --force); says which are already up to date."""
    todo = tuple(s for s in sizes if args.force or not is_up_to_date(output_paths(args.out, name, s),
                                                                      dict(signature, size=s)))
    for size in sizes:
        if size not in todo:
            print(f"{output_paths(args.out, name, size)['npy']} is up to date (same input and options; --force rebuilds)")
    return todo


def parse_crop(value: str):
    if value == "square":
        return "square"
    try:
        side = int(value)
    except ValueError:
        side = 0
    if side < 1:
        raise argparse.ArgumentTypeError(f"--crop must be a positive integer or 'square', got {value!r}")
    return side


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter,
        epilog="Resizing: the crop box is cut out exactly, then resized to each size with PIL's LANCZOS filter "
               "(antialiased). JPEGs are first decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, "
               "'draft' mode) when the reduced box stays at least as large as that output size (chosen per size, so "
               "each size's output does not depend on the other sizes requested). Outputs per "
               "size S: {out}/{name}_S.npy (uint8 N x S x S x 3), {name}_S.json (source, count, crop, filter, "
               "skipped files with reasons, fingerprint), {name}_S_preview.png (8x8 grid).",
    )
    parser.add_argument("--src", type=Path, action="append", default=None,
                        help="img_align_celeba folder, img_align_celeba.zip (read in place), or any folder of "
                             f"images searched recursively ({', '.join(IMAGE_EXTENSIONS)}); repeat it to make one "
                             f"array of several folders (with --name); default: the first of "
                             f"{', '.join(SEARCH_PLACES)} that exists")
    parser.add_argument("--out", type=Path, default=Path("data"), help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="output side lengths in pixels")
    parser.add_argument("--name", default=None,
                        help="output name prefix; default celeba (celeba_train etc. with --split) for CelebA, "
                             "the folder name otherwise, synthetic for --synthetic")
    parser.add_argument("--crop", type=parse_crop, default=None, help=CROP_HELP)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N files (sorted by name)")
    parser.add_argument("--attrs", type=Path, default=None,
                        help=f"CelebA's {ATTRIBUTES_FILE} (official format) for <name>_<size>.attrs.npz label files; "
                             f"default: found inside the image folder, beside it or in ../Anno/, else no labels")
    parser.add_argument("--split", choices=["all", "train", "valid", "test"], default="all",
                        help="CelebA partition from list_eval_partition.txt beside the images")
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
    parser.add_argument("--download", action="store_true",
                        help="download CelebA with torchvision into {out}/celeba first (needs gdown and network)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="instead of photos, draw N cartoon faces (offline demo / test data)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --synthetic")
    return parser


def validate(args) -> None:
    for size in args.sizes:
        if not 4 <= size <= 2048:
            raise UserError(f"--sizes {size} is out of range (4 to 2048 pixels)")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.synthetic is not None and args.synthetic < 1:
        raise UserError(f"--synthetic must be at least 1, got {args.synthetic}")
    if args.name is not None and (not args.name or any(c in args.name for c in "/\\") or args.name.startswith(".")):
        raise UserError(f"--name {args.name!r} must be a plain file-name prefix")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")


def make_synthetic(args, sizes: tuple) -> int:
    """``preprocess.py --synthetic N``: N faces of ``--seed`` written for every size not up to date."""
    name = args.name or "synthetic"
    signature = {"format": FORMAT_VERSION, "source": "synthetic", "faces_version": synthetic.FACES_VERSION,
                 "n": args.synthetic, "seed": args.seed}
    todo = sizes_to_build(args, name, sizes, signature)
    if not todo:
        return 0

    def meta(size):
        return {"source": f"synthetic cartoon faces (seed {args.seed})", "count": None, "size": size,
                "crop": None, "filter": f"box (PIL reduce) from a {synthetic.synthetic_canvas(size)} px drawing",
                "seed": args.seed, "signature": dict(signature, size=size)}

    tasks = [(i, args.seed, todo) for i in range(args.synthetic)]
    write_outputs(args.out, name, todo, args.synthetic, tasks, synthetic.synthetic_task,
                  min(args.workers, args.synthetic), None, meta, desc=f"synthetic {'/'.join(map(str, todo))}px")
    return 0


def open_source(src: Path, args) -> dict:
    """One --src: its image names (after --split), how its faces are cut, its
    attribute file. Every input error is raised here, before any output."""
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    if src.is_file():
        if src.suffix.lower() != ".zip":
            raise UserError(f"--src {src} is a file but not a .zip; give a folder of images or a zip")
        names, other = list_zip(src)
    else:
        names, other = list_folder(src)
    if not names:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in --src {src}")
    celeba = is_celeba(src)
    aligned = celeba or looks_like_aligned_celeba(src, names)
    if args.split != "all":
        partition = read_partition(src)
        names = [n for n in names if partition.get(Path(n).name) == SPLITS[args.split]]
        if not names:
            raise UserError(f"no images of --split {args.split} found in {src}")
    crop = args.crop if args.crop is not None else (CELEBA_CROP if aligned else "square")
    first_size = image_sizes(src, names[:1])[0]
    crop_text = describe_crop(crop, first_size, aligned)
    if aligned and not celeba and args.crop is None:
        print(f"{src}: images have the {CELEBA_IMAGE_SIZE[0]}:{CELEBA_IMAGE_SIZE[1]} shape of aligned CelebA, so "
              f"the CelebA face crop is used: {crop_text} (--crop square for the largest centred square)")
    attributes_path = find_attributes(src, args.attrs)
    return {"src": src, "names": names, "other": other, "celeba": celeba, "aligned": aligned, "crop": crop,
            "first_size": first_size, "crop_text": crop_text, "attributes_path": attributes_path,
            "scaled": first_size is not None and face_box(*first_size, crop, aligned) != crop_box(*first_size, crop)}


def source_signature_and_meta(source: dict, names: list[str]) -> tuple[dict, dict]:
    """What makes one source's part of the outputs (for the up-to-date check)
    and how it was read (for the .json)."""
    src, crop, aligned, first_size = source["src"], source["crop"], source["aligned"], source["first_size"]
    signature = {"source": str(src.resolve()), "files": source_signature(src, names), "crop": crop}
    if source["scaled"]:
        signature["face_box"] = "celeba, scaled with the image"
    if source["attributes_path"]:
        stat = source["attributes_path"].stat()
        signature["attributes"] = f"{source['attributes_path'].resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    meta = {"source": str(src.resolve()),
            "crop": {"side": crop, "box": "left=(W-N)//2, top=(H-N)//2, N=side (or min(W,H))",
                     "celeba_178x218_box": list(crop_box(178, 218, crop)),
                     "first_image_box": None if first_size is None else list(face_box(*first_size, crop, aligned)),
                     "scaled_with_the_image": source["scaled"],
                     "aligned_celeba": "by name" if source["celeba"] else "by 178:218 images" if aligned else False},
            "ignored_non_image_files": source["other"]}
    return signature, meta


def combined_attributes(sources: list[dict], parts: list[list[str]]) -> dict | None:
    """The label table of all sources' images in output order: each source's
    file (the same attribute names in all), 0 rows for a source without one."""
    tables = [attribute_table(s["attributes_path"], names) if s["attributes_path"] else None
              for s, names in zip(sources, parts)]
    present = [table for table in tables if table is not None]
    if not present:
        return None
    attribute_names = present[0]["names"]
    for source, table in zip(sources, tables):
        if table is not None and table["names"] != attribute_names:
            raise UserError(f"{source['attributes_path']} names other attributes than {present[0]['path']}; "
                            f"several --src need the same attribute file format")
    labels = [table["labels"] if table is not None else np.zeros((len(names), len(attribute_names)), np.int8)
              for table, names in zip(tables, parts)]
    return {"path": present[0]["path"], "paths": [t["path"] for t in present], "names": attribute_names,
            "labels": np.concatenate(labels), "labelled": sum(t["labelled"] for t in present),
            "rows_without_image": sum(t["rows_without_image"] for t in present)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    sizes = tuple(dict.fromkeys(args.sizes))  # unique, order kept
    if args.synthetic is not None:
        return make_synthetic(args, sizes)

    if args.download:
        srcs = [download_celeba(args.out)]
    elif args.src:
        srcs = [src.expanduser() for src in args.src]
    else:
        srcs = [find_default_source()]
    if len(srcs) > 1 and not args.name:
        raise UserError("several --src make one array: name it with --name (e.g. --name faces -> data/faces_64.npy)")
    sources = [open_source(src, args) for src in srcs]
    parts, left = [], args.limit
    for source in sources:  # --limit counts the images of all sources, in --src order
        parts.append(source["names"][:left] if left is not None else source["names"])
        left = None if left is None else left - len(parts[-1])
    first = sources[0]
    name = args.name or (("celeba" if args.split == "all" else f"celeba_{args.split}") if first["celeba"]
                         else "".join(c if c.isalnum() or c in "-_" else "_" for c in first["src"].resolve().name))
    attributes = combined_attributes(sources, parts)  # a bad attribute file: before any output
    described = [source_signature_and_meta(source, names) for source, names in zip(sources, parts)]
    if len(sources) == 1:
        signature, source_meta = described[0]
    else:  # one entry per source, in --src order
        signature = {key: [d[0].get(key) for d in described] for key in dict.fromkeys(k for d in described for k in d[0])}
        source_meta = {"source": [d[1]["source"] for d in described], "crop": [d[1]["crop"] for d in described],
                       "ignored_non_image_files": sum(d[1]["ignored_non_image_files"] for d in described),
                       "counts_per_source": [len(names) for names in parts]}
    signature = {"format": FORMAT_VERSION, **signature, "split": args.split, "limit": args.limit, "filter": FILTER}
    todo = sizes_to_build(args, name, sizes, signature)
    if not todo:
        return 0

    def meta(size):
        return {**source_meta, "count": None, "size": size,
                "filter": FILTER + " (PIL, from the exact crop box; JPEGs first DCT-scaled by 1/2, 1/4 or 1/8 "
                                   "when the reduced box stays >= this size)",
                "split": args.split, "limit": args.limit, "signature": dict(signature, size=size)}

    tasks = [(str(s["src"]), n, s["crop"], s["aligned"]) for s, names in zip(sources, parts) for n in names]
    tasks = [(i, src, n, todo, crop, aligned) for i, (src, n, crop, aligned) in enumerate(tasks)]
    # the name of each image in reports and label files: relative to its --src, or the whole path for several
    names = [n if len(sources) == 1 else str(Path(s["src"]) / n) for s, part in zip(sources, parts) for n in part]
    crop_text = "; ".join(s["crop_text"] for s in sources)
    write_outputs(args.out, name, todo, len(names), tasks, _decode_task, min(args.workers, len(names)),
                  names, meta, desc=f"{name} {'/'.join(map(str, todo))}px", crop_text=crop_text,
                  attributes=attributes)
    if attributes:
        print(f"labels: {attributes['labelled']} of {len(names)} images have a row in "
              f"{', '.join(map(str, attributes['paths']))} ({len(attributes['names'])} attributes) -> "
              f"{output_paths(args.out, name, todo[0])['attrs'].name}, ...")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
