"""Put a face photo into the generator: align it as CelebA was, find the latent
z whose face is closest (projection), tune a copy of the generator around
that z so the same person comes back, then edit it by name.

    python projector.py me.jpg                                   # projections/me/{target,projected,compare}.png, z.npy, generator.params
    python projector.py a.jpg b.png --edit "Smiling=+3" --sweep Male  # + edited.png, sweep_Male.png
    python projector.py me.jpg --steps 0                         # the aligned 64 px face alone (target.png)
    python generator.py --params projections/me/generator.params --latents projections/me/z.npy --edit Smiling=+3

Per photo: ``target.png`` (the aligned face at the generator's size),
``projected.png``, ``compare.png`` (target | projection | named edits),
``z.npy`` (the latent, (nz,) float32) and, with tuning on (``--tune-steps``,
the default), ``generator.params`` (the tuned EMA weights, recording the
fingerprint of the generator it was tuned from, so the base generator's
directions, copied beside it, apply) with those directions; one JSON line per
photo in ``results.jsonl`` (PSNR, SSIM, seconds, the face's box and eye
distance, the settings). At 64 px a projection is a close relative of the
person, not a copy. Method and measurements: docs/projection.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import utils
from editing.directions import (EDIT_EXAMPLE, carry_directions, directions_path, load_directions, parse_edit,
                                read_directions, weights_fingerprint)
from editing.projection import as_target, project_z, psnr, ssim, tune_generator
from network import load_generator, save_generator_params
from preprocessing.align import align_face, crop_face
from preprocessing.photo import read_photo_file
from utils.paths import PRETRAINED_PARAMS, shown

COMPARE_EDITS = ("Smiling", "Male", "Eyeglasses")  # compare.png turns each of these on (or off, if present)
EDIT_STRENGTH = 3.0
SWEEP_MAX = 3.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter)
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="JPEG, PNG or WebP photos with a face")
    parser.add_argument("--params", default=shown(PRETRAINED_PARAMS),
                        help="generator.params, a bare state_dict, or an export (a folder or .safetensors)")
    parser.add_argument("--out", default="projections", help="one folder per photo in here, and results.jsonl")
    parser.add_argument("--steps", type=int, default=150, help="Adam steps on z (0: write the aligned target alone)")
    parser.add_argument("--tune-steps", type=int, default=100,
                        help="Adam steps tuning the generator around z (0: z alone, no generator.params)")
    parser.add_argument("--restarts", type=int, default=2, help="starting points of z per photo, the best kept")
    parser.add_argument("--candidates", type=int, default=256, help="random z the starting points are picked from")
    parser.add_argument("--ssim-weight", type=float, default=0.0, help="loss = pixel MSE + this x (1 - SSIM)")
    parser.add_argument("--locality", type=float, default=0.1,
                        help="weight keeping the tuned generator equal to the original around z, in random "
                             "directions and along the named ones (0: plain PTI)")
    parser.add_argument("--radius", type=float, default=3.0, help="distance from z of the latents --locality holds")
    parser.add_argument("--edit", metavar="EDITS", default=None,
                        help=f'also write edited.png: the projection moved along named directions, e.g. '
                             f'"{EDIT_EXAMPLE}" (default: off)')
    parser.add_argument("--sweep", metavar="NAMES", default=None,
                        help=f"also write sweep_NAME.png per name: the projection from -{SWEEP_MAX:g} to "
                             f"+{SWEEP_MAX:g} along it (default: off)")
    parser.add_argument("--sweep-steps", type=int, default=7, help="faces per --sweep, ends included")
    parser.add_argument("--face", type=int, default=1, help="which face of a photo with several: 1 the largest")
    parser.add_argument("--seed", type=int, default=0, help="random starting points, noise and locality latents")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    return parser


def check_args(args) -> None:
    """Bad values -> one UserError before any work."""
    for name in ("steps", "tune_steps"):
        if getattr(args, name) < 0:
            raise utils.UserError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(args, name)})")
    if args.restarts < 1 or args.candidates < args.restarts:
        raise utils.UserError(f"--restarts must be at least 1 and at most --candidates (got {args.restarts} of "
                              f"{args.candidates})")
    if args.face < 1:
        raise utils.UserError(f"--face must be 1 (the largest face) or more (got {args.face})")
    if args.sweep_steps < 2:
        raise utils.UserError(f"--sweep-steps must be at least 2 (got {args.sweep_steps})")
    if not (args.ssim_weight >= 0 and args.locality >= 0 and args.radius > 0):
        raise utils.UserError("--ssim-weight and --locality must be 0 or more, --radius more than 0")
    missing = [p for p in args.photos if not Path(p).is_file()]
    if missing:
        raise utils.UserError(f"photo not found: {missing[0]}")
    if not Path(args.params).exists():
        raise utils.UserError(f"params not found: {args.params} (the pretrained generator is "
                              f"{shown(PRETRAINED_PARAMS)})")


def folder_names(photos) -> list[str]:
    """One output folder name per photo: its stem, made unique (me, me-2, ...)."""
    names, seen = [], {}
    for photo in photos:
        stem = Path(photo).stem or "photo"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def quantized(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to what their PNG holds, back in [-1, 1]."""
    return utils.quantize(images).float() / 127.5 - 1


