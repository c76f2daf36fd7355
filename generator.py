"""Sample faces from a trained generator: one PNG per image plus a grid, and
optionally a grid (or GIF) of smooth latent walks; or the DCGAN paper's face
arithmetic.

    python generator.py -n 64                                   # samples/000000.png ... + samples/grid.png
    python generator.py -n 16 --params runs/x/generator.params --seed 7 --no-ema
    python generator.py -n 8 --interpolate 6 --out walks       # + walks/interpolation.png (6 walks)
    python generator.py --interpolate 16 --gif                 # + samples/interpolation.gif (16 faces walking)
    python generator.py --arithmetic "3,17,42 - 5,8,9 + 11,23,31"  # samples/arithmetic.png (paper's fig. 7)
    python generator.py --params assets/celeba_64.params --edit "Smiling=+3,Eyeglasses=+2"  # the same faces, edited
    python generator.py --params assets/celeba_64.params -n 8 --sweep Smiling  # samples/sweep_Smiling.png
    python generator.py --params assets/celeba_64.params --export celeba_64  # model.safetensors, config.json, README.md
    python generator.py --params projections/me/generator.params --latents projections/me/z.npy --edit Smiling=+3

Image k comes from its own random generator seeded with ``seed + k`` (the
per-seed generators of NVlabs EDM), so it is the same whatever
``--batch-size`` is (bit-identical on CPU with one thread, tested; with several
threads, or on a GPU where cuDNN may pick other kernels for other batch shapes,
a rare pixel can move by one level). ``--params`` may be our ``generator.params`` (config +
raw and EMA weights) or a bare generator state_dict as the classic DCGAN code
saves it (``torch.save(netG.state_dict(), path)``; the size is then inferred
from the weight shapes), or an export: a folder ``--export DIR`` wrote or a
``.safetensors``. ``--edit`` and ``--sweep`` move latents along the
named directions ``attributes.py directions`` stored beside the params
(``<params stem>.directions.npz``). ``--latents Z.npy`` renders saved latents
instead of seeds (one (nz,) or a stack (N, nz), such as projector.py's z.npy);
a generator projector.py tuned takes the directions of the one it was tuned from.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import utils
from editing.classifier import load_classifier
from editing.directions import (EDIT_EXAMPLE, carry_directions, directions_for, load_directions, parse_edit,
                                weights_fingerprint)
from editing.latents import (ARITH_EXAMPLE, CONCEPT_EXAMPLE, CONCEPT_POOL, CONCEPT_TOP, ConceptPool, arithmetic_latents,
                             condition_names, latents, parse_arithmetic, slerp)
from export import model_card
from export.weights import EXPORT_SUFFIXES, save_weights, write_folder
from network import export_ema, load_generator
from utils.paths import CLASSIFIER, PRETRAINED_PARAMS, shown

try:  # optional: --export PATH.onnx needs onnx (requirements-export.txt)
    from export.onnx_export import export_onnx
except ImportError as missing:
    export_onnx, ONNX_MISSING = None, f"the {missing.name or 'onnx'} module"

GRID_MAX = 64  # grid.png shows the first 64 images; every image still gets its own PNG
ARITH_VARIATIONS = 8  # noisy copies of the result in arithmetic.png's second row
SWEEP_MAX = 3.0  # --sweep goes from -SWEEP_MAX to +SWEEP_MAX along the direction


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter
    )
    parser.add_argument("-n", "--num", type=int, default=64, help="number of images to write")
    parser.add_argument("--params", default="generator.params",
                        help="generator.params, a bare state_dict, or an export (a folder or .safetensors)")
    parser.add_argument("--out", default="samples", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA weights")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (no effect on pixels)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--interpolate", type=int, default=0, metavar="K",
                        help="also write interpolation.png: K walks (rows) between random latents")
    parser.add_argument("--interp-steps", type=int, default=10, help="frames per walk, endpoints included")
    parser.add_argument("--arithmetic", metavar="EXPR",
                        help=f'latent arithmetic (DCGAN paper, fig. 7), e.g. "{ARITH_EXAMPLE}" or, by concept, '
                             f'"{CONCEPT_EXAMPLE}": a seed list is the mean of those seeds\' latents (seed s is '
                             f"image s of a --seed 0 run), an attribute condition (~ = without) the mean latent of "
                             f"the --concept-top faces --classifier puts most confidently under it among "
                             f"{CONCEPT_POOL} sampled ones; writes only arithmetic.png: the concepts' mean faces "
                             f"and the result, then {ARITH_VARIATIONS} copies of the result with noise added "
                             f"(default: off)")
    parser.add_argument("--classifier", default=shown(CLASSIFIER),
                        help="attribute classifier (`attributes.py train`) for --arithmetic's attribute conditions")
    parser.add_argument("--concept-top", type=int, default=CONCEPT_TOP,
                        help="faces each attribute condition of --arithmetic averages")
    parser.add_argument("--arith-noise", type=float, default=0.25,
                        help="standard deviation of the noise added to the result's latent in the second row")
    parser.add_argument("--export", metavar="PATH", default=None,
                        help="write --params's EMA weights (else its raw ones) and stop: DIR a Hugging Face-style "
                             "folder (model.safetensors, config.json, README.md model card, directions); "
                             "PATH.safetensors the bare weights, config inside; PATH.onnx for onnxruntime; "
                             "PATH.params the EMA weights alone as generator.params")
    parser.add_argument("--gif", action="store_true",
                        help="with --interpolate: also write interpolation.gif, a looping animation of the walks "
                             "(frame t: every walk at step t)")
    parser.add_argument("--edit", metavar="EDITS", default=None,
                        help=f'move every latent along named directions, e.g. "{EDIT_EXAMPLE}" (the same seeds '
                             f"as without it); needs the <params stem>.directions.npz that `attributes.py "
                             f"directions` writes beside --params (default: off)")
    parser.add_argument("--sweep", metavar="NAMES", default=None,
                        help=f"comma-separated direction names: writes only sweep_NAME.png each, one row per "
                             f"sample (-n), from -{SWEEP_MAX:g} to +{SWEEP_MAX:g} along the direction "
                             f"(after --edit), and with several names sweeps.png, all of them under their names "
                             f"(default: off)")
    parser.add_argument("--sweep-steps", type=int, default=7, help="faces per --sweep row, ends included")
    parser.add_argument("--latents", metavar="Z.npy", default=None,
                        help="render these saved latents ((nz,) or (N, nz) float, e.g. projector.py's z.npy) "
                             "instead of seeds: image k is row k; -n is ignored (default: off)")
    return parser


def read_latents(path, nz: int) -> torch.Tensor:
    """--latents: a .npy of one latent (nz,) or a stack (N, nz) -> float32 (N, nz), or a UserError."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise utils.UserError(f"--latents {path}: not a .npy array of latents ({str(err).splitlines()[0][:100]})") from None
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != nz or not len(z) or not np.issubdtype(z.dtype, np.floating):
        raise utils.UserError(f"--latents {path} holds a {z.dtype} array of shape {z.shape}; this generator needs "
                              f"({nz},) or (N, {nz}) floats")
    if not np.isfinite(z).all():
        raise utils.UserError(f"--latents {path} holds NaN or infinite values")
    return torch.from_numpy(z.astype(np.float32))


