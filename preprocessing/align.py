"""A photo -> a face aligned as CelebA's img_align_celeba (178x218), then the
project's CelebA face box: exactly the kind of input the generator trained on.

    from preprocessing import align
    aligned, info = align.align_face(photo_bytes)          # the largest face; info["faces"] says how many
    aligned, info = align.align_face("group.jpg", face=2)  # the second largest
    target = align.crop_face(aligned, 64)                  # preprocess.py's crop and resize, 64x64 RGB

How (measured in docs/alignment.md, re-run with ``python -m benchmarks.alignment``):
facenet-pytorch's MTCNN (its weights ship inside its wheel) finds each face's
five landmarks, averaged with those found on the mirrored photo; a
least-squares similarity (rotation, one scale, shift) takes the two eye
centres and the mouth centre (mean of the mouth corners) to ``TEMPLATE``, their
place on CelebA's 178x218 canvas, and the photo is warped onto that canvas
(bicubic, the border replicating the photo's edge pixels, as CelebA's aligned
images show the photo's surroundings, never black corners). Photos already
aligned as CelebA (178x218, or the 89x109 half-size copies, enlarged x2) skip
detection and need no facenet-pytorch.

Install the detector with ``pip install --no-deps -r requirements-photo.txt``
(its metadata pins an old torch; --no-deps keeps ours). Errors are one-line
UserErrors: not an image (see preprocessing.photo), no face found, the face too
small (its eye distance and ``MIN_EYE_DISTANCE``), ``face=K`` out of range.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from preprocessing.celeba import CELEBA_CROP, CELEBA_IMAGE_SIZE, celeba_scale
from preprocessing.decode import face_box, to_rgb
from preprocessing.photo import read_photo, read_photo_file
from utils import UserError

try:  # the face detector is an optional extra (requirements-photo.txt); aligned photos work without it
    from facenet_pytorch import MTCNN
except ImportError:
    MTCNN = None

INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"  # --no-deps: its metadata pins an old torch
CANVAS = CELEBA_IMAGE_SIZE   # (178, 218): CelebA's aligned canvas, width x height
HALF = (89, 109)             # the half-size copies of it, accepted as aligned too

# Where MTCNN (this module's detector, mirror-averaged) finds the five landmarks on CelebA's own aligned
# images: the mean over 600 of them (celeba_sample, the first 600 by name; none of the 200 held-out faces
# the alignment is measured on); std per point 1.3-1.9 px for the eyes, 1.0 / 1.7 px (x / y) for the mouth
# centre, 4-6 px for the nose. Measuring the template with the same detector shares its bias between photo
# and template. Rows: left eye, right eye, nose, left mouth corner, right mouth corner (left = the image's
# left), in PIL's pixel convention (pixel i spans [i, i + 1)).
TEMPLATE5 = np.array([[69.64, 111.71], [108.50, 111.76], [88.65, 136.31], [71.73, 153.06], [106.34, 153.10]])
TEMPLATE = np.array([TEMPLATE5[0], TEMPLATE5[1], (TEMPLATE5[3] + TEMPLATE5[4]) / 2])  # eyes, mouth centre
TEMPLATE_EYE_DISTANCE = float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))               # 38.9 px

# A face with fewer px between the eyes is refused. CelebA's 38.9 px become 17.8 px in the 64 px crop, so at
# 16 px the 64 px target is upsampled at most ~1.1x. Measured (docs/alignment.md, 60 held-out faces moved to
# that eye distance and realigned, mean grey-level difference at 64 px): by the exact inverse 2.45 at 18 px,
# 2.84 at 16, 3.48 at 14, 4.91 at 12; through MTCNN ~11-12 down to 14 px, 13.4 at 12, 14.7 at 8.
MIN_EYE_DISTANCE = 16.0
DETECT_MAX_SIDE = 1024  # detection runs on a copy shrunk to this longest side (4000x3000: 1.2 s instead of 17 s)
MIN_PROBABILITY = 0.90  # MTCNN's final score below which a detection is not a face
MIN_FACE_SIZE = 20      # px, MTCNN's smallest face box searched for (its default)

_DETECTOR = None  # the MTCNN, built once per process on first use
_DETECTOR_LOCK = threading.Lock()


# --------------------------------------------------------------------------- #
# Detection: an RGB image -> faces, each {"box": (x0, y0, x1, y1), "score": p,
# "landmarks": 5x2 (eyes, nose, mouth corners)}, in the image's pixel convention
# --------------------------------------------------------------------------- #
def get_detector():
    """facenet-pytorch's MTCNN on the CPU, built on first use and kept (about 0.1 s)."""
    global _DETECTOR
    if MTCNN is None:
        raise UserError(f"face detection needs facenet-pytorch: {INSTALL} (photos already aligned as CelebA, "
                        "178x218, work without it)")
    with _DETECTOR_LOCK:
        if _DETECTOR is None:
            _DETECTOR = MTCNN(keep_all=True, device="cpu", post_process=False, min_face_size=MIN_FACE_SIZE)
    return _DETECTOR


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mtcnn_faces(img: Image.Image) -> list[dict]:
    """One MTCNN pass: the faces scoring at least ``MIN_PROBABILITY``."""
    boxes, probs, points = get_detector().detect(img, landmarks=True)
    if boxes is None:
        return []
    # MTCNN reports 1-based positions (its MATLAB heritage; measured 0.5-0.6 px): -0.5 to PIL's convention
    return [{"box": np.asarray(b, float) - 0.5, "score": float(p), "landmarks": np.asarray(lm, float) - 0.5}
            for b, p, lm in zip(boxes, probs, points) if p is not None and p >= MIN_PROBABILITY]


