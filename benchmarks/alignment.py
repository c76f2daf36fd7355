"""How well preprocessing.align puts a face back where CelebA has it
(docs/alignment.md holds the method and today's numbers).

    python -m benchmarks.alignment --n 200                      # the moved / own table, ~2 min on one core
    python -m benchmarks.alignment --parts template --template-n 600   # re-measure align.TEMPLATE5
    python -m benchmarks.alignment --parts moved,sweep,timing --out alignment.json

Held-out faces: the LAST --n of the aligned CelebA folder by file name (the template is measured on
the first --template-n, so none of them shaped it). Each is moved by a known random similarity
(rotation U(-20, 20) degrees, scale U(0.6, 1.5), its centre put at the 400x400 canvas's centre +
U(-60, 60) px each way, the border replicating its edge; seed 0) and comes back through the
detector and the warp; the score is the mean absolute grey-level difference (0-255) between the
project's 64 px face crop of the result and that of the original. References on the same moves:
``perfect`` (the exact inverse move: the resampling floor), ``2px`` (the inverse, shifted 2 px),
``none`` (the canvas's centre, unaligned). ``own``: CelebA's own aligned image through detection
(where MTCNN's landmarks and CelebA's annotations differ). Everything stays in memory.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import utils
from benchmarks.harness import machine
from preprocessing import align
from utils.paths import SHARED_DATA

DEFAULT_DATA = SHARED_DATA / "celeba_sample" / "img_align_celeba"
CANVAS = 400  # the side of the square photo each face is moved into
PARTS = ("moved", "sweep", "timing", "template")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a folder of aligned 178x218 CelebA images")
    parser.add_argument("--n", type=int, default=200, help="held-out faces: the last N by name")
    parser.add_argument("--sweep-n", type=int, default=60, help="faces per eye distance in the sweep")
    parser.add_argument("--template-n", type=int, default=600, help="faces the template is measured on: the first N")
    parser.add_argument("--parts", default="moved", help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def grey64(img: Image.Image) -> np.ndarray:
    return np.asarray(align.crop_face(img, 64).convert("L"), dtype=np.float64)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def random_move(rng, scale: float | None = None) -> np.ndarray:
    """A 2x3 similarity putting a 178x218 face somewhere in the CANVAS x CANVAS photo."""
    theta = np.radians(rng.uniform(-20, 20))
    s = rng.uniform(0.6, 1.5) if scale is None else scale
    cx, cy = CANVAS / 2 + rng.uniform(-60, 60, size=2)
    linear = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return np.c_[linear, np.array([cx, cy]) - linear @ np.array([89.0, 109.0])]


def realign(img: Image.Image, **kwargs):
    """(aligned or None, seconds): align_face with no size floor; a refusal counts as a failure."""
    start = time.perf_counter()
    try:
        out, _ = align.align_face(img, min_eye_distance=0, **kwargs)
    except utils.UserError:
        out = None
    return out, time.perf_counter() - start


def summarise(name: str, diffs: list, failures: int, seconds: list) -> dict:
    d = np.array(diffs)
    row = {"condition": name, "n_ok": len(d), "failures": failures,
           "mean": round(float(d.mean()), 2) if len(d) else None,
           "median": round(float(np.median(d)), 2) if len(d) else None,
           "p90": round(float(np.percentile(d, 90)), 2) if len(d) else None,
           "s_per_photo": round(float(np.mean(seconds)), 3) if seconds else None}
    print(f"{name:14s} n={row['n_ok']:4d} fail={failures:3d} mean={row['mean']} median={row['median']} "
          f"p90={row['p90']} s/photo={row['s_per_photo']}", flush=True)
    return row


def part_moved(data: Path, names: list[str]) -> list[dict]:
    """The table: references, detector on moved faces, detector on CelebA's own."""
    rng = np.random.default_rng(0)
    keys = ("perfect", "2px", "none", "mtcnn_moved", "mtcnn_own")
    res, fails, secs = {k: [] for k in keys}, dict.fromkeys(keys, 0), {k: [] for k in keys}
    for i, name in enumerate(names):
        orig = Image.open(data / name).convert("RGB")
        ref = grey64(orig)
        m = random_move(rng)
        moved = align.warp(orig, m, (CANVAS, CANVAS))
        inv = align.invert(m)
        res["perfect"].append(diff(grey64(align.warp(moved, inv)), ref))
        phi = rng.uniform(0, 2 * np.pi)
        off = inv.copy()
        off[:, 2] += 2 * np.array([np.cos(phi), np.sin(phi)])
        res["2px"].append(diff(grey64(align.warp(moved, off)), ref))
        c0 = CANVAS // 2 - 70
        centre = moved.resize((64, 64), Image.LANCZOS, box=(c0, c0, c0 + 140, c0 + 140))
        res["none"].append(diff(np.asarray(centre.convert("L"), np.float64), ref))
        for key, img, kwargs in (("mtcnn_moved", moved, {}), ("mtcnn_own", orig, {"detect_aligned": True})):
            got, sec = realign(img, **kwargs)
            secs[key].append(sec)
            if got is None:
                fails[key] += 1
            else:
                res[key].append(diff(grey64(got), ref))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(names)}", {k: round(float(np.mean(v)), 2) for k, v in res.items() if v}, flush=True)
    return [summarise(k, res[k], fails[k], secs[k]) for k in keys]