def write_arithmetic(generator, nz: int, terms, out: Path, seed: int, noise: float, device,
                     batch_size: int, pool: ConceptPool | None = None, top: int = CONCEPT_TOP) -> Path:
    """arithmetic.png: first row the concepts' mean faces, then the result; second
    row ARITH_VARIATIONS copies of the result with Gaussian noise (std ``noise``,
    drawn from ``seed``) added to its latent, as the DCGAN paper's figure 7."""
    means, result = arithmetic_latents(terms, nz, pool, top)
    jitter = noise * torch.randn(ARITH_VARIATIONS, nz, generator=torch.Generator().manual_seed(seed))
    z = torch.cat([means, result[None], result + jitter])
    images = np.concatenate(list(generate(generator, z, device, batch_size)))
    width = max(len(terms) + 1, ARITH_VARIATIONS)
    blank = np.zeros((width - len(terms) - 1, *images.shape[1:]), np.uint8)
    rows = np.concatenate([images[: len(terms) + 1], blank, images[len(terms) + 1 :]])
    path = out / "arithmetic.png"
    utils.save_png(utils.image_grid(rows, nrow=width), path)
    return path


@torch.no_grad()
def generate(generator, z: torch.Tensor, device, batch_size: int):
    """Yield uint8 NHWC batches for latents z (N, nz), batch_size at a time."""
    for start in range(0, z.shape[0], batch_size):
        yield utils.to_uint8(generator(z[start : start + batch_size].to(device)))