def detect_faces(img: Image.Image, max_side: int = DETECT_MAX_SIDE, mirror: bool = True) -> list[dict]:
    """All faces in ``img`` (RGB), largest box first, in ``img``'s coordinates. A photo larger than
    ``max_side`` is searched on a shrunk copy and the results scaled back. With ``mirror`` each face's
    landmarks are averaged with those found on the mirrored photo (mirrored back, left and right
    swapped): 11.9 -> 10.9 grey levels on moved faces, for twice the time (docs/alignment.md)."""
    width, height = img.size
    scale = min(1.0, max_side / max(width, height))
    small = img
    if scale < 1.0:
        small = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR,
                           reducing_gap=3.0)
    faces = mtcnn_faces(small)
    if mirror and faces:
        w = small.width
        mirrored = mtcnn_faces(ImageOps.mirror(small))
        for f in mirrored:
            x0, y0, x1, y1 = f["box"]
            f["box"] = np.array([w - x1, y0, w - x0, y1])
            f["landmarks"][:, 0] = w - f["landmarks"][:, 0]
            f["landmarks"] = f["landmarks"][[1, 0, 2, 4, 3]]
        for f in faces:
            best = max(mirrored, key=lambda g: iou(f["box"], g["box"]), default=None)
            if best is not None and iou(f["box"], best["box"]) > 0.5:
                f["landmarks"] = (f["landmarks"] + best["landmarks"]) / 2
    sx, sy = width / small.width, height / small.height
    for f in faces:
        x0, y0, x1, y1 = f["box"]
        f["box"] = (float(x0 * sx), float(y0 * sy), float(x1 * sx), float(y1 * sy))
        f["landmarks"] = f["landmarks"] * np.array([sx, sy])
    faces.sort(key=lambda f: -(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
    return faces


# --------------------------------------------------------------------------- #
# Geometry: 2x3 matrices mapping (x, y) -> (x', y'), PIL's pixel convention
# --------------------------------------------------------------------------- #
def similarity(src, dst) -> np.ndarray:
    """The least-squares similarity (x' = a x - b y + c, y' = b x + a y + d; no reflection) taking the
    points ``src`` (n x 2) to ``dst`` (n x 2), as a 2x3 matrix (Umeyama's problem, solved linearly)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    n = len(src)
    a = np.zeros((2 * n, 4))
    a[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)]
    a[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(n), np.ones(n)]
    p, q, c, d = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)[0]
    return np.array([[p, -q, c], [q, p, d]])


def apply(m, points) -> np.ndarray:
    """The points (n x 2) moved by the 2x3 matrix ``m``."""
    return np.asarray(points, float) @ np.asarray(m)[:, :2].T + np.asarray(m)[:, 2]


def invert(m) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    linear = np.linalg.inv(np.asarray(m)[:, :2])
    return np.c_[linear, -linear @ np.asarray(m)[:, 2]]


def compose(m2, m1) -> np.ndarray:
    """The 2x3 matrix of ``m1`` then ``m2``."""
    return (np.vstack([m2, [0, 0, 1]]) @ np.vstack([m1, [0, 0, 1]]))[:2]


def warp(img: Image.Image, m, size=CANVAS) -> Image.Image:
    """``img`` moved by ``m`` (image -> output) onto a ``size`` canvas: bicubic, the border replicating
    the image's edge pixels. Only the region that lands on the canvas is cut out (box-reduced by an
    integer factor when it shrinks over 2x, so bicubic never aliases), so memory stays about the canvas."""
    inv = invert(m)  # output -> image
    width, height = size
    corners = apply(inv, [[0, 0], [width, 0], [0, height], [width, height]])
    scale = math.sqrt(abs(np.linalg.det(inv[:, :2])))  # image pixels per output pixel
    k = int(scale) if scale >= 2 else 1
    margin = 3 * max(1.0, scale)
    rx0, ry0 = np.floor(corners.min(0) - margin).astype(int)
    rx1, ry1 = np.ceil(corners.max(0) + margin).astype(int)
    # the part of that region inside the image, reduced by k, then edge-padded to the whole region
    ix0, iy0 = max(0, min(rx0, img.width - 1)), max(0, min(ry0, img.height - 1))
    ix1, iy1 = min(img.width, max(rx1, ix0 + 1)), min(img.height, max(ry1, iy0 + 1))
    patch = img.crop((ix0, iy0, ix1, iy1))
    if k > 1:
        patch = patch.reduce(k)
    array = np.asarray(patch)
    left, top = max(0, math.ceil((ix0 - rx0) / k)), max(0, math.ceil((iy0 - ry0) / k))
    right, bottom = max(0, math.ceil((rx1 - ix1) / k) + 1), max(0, math.ceil((ry1 - iy1) / k) + 1)
    if left or top or right or bottom:
        array = np.pad(array, ((top, bottom), (left, right)) + (((0, 0),) if array.ndim == 3 else ()), mode="edge")
    # output -> padded patch: u = (x - ix0) / k + left
    to_patch = np.array([[1 / k, 0, left - ix0 / k], [0, 1 / k, top - iy0 / k]])
    full = compose(to_patch, inv)
    return Image.fromarray(array).transform(size, Image.AFFINE, tuple(full.reshape(-1)), resample=Image.BICUBIC)


# --------------------------------------------------------------------------- #
# The face box and alignment
# --------------------------------------------------------------------------- #
def crop_face(aligned: Image.Image, size: int = 64) -> Image.Image:
    """The project's CelebA face box (preprocess.py's: 140 px of 178x218, scaled with a half-size
    canvas), cut out exactly and resized with LANCZOS to ``size`` x ``size``, the same steps as
    ``preprocessing.decode.load_image`` on a decoded image. RGB PIL image."""
    if celeba_scale(*aligned.size) is None:
        raise UserError(f"crop_face needs a CelebA-aligned image (178x218 or that shape), not "
                        f"{aligned.width}x{aligned.height}: align_face makes one")
    box = face_box(aligned.width, aligned.height, CELEBA_CROP, aligned=True)
    # as load_image: crop the whole pixels around the box, then resize the sub-pixel box inside them
    outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
    return to_rgb(aligned).crop(outer).resize((size, size), Image.LANCZOS, box=inner)


def open_image(image) -> Image.Image:
    """bytes (an upload: read_photo's limits), a path (read_photo_file) or a PIL image -> RGB."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return read_photo(bytes(image))
    if isinstance(image, (str, Path)):
        return read_photo_file(image)
    raise UserError(f"not an image: got {type(image).__name__} (a photo's bytes, its path or a PIL image)")


def is_celeba_aligned(img: Image.Image) -> bool:
    """178x218 or 89x109: CelebA's aligned canvas or its half-size copy."""
    return img.size in (CANVAS, HALF)


def align_face(image, face: int = 1, min_eye_distance: float = MIN_EYE_DISTANCE,
               max_side: int = DETECT_MAX_SIDE, detect_aligned: bool = False):
    """A photo -> (178x218 RGB PIL image aligned as CelebA, info).

    ``image``: its bytes (read as hostile: preprocessing.photo), a path, or a PIL image. ``face`` is
    1-based: 1 the largest face (by detector box area), 2 the next... ``detect_aligned`` detects even
    on a 178x218 photo (the benchmark uses it). ``info``: ``aligned_input`` (True when the photo was
    already aligned and detection was skipped), ``faces`` (how many found), ``face`` (the one used),
    ``box`` (x0, y0, x1, y1 in the photo), ``eye_distance`` (px in the photo), ``landmarks`` (5 x
    [x, y] in the photo: eyes, nose, mouth corners), ``transform`` (2x3, photo -> canvas), ``score``,
    ``photo_size``. One-line UserError: not an image, no face, ``face`` out of range, face too small."""
    img = open_image(image)
    if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or face < 1:
        raise UserError(f"face must be 1 (the largest) or more, not {face!r}")
    if is_celeba_aligned(img) and not detect_aligned:
        if face != 1:
            raise UserError(f"face {face} asked for, but an aligned CelebA-sized photo holds 1 face")
        scale = CANVAS[0] / img.width
        out = img if img.size == CANVAS else img.resize(CANVAS, Image.LANCZOS)
        m = np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
        return out, {"aligned_input": True, "faces": 1, "face": 1, "box": (0, 0, img.width, img.height),
                     "eye_distance": round(TEMPLATE_EYE_DISTANCE / scale, 2),
                     "landmarks": apply(invert(m), TEMPLATE5).round(2).tolist(), "transform": m.tolist(),
                     "score": None, "photo_size": list(img.size)}
    faces = detect_faces(img, max_side)
    if not faces:
        raise UserError(f"no face found in the {img.width}x{img.height} photo (a frontal face, well lit, "
                        f"at least {MIN_EYE_DISTANCE:.0f} px between the eyes)")
    if face > len(faces):
        raise UserError(f"face {face} asked for, but the photo has {len(faces)} face{'s' * (len(faces) != 1)}")
    chosen = faces[face - 1]
    landmarks = chosen["landmarks"]
    eye_distance = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    if eye_distance < min_eye_distance:
        raise UserError(f"the face is too small: {eye_distance:.0f} px between the eyes, at least "
                        f"{min_eye_distance:.0f} px needed (a closer or larger photo)")
    points = np.array([landmarks[0], landmarks[1], (landmarks[3] + landmarks[4]) / 2])
    m = similarity(points, TEMPLATE)
    return warp(img, m), {"aligned_input": False, "faces": len(faces), "face": face,
                          "box": tuple(round(v, 1) for v in chosen["box"]), "eye_distance": round(eye_distance, 2),
                          "landmarks": landmarks.round(2).tolist(), "transform": m.round(6).tolist(),
                          "score": round(chosen["score"], 4), "photo_size": list(img.size)}