def part_sweep(data: Path, names: list[str]) -> list[dict]:
    """The error against the face's eye distance in the photo: moved to that size, then realigned
    by the exact inverse (the resampling floor) and by the detector."""
    rng = np.random.default_rng(1)
    rows = []
    for eyes in (8, 10, 12, 14, 16, 18, 20, 24, 30, 39):
        perfect, detected, failures = [], [], 0
        for name in names:
            orig = Image.open(data / name).convert("RGB")
            ref = grey64(orig)
            m = random_move(rng, scale=eyes / align.TEMPLATE_EYE_DISTANCE)
            moved = align.warp(orig, m, (CANVAS, CANVAS))
            perfect.append(diff(grey64(align.warp(moved, align.invert(m))), ref))
            got, _ = realign(moved)
            if got is None:
                failures += 1
            else:
                detected.append(diff(grey64(got), ref))
        row = {"eye_distance_px": eyes, "perfect": round(float(np.mean(perfect)), 2),
               "mtcnn": round(float(np.mean(detected)), 2) if detected else None, "mtcnn_fail": failures}
        print("  sweep", row, flush=True)
        rows.append(row)
    return rows


def part_timing(data: Path, names: list[str]) -> list[dict]:
    """Seconds per photo at three photo sizes, with and without the shrink-for-detection."""
    rng = np.random.default_rng(2)
    orig = Image.open(data / names[0]).convert("RGB")
    ref = grey64(orig)
    rows = []
    for (width, height), eyes in (((640, 480), 60), ((2000, 1500), 180), ((4000, 3000), 360)):
        m = random_move(rng, scale=eyes / align.TEMPLATE_EYE_DISTANCE)
        m[:, 2] += np.array([width / 2 - CANVAS / 2, height / 2 - CANVAS / 2])
        photo = align.warp(orig, m, (width, height))
        for max_side in (align.DETECT_MAX_SIDE, 100_000) if max(width, height) > align.DETECT_MAX_SIDE else \
                (align.DETECT_MAX_SIDE,):
            times, diffs = [], []
            for _ in range(3):
                got, sec = realign(photo, max_side=max_side)
                times.append(sec)
                if got is not None:
                    diffs.append(diff(grey64(got), ref))
            row = {"photo": f"{width}x{height}", "eye_px": eyes, "max_side": max_side,
                   "s_median": round(float(np.median(times)), 3),
                   "diff": round(float(np.mean(diffs)), 2) if diffs else None}
            print("  timing", row, flush=True)
            rows.append(row)
    return rows


def part_template(data: Path, names: list[str]) -> dict:
    """The mean landmarks (mirror-averaged MTCNN, the largest face) on CelebA's own aligned images:
    what align.TEMPLATE5 holds."""
    points, counts = [], []
    for name in names:
        faces = align.detect_faces(Image.open(data / name).convert("RGB"))
        counts.append(len(faces))
        if faces:
            points.append(faces[0]["landmarks"])
    points = np.array(points)
    mouth = (points[:, 3] + points[:, 4]) / 2
    out = {"n": len(points), "faces_per_image": np.bincount(counts).tolist(),
           "mean5": points.mean(0).round(2).tolist(), "std5": points.std(0).round(2).tolist(),
           "mouth_centre_std": mouth.std(0).round(2).tolist()}
    print("template", out, flush=True)
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise utils.UserError(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    data = Path(args.data)
    if not data.is_dir():
        raise utils.UserError(f"--data {data} not found (a folder of aligned 178x218 CelebA images)")
    names = sorted(n for n in os.listdir(data) if n.lower().endswith((".jpg", ".png")))
    if len(names) < args.n + 1:
        raise utils.UserError(f"--data holds {len(names)} images; --n {args.n} needs more")
    torch.set_num_threads(args.threads)
    align.get_detector()
    held_out = names[-args.n:]
    out = {"machine": machine(gpu=False), "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
           "held_out": f"last {args.n} of {data.name} by name ({held_out[0]}..{held_out[-1]})"}
    if "moved" in parts:
        out["moved"] = part_moved(data, held_out)
    if "sweep" in parts:
        out["sweep"] = part_sweep(data, held_out[:args.sweep_n])
    if "timing" in parts:
        out["timing"] = part_timing(data, held_out)
    if "template" in parts:
        out["template"] = part_template(data, names[:-args.n][:args.template_n])
    if args.out:
        utils.save_json(out, args.out)
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