def write_samples(generator, nz: int, n: int, out: Path, seed: int, device, batch_size: int,
                  offset: torch.Tensor | None = None, fixed: torch.Tensor | None = None) -> None:
    """Write out/000000.png ... and out/grid.png (the first GRID_MAX images);
    ``offset`` (nz,), an --edit, is added to every latent; ``fixed`` (n, nz):
    these latents instead of seeds' (--latents)."""
    grid = []
    bar = tqdm(total=n, desc="generate", unit="img")
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        z = latents(range(seed + start, seed + start + count), nz) if fixed is None else fixed[start : start + count]
        (images,) = generate(generator, shifted(z, offset), device, count)
        for k, image in enumerate(images):
            utils.save_png(image, out / f"{start + k:06d}.png")
        if start < GRID_MAX:
            grid.append(images[: GRID_MAX - start])
        bar.update(count)
    bar.close()
    utils.save_png(utils.image_grid(np.concatenate(grid)), out / "grid.png")


def write_interpolation(generator, nz: int, walks: int, steps: int, out: Path, seed: int, device,
                        batch_size: int, gif: bool = False, offset: torch.Tensor | None = None) -> list[Path]:
    """Walk r goes from the latent of seed + 2r to that of seed + 2r + 1 (so
    walk 0 starts at image 0 and ends at image 1 of a run with the same seed);
    interpolation.png has one row per walk, ``steps`` frames a row. ``gif``:
    also interpolation.gif, a looping animation with ``steps`` frames, frame t
    a grid of every walk at step t; ``offset`` is added to every frame's
    latent. -> the paths written."""
    z0 = latents([seed + 2 * r for r in range(walks)], nz)
    z1 = latents([seed + 2 * r + 1 for r in range(walks)], nz)
    z = shifted(slerp(z0, z1, torch.linspace(0, 1, steps)).reshape(walks * steps, nz), offset)
    images = np.concatenate(list(generate(generator, z, device, batch_size)))
    paths = [out / "interpolation.png"]
    utils.save_png(utils.image_grid(images, nrow=steps), paths[0])
    if gif:
        paths.append(out / "interpolation.gif")
        walk = images.reshape(walks, steps, *images.shape[1:])
        utils.save_gif([utils.image_grid(walk[:, t]) for t in range(steps)], paths[1], duration_ms=120,
                       last_ms=1000)
    return paths