def compare_edits(z: torch.Tensor, book, extra) -> list[tuple[str, torch.Tensor]]:
    """The named edits compare.png shows: ``extra`` ([(label, offset)], the --edit) first, then
    each of COMPARE_EDITS turned on, or off where the projection leans to it
    already (z . direction > 0)."""
    out = list(extra)
    for name in COMPARE_EDITS:
        if name in book.names:
            d = book.vector(name)
            strength = -EDIT_STRENGTH if float(z @ d) > 0 else EDIT_STRENGTH
            out.append((f"{name}{strength:+g}", strength * d))
    return out


@torch.no_grad()
def render(generator, z: torch.Tensor) -> np.ndarray:
    """uint8 (N, S, S, 3) faces of latents (N, nz)."""
    return utils.to_uint8(generator(z))


def project_photo(photo, name: str, out: Path, generator, config: dict, book, blob, args, edits,
                  sweeps) -> dict | None:
    """Align, project, tune and write one photo's folder -> its results row (None with --steps 0)."""
    start, cpu = time.perf_counter(), time.process_time()
    aligned, info = align_face(read_photo_file(photo), face=args.face)
    face = crop_face(aligned, config["size"])
    seconds_align = time.perf_counter() - start
    folder = out / name
    utils.save_png(np.asarray(face), folder / "target.png")
    if args.steps == 0:
        return None
    device = next(generator.parameters()).device
    target = as_target(face, device)
    # ---- the pivot z, then the generator tuned around it ----
    z = project_z(generator, target, steps=args.steps, candidates=args.candidates, restarts=args.restarts,
                  ssim_weight=args.ssim_weight, seed=args.seed, progress=f"{name}: z")
    tuned = generator
    if args.tune_steps:
        tuned = tune_generator(generator, z[0], target[0], steps=args.tune_steps, ssim_weight=args.ssim_weight,
                               locality=args.locality, radius=args.radius, seed=args.seed,
                               directions=None if book is None else book.vectors,
                               progress=f"{name}: tuning")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    # ---- what it wrote, and how close it came ----
    with torch.no_grad():
        projected = tuned(z)
        first = generator(z)
    q, qz = quantized(projected), quantized(first)
    with utils.atomic_path(folder / "z.npy", suffix=".tmp.npy") as tmp:
        np.save(tmp, z[0].cpu().numpy().astype(np.float32))
    utils.save_png(utils.to_uint8(projected)[0], folder / "projected.png")
    if args.tune_steps:
        save_tuned(folder / "generator.params", tuned, config, generator, photo, settings(args, book))
        carry_directions(blob, folder / "generator.params")
    faces, labels = [np.asarray(face), utils.to_uint8(projected)[0]], ["photo", "projection"]
    if book is not None:
        for label, offset in compare_edits(z[0].cpu(), book, [(args.edit.strip(), book.offset(edits))] if edits else []):
            faces.append(render(tuned, z + offset.to(device))[0])
            labels.append(label)
        if edits:
            utils.save_png(render(tuned, z + book.offset(edits).to(device))[0], folder / "edited.png")
        for sweep in sweeps:
            strengths = torch.linspace(-SWEEP_MAX, SWEEP_MAX, args.sweep_steps)[:, None]
            row = render(tuned, z + strengths.to(device) * book.vector(sweep).to(device))
            utils.save_png(utils.image_grid(row, nrow=args.sweep_steps), folder / f"sweep_{sweep}.png")
    utils.save_png(utils.titled_blocks([(" | ".join(labels), utils.image_grid(np.stack(faces), nrow=len(faces)))]),
                   folder / "compare.png")
    return {"photo": str(photo), "folder": str(folder), "psnr": round(psnr(q, target).item(), 3),
            "ssim": round(ssim(q, target).item(), 4), "psnr_z": round(psnr(qz, target).item(), 3),
            "ssim_z": round(ssim(qz, target).item(), 4), "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2), "threads": torch.get_num_threads(),
            "seconds_align": round(seconds_align, 2), "box": list(info["box"]), "eye_distance": info["eye_distance"],
            "faces": info["faces"], "face": info["face"], "aligned_input": info["aligned_input"],
            "params": str(args.params), "settings": settings(args, book), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def directions(params, generator, config: dict, required: bool):
    """(the named directions of ``params``'s generator, their record to copy
    beside a tuned copy), or (None, None) when there are none for it and
    ``required`` is False (compare.png then shows no edits)."""
    path = directions_path(params)
    if not required and not path.is_file():
        return None, None
    try:
        book = load_directions(params, generator, config["weights"], tuned_from=config.get("tuned_from"))
    except utils.UserError:
        if required:
            raise
        return None, None
    return book, read_directions(path, params)


def settings(args, book) -> dict:
    """The method's settings, as recorded in results.jsonl and the tuned params
    (``held``: the named directions the locality term held too)."""
    return {"steps": args.steps, "tune_steps": args.tune_steps, "restarts": args.restarts,
            "candidates": args.candidates, "ssim_weight": args.ssim_weight, "locality": args.locality,
            "radius": args.radius, "held": [] if book is None else list(book.names), "seed": args.seed}


def save_tuned(path: Path, tuned, config: dict, base, photo, tuning: dict) -> None:
    """The tuned EMA weights as generator.params, its config recording
    ``tuned_from`` (the base weights' fingerprint: their directions apply)."""
    record = {k: v for k, v in config.items() if k != "weights"}
    record.update(weights="ema", tuned_from=config.get("tuned_from") or weights_fingerprint(base),
                  tuned_for=Path(photo).name,
                  tuning=tuning)
    save_generator_params(path, record, None, tuned.state_dict())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    edits = parse_edit(args.edit) if args.edit else []
    sweeps = [n.strip() for n in args.sweep.split(",") if n.strip()] if args.sweep else []
    device = utils.resolve_device(args.device)
    generator, config = load_generator(args.params, device)
    book, blob = directions(args.params, generator, config, required=bool(edits or sweeps))
    for name, _ in edits:
        book.vector(name)
    for name in sweeps:
        book.vector(name)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise utils.UserError(f"--out {out} exists and is not a folder")
    print(f"{args.params}: {config['size']} px, nz {config['nz']}; z {args.steps} steps x {args.restarts} "
          f"restarts, tuning {args.tune_steps} steps (locality {args.locality:g} at radius {args.radius:g}); "
          f"device {device}")
    for photo, name in tqdm(list(zip(args.photos, folder_names(args.photos))), desc="photos", unit="photo",
                            disable=len(args.photos) == 1):
        row = project_photo(photo, name, out, generator, config, book, blob, args, edits, sweeps)
        if row is None:
            print(f"wrote {out / name / 'target.png'}: the aligned face")
            continue
        utils.append_jsonl(row, out / "results.jsonl")
        print(f"wrote {out / name}: PSNR {row['psnr']:.1f} dB, SSIM {row['ssim']:.3f} (z alone {row['psnr_z']:.1f} dB), "
              f"{row['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
