"""preprocess.py's inputs: a folder of images searched recursively, or a zip
read in place, opened once into a ``Source`` (its image names, how its faces
are cut, its attribute file) before any output is written.

    from preprocessing.sources import open_source
    source = open_source(Path("data/celeba/img_align_celeba"), split="train")
    source.crop, source.crop_text                   # 140, 'crop 140 (19, 39, 159, 179) of 178x218'
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from preprocessing.celeba import (CELEBA_CROP, CELEBA_IMAGE_SIZE, CELEBA_PROBE, SPLITS, attribute_table,
                                  find_attributes, is_celeba, looks_like_aligned_celeba, read_partition)
from preprocessing.decode import crop_box, describe_crop, face_box
from utils import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# --------------------------------------------------------------------------- #
# Listing a folder or a zip
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
    """Sorted image members of the zip at ``path`` (no macOS metadata), plus the number of other members."""
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


# --------------------------------------------------------------------------- #
# One opened --src
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Source:
    """One --src, opened: what it holds and how its faces are cut."""
    src: Path  # the folder or zip as given
    names: list[str]  # its image files (after --split), relative to src, sorted
    other: int  # files that are not images, ignored
    celeba: bool  # aligned CelebA by its name
    aligned: bool  # aligned CelebA by its name or by its 178:218 images: the face box applies
    crop: int | str  # the square's side in full-size pixels, or "square"
    first_size: tuple[int, int] | None  # (width, height) of the first image, None when unreadable
    crop_text: str  # 'crop 140 (19, 39, 159, 179) of 178x218', for the summary line
    attributes_path: Path | None  # its list_attr_celeba.txt, None when it has none

    @property
    def scaled(self) -> bool:
        """The CelebA face box is scaled with the image (a half- or quarter-size copy)."""
        size = self.first_size
        return size is not None and face_box(*size, self.crop, self.aligned) != crop_box(*size, self.crop)

    def signature_and_meta(self, names: list[str]) -> tuple[dict, dict]:
        """What makes this source's part of the outputs (``names``, after
        --limit; for the up-to-date check) and how it was read (for the .json)."""
        src, crop, aligned, first_size = self.src, self.crop, self.aligned, self.first_size
        signature = {"source": str(src.resolve()), "files": source_signature(src, names), "crop": crop}
        if self.scaled:
            signature["face_box"] = "celeba, scaled with the image"
        if self.attributes_path:
            stat = self.attributes_path.stat()
            signature["attributes"] = f"{self.attributes_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        meta = {"source": str(src.resolve()),
                "crop": {"side": crop, "box": "left=(W-N)//2, top=(H-N)//2, N=side (or min(W,H))",
                         "celeba_178x218_box": list(crop_box(178, 218, crop)),
                         "first_image_box": None if first_size is None else list(face_box(*first_size, crop, aligned)),
                         "scaled_with_the_image": self.scaled,
                         "aligned_celeba": "by name" if self.celeba else "by 178:218 images" if aligned else False},
                "ignored_non_image_files": self.other}
        return signature, meta


def open_source(src: Path, crop=None, split: str = "all", attrs: Path | None = None) -> Source:
    """One --src with the command's ``--crop`` (None: CelebA's face or the
    largest square), ``--split`` and ``--attrs``. Every input error is raised
    here, before any output."""
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
    aligned = celeba or looks_like_aligned_celeba(image_sizes(src, names[:CELEBA_PROBE]))
    if split != "all":
        partition = read_partition(src)
        names = [n for n in names if partition.get(Path(n).name) == SPLITS[split]]
        if not names:
            raise UserError(f"no images of --split {split} found in {src}")
    side = crop if crop is not None else (CELEBA_CROP if aligned else "square")
    first_size = image_sizes(src, names[:1])[0]
    crop_text = describe_crop(side, first_size, aligned)
    if aligned and not celeba and crop is None:
        print(f"{src}: images have the {CELEBA_IMAGE_SIZE[0]}:{CELEBA_IMAGE_SIZE[1]} shape of aligned CelebA, so "
              f"the CelebA face crop is used: {crop_text} (--crop square for the largest centred square)")
    return Source(src, names, other, celeba, aligned, side, first_size, crop_text, find_attributes(src, attrs))


# --------------------------------------------------------------------------- #
# Several sources, one array
# --------------------------------------------------------------------------- #
def limited_names(sources: list[Source], limit: int | None) -> list[list[str]]:
    """Each source's names kept by ``--limit``, which counts the images of all sources in --src order."""
    parts, left = [], limit
    for source in sources:
        parts.append(source.names[:left] if left is not None else source.names)
        left = None if left is None else left - len(parts[-1])
    return parts


def signature_and_meta(sources: list[Source], parts: list[list[str]]) -> tuple[dict, dict]:
    """``Source.signature_and_meta`` of one source; of several, one entry per
    source in --src order under each key."""
    described = [source.signature_and_meta(names) for source, names in zip(sources, parts)]
    if len(sources) == 1:
        return described[0]
    signature = {key: [d[0].get(key) for d in described] for key in dict.fromkeys(k for d in described for k in d[0])}
    meta = {"source": [d[1]["source"] for d in described], "crop": [d[1]["crop"] for d in described],
            "ignored_non_image_files": sum(d[1]["ignored_non_image_files"] for d in described),
            "counts_per_source": [len(names) for names in parts]}
    return signature, meta


def combined_attributes(sources: list[Source], parts: list[list[str]]) -> dict | None:
    """The label table of all sources' images in output order: each source's
    file (the same attribute names in all), 0 rows for a source without one."""
    tables = [attribute_table(s.attributes_path, names) if s.attributes_path else None
              for s, names in zip(sources, parts)]
    present = [table for table in tables if table is not None]
    if not present:
        return None
    attribute_names = present[0]["names"]
    for source, table in zip(sources, tables):
        if table is not None and table["names"] != attribute_names:
            raise UserError(f"{source.attributes_path} names other attributes than {present[0]['path']}; "
                            f"several --src need the same attribute file format")
    labels = [table["labels"] if table is not None else np.zeros((len(names), len(attribute_names)), np.int8)
              for table, names in zip(tables, parts)]
    return {"path": present[0]["path"], "paths": [t["path"] for t in present], "names": attribute_names,
            "labels": np.concatenate(labels), "labelled": sum(t["labelled"] for t in present),
            "rows_without_image": sum(t["rows_without_image"] for t in present)}