def shifted(z: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """z (N, nz) moved by ``offset`` (nz,); no offset: z itself, bit for bit."""
    return z if offset is None else z + offset


def sweep_grid(generator, nz: int, direction: torch.Tensor, n: int, steps: int, seed: int, device, batch_size: int,
               offset: torch.Tensor | None = None, fixed: torch.Tensor | None = None) -> np.ndarray:
    """Row k is image k of a run with this seed (or latent k of ``fixed``;
    moved by ``offset``), from -SWEEP_MAX to +SWEEP_MAX along ``direction`` in
    ``steps`` faces (the middle one of an odd count unmoved)."""
    z = shifted(latents(range(seed, seed + n), nz) if fixed is None else fixed, offset)
    strengths = torch.linspace(-SWEEP_MAX, SWEEP_MAX, steps)
    zs = (z[:, None] + strengths[None, :, None] * direction).reshape(n * steps, nz)
    return utils.image_grid(np.concatenate(list(generate(generator, zs, device, batch_size))), nrow=steps)


def export(params, dst: Path, use_ema: bool = True) -> str:
    """--export: ``params``'s EMA weights (else, or with ``use_ema`` False,
    its raw ones) to ``dst`` in the form its suffix names (a folder without
    one), with the directions made for them; -> the line to print."""
    if dst.resolve() == Path(params).resolve():
        raise utils.UserError("--export PATH must differ from --params (the run keeps its raw weights)")
    if dst.suffix and dst.suffix not in EXPORT_SUFFIXES and not dst.is_dir():
        raise utils.UserError(f"--export {dst}: name a folder (no suffix) or a file ending "
                              f"{', '.join(EXPORT_SUFFIXES)}")
    if dst.suffix == ".params":
        config = export_ema(params, dst)
        return (f"wrote {dst}: the EMA weights of {params} ({config['size']} px, ngf {config['ngf']}, "
                f"step {config.get('step', '?')}), {dst.stat().st_size / 2**20:.1f} MiB")
    if dst.suffix == ".onnx" and export_onnx is None:
        raise utils.UserError(f"--export PATH.onnx needs {ONNX_MISSING}: pip install -r requirements-export.txt")
    generator, config = load_generator(params, use_ema=use_ema)
    blob = directions_for(params, generator)
    what = f"the {'EMA' if config['weights'] == 'ema' else 'raw'} weights of {params}"
    if dst.suffix == ".onnx":
        path = export_onnx(generator, config, dict(zip(blob["names"], blob["vectors"])) if blob else None, dst)
        return f"wrote {path}: {what}" + (f", with {len(blob['names'])} directions" if blob else "")
    if dst.suffix == ".safetensors":
        save_weights(generator.state_dict(), config, dst)
    else:
        facts = model_card.facts_for(weights_fingerprint(generator))
        card = model_card.render(config, dst.name, facts, blob["names"] if blob else [],
                                 sum(p.numel() for p in generator.parameters()))
        write_folder(dst, generator.state_dict(), config, card)
    carried = carry_directions(blob, dst)
    return f"wrote {dst}: {what}" + (f", with its directions ({carried.name})" if carried else "")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.num < 1:
        raise utils.UserError(f"-n must be at least 1 (got {args.num})")
    if args.batch_size < 1:
        raise utils.UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.interpolate < 0:
        raise utils.UserError(f"--interpolate must be 0 (off) or a number of walks (got {args.interpolate})")
    if args.interp_steps < 2:
        raise utils.UserError(f"--interp-steps must be at least 2 (got {args.interp_steps})")
    terms = parse_arithmetic(args.arithmetic) if args.arithmetic is not None else None
    if not args.arith_noise >= 0:
        raise utils.UserError(f"--arith-noise must be 0 or more (got {args.arith_noise})")
    if terms is not None and (args.edit or args.sweep):
        raise utils.UserError("--edit and --sweep move sampled faces; --arithmetic makes its own: use one or "
                              "the other")
    if args.concept_top < 1:
        raise utils.UserError(f"--concept-top must be at least 1 (got {args.concept_top})")
    edits = parse_edit(args.edit) if args.edit else []
    sweeps = [n.strip() for n in args.sweep.split(",") if n.strip()] if args.sweep else []
    if args.sweep is not None and not sweeps:
        raise utils.UserError("--sweep needs a direction name, e.g. --sweep Smiling")
    if args.sweep_steps < 2:
        raise utils.UserError(f"--sweep-steps must be at least 2 (got {args.sweep_steps})")
    if args.latents is not None and (terms is not None or args.interpolate):
        raise utils.UserError("--latents renders saved latents (with --edit or --sweep); --arithmetic and "
                              "--interpolate draw their own")
    if args.gif and not args.interpolate:
        raise utils.UserError("--gif animates the latent walks: add --interpolate K (e.g. --interpolate 16 --gif)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise utils.UserError(f"--out {out} exists and is not a folder")
    if not Path(args.params).exists():
        raise utils.UserError(
            f"params file not found: {args.params}. Sample the pretrained CelebA faces with --params "
            f"{shown(PRETRAINED_PARAMS)}, or train a generator first (`python train.py ...` writes "
            f"generator.params; see README quick start), or pass --params PATH to one (e.g. --params "
            f"runs/<run>/generator.params)")
    if args.export is not None:
        print(export(args.params, Path(args.export), use_ema=not args.no_ema))
        return 0
    device = utils.resolve_device(args.device)
    generator, config = load_generator(args.params, device, use_ema=not args.no_ema)
    offset, directions = None, {}
    if edits or sweeps:
        book = load_directions(args.params, generator, config["weights"], tuned_from=config.get("tuned_from"))
        directions = {name: book.vector(name) for name in sweeps}
        offset = book.offset(edits) if edits else None
    fixed = read_latents(args.latents, config["nz"]) if args.latents is not None else None
    if fixed is not None:
        args.num = len(fixed)
    print(f"{args.params}: {config['size']} px, nz {config['nz']}, ngf {config['ngf']}; "
          f"{'EMA' if config['weights'] == 'ema' else 'raw'} weights; "
          f"device {device}; " + (f"{len(fixed)} latents from {args.latents}" if fixed is not None else
                                  f"seeds {args.seed}..{args.seed + args.num - 1}" if terms is None else
                                  f"seeds as in --arithmetic, noise seed {args.seed}"))

    if terms is not None:
        pool = None
        if condition_names(terms):
            if not Path(args.classifier).exists():
                raise utils.UserError(f"--classifier {args.classifier} not found: attribute conditions need the "
                                      f"attribute classifier ({shown(CLASSIFIER)}, or `python attributes.py "
                                      f"train`)")
            classifier, cconfig = load_classifier(args.classifier, device)
            pool = ConceptPool(generator, classifier, cconfig["size"], cconfig["attributes"], device=device,
                               progress="labelling sampled faces")
            for term in terms:
                if term.condition:
                    lowest = pool.mean_latent(term.condition, args.concept_top)[1]
                    print(f"{term.text()}: the mean of the {args.concept_top} faces of {len(pool.z)} sampled that "
                          f"{args.classifier} puts most confidently under it (each at probability {lowest:.3f} "
                          f"or more)")
        path = write_arithmetic(generator, config["nz"], terms, out, args.seed, args.arith_noise, device,
                                args.batch_size, pool, args.concept_top)
        print(f"wrote {path}: {args.arithmetic.strip()} (mean faces, result; then the result with noise "
              f"{args.arith_noise})")
        return 0
    edited = f" (edited {args.edit.strip()})" if edits else ""
    if directions:
        grids = {}
        for name, direction in directions.items():
            grids[name] = sweep_grid(generator, config["nz"], direction, args.num, args.sweep_steps, args.seed, device,
                                     args.batch_size, offset, fixed)
            path = out / f"sweep_{name}.png"
            utils.save_png(grids[name], path)
            print(f"wrote {path}: {args.num} faces{edited} (rows) from -{SWEEP_MAX:g} to +{SWEEP_MAX:g} {name} "
                  f"in {args.sweep_steps} steps")
        if len(grids) > 1:
            path = out / "sweeps.png"
            utils.save_png(utils.titled_blocks([(f"{name}  -{SWEEP_MAX:g} ... +{SWEEP_MAX:g}", grid)
                                                for name, grid in grids.items()]), path)
            print(f"wrote {path}: the {len(grids)} sweeps, each under its name")
        return 0
    write_samples(generator, config["nz"], args.num, out, args.seed, device, args.batch_size, offset, fixed)
    print(f"wrote {args.num} images{edited} and {out / 'grid.png'}")
    if args.interpolate:
        paths = write_interpolation(generator, config["nz"], args.interpolate, args.interp_steps, out,
                                    args.seed, device, args.batch_size, gif=args.gif, offset=offset)
        print(f"wrote {' and '.join(map(str, paths))} ({args.interpolate} walks x {args.interp_steps} frames)")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
