"""Everything preprocess.py knows about CelebA: recognising the aligned set (by
its name or its 178:218 images at any size), where its face lies, where to
find it (data/, or attached to a Kaggle notebook under /kaggle/input), its
train/valid/test partition, its attribute labels and the download.

    from preprocessing import celeba
    celeba.celeba_scale(89, 109)                    # 0.5: the half-size copy
    names, rows = celeba.read_attributes(Path("list_attr_celeba.txt"))
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from utils import UserError

CELEBA_CROP = 140  # the face's square side in full-size (178x218) pixels
CELEBA_IMAGE_SIZE = (178, 218)  # width, height of every aligned CelebA image
CELEBA_PROBE = 3  # images whose header is read to recognise aligned CelebA by content
KAGGLE_INPUT = Path("/kaggle/input")  # where a Kaggle notebook's attached data sets are mounted (read-only)
# CelebA attached on Kaggle: "celeba-dataset" (jessicali9530's, the common one) nests the images one folder
# deeper; any other upload of the aligned set keeps the usual folder name
KAGGLE_PLACES = ("celeba-dataset/img_align_celeba/img_align_celeba", "*/img_align_celeba/img_align_celeba",
                 "*/img_align_celeba")
LOCAL_PLACES = (
    "data/celeba/img_align_celeba",
    "data/img_align_celeba",
    "data/celeba/img_align_celeba.zip",
    "data/img_align_celeba.zip",
)
SEARCH_PLACES = LOCAL_PLACES + tuple(f"{KAGGLE_INPUT}/{place}" for place in KAGGLE_PLACES)  # in search order
SPLITS = {"train": 0, "valid": 1, "test": 2}
DOWNLOAD_ADVICE = (
    "get CelebA with `python preprocess.py --download` (torchvision; needs `pip install gdown`, network access, "
    "and Google Drive often refuses with a quota error), or download img_align_celeba.zip by hand from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and put it at data/celeba/img_align_celeba.zip "
    "(no need to unzip); or use any image folder with --src, or --synthetic N for built-in offline faces"
)
ATTRIBUTES_FILE = "list_attr_celeba.txt"
DRIVE_QUOTA_SIGNS = ("too many users", "quota", "many accesses")  # gdown's words when Drive refuses a shared file


# --------------------------------------------------------------------------- #
# Recognition
# --------------------------------------------------------------------------- #
def is_celeba(src: Path) -> bool:
    """The aligned CelebA folder or zip (or the celeba folder holding it);
    not e.g. CelebA-HQ, whose images are already cropped."""
    name = src.name.lower()
    return "img_align_celeba" in name or name == "celeba"


def celeba_scale(width: int, height: int) -> float | None:
    """width / 178 for an image of aligned CelebA's 178:218 shape at any size
    (89x109, 44x54: the height within a pixel of 218/178 of the width), else None."""
    full_width, full_height = CELEBA_IMAGE_SIZE
    if width >= 16 and abs(width * full_height / full_width - height) <= 1:
        return width / full_width
    return None


def looks_like_aligned_celeba(first_sizes: list[tuple[int, int] | None]) -> bool:
    """True when the first images (by name; ``CELEBA_PROBE`` of them, None for
    an unreadable one) all have the 178:218 shape of aligned CelebA (178x218, or
    a half- or quarter-size copy), so a renamed or re-packed copy of CelebA
    still gets the face crop instead of the largest centred square."""
    sizes = [size for size in first_sizes if size is not None]
    return bool(sizes) and all(celeba_scale(*size) is not None for size in sizes)


# --------------------------------------------------------------------------- #
# Finding and downloading it
# --------------------------------------------------------------------------- #
def search_places() -> list[Path]:
    """``SEARCH_PLACES`` that exist, in order: data/ under the working folder,
    then CelebA attached to a Kaggle notebook (under ``KAGGLE_INPUT``)."""
    local = [Path(place) for place in LOCAL_PLACES if Path(place).exists()]
    kaggle = [match for place in KAGGLE_PLACES for match in sorted(KAGGLE_INPUT.glob(place)) if match.is_dir()]
    return list(dict.fromkeys(local + kaggle))


def find_default_source() -> Path:
    found = search_places()
    if found:
        return found[0]
    raise UserError(f"no CelebA found (looked in {', '.join(SEARCH_PLACES)}); {DOWNLOAD_ADVICE}; on Kaggle, "
                    f"attach CelebA (Add Input: celeba-dataset) and it is found under {KAGGLE_INPUT}")


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
        if any(sign in str(err).lower() for sign in DRIVE_QUOTA_SIGNS):  # gdown puts the reason on a later line
            raise UserError("Google Drive refused the download of CelebA: the shared file's daily quota is used up "
                            "('Too many users have viewed or downloaded this file recently'), often for up to a "
                            "day; download img_align_celeba.zip by hand from "
                            "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html to data/celeba/img_align_celeba.zip, "
                            "attach CelebA on Kaggle, or use --src / --synthetic N") from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"download of CelebA failed ({type(err).__name__}: {first}); {DOWNLOAD_ADVICE}") from None
    return root / "celeba" / "img_align_celeba"


# --------------------------------------------------------------------------- #
# Partitions and attribute labels, from the files beside the images
# --------------------------------------------------------------------------- #
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
