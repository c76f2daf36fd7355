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
drawn by ``preprocessing/synthetic.py`` the same way. The parts live in
``preprocessing/``: ``sources`` (folders, zips), ``celeba`` (everything CelebA),
``decode`` (cropping, resizing) and ``writer`` (the pool and the outputs).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import utils
from preprocessing import decode, synthetic
from preprocessing.celeba import ATTRIBUTES_FILE, SEARCH_PLACES, download_celeba, find_default_source
from preprocessing.decode import FILTER
from preprocessing.sources import (IMAGE_EXTENSIONS, Source, combined_attributes, limited_names, open_source,
                                   signature_and_meta)
from preprocessing.writer import FORMAT_VERSION, output_paths, sizes_to_build, write_outputs
from utils import UserError

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
    todo = sizes_to_build(args.out, name, sizes, signature, args.force)
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


def source_paths(args) -> list[Path]:
    """The --src folders and zips, CelebA just downloaded with --download, or the first of ``SEARCH_PLACES``."""
    if args.download:
        srcs = [download_celeba(args.out)]
    elif args.src:
        srcs = [src.expanduser() for src in args.src]
    else:
        srcs = [find_default_source()]
    if len(srcs) > 1 and not args.name:
        raise UserError("several --src make one array: name it with --name (e.g. --name faces -> data/faces_64.npy)")
    return srcs


def output_name(args, first: Source) -> str:
    """--name, else celeba (celeba_train etc. with --split) for CelebA, else the first source's name made file-safe."""
    if args.name:
        return args.name
    if first.celeba:
        return "celeba" if args.split == "all" else f"celeba_{args.split}"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in first.src.resolve().name)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    sizes = tuple(dict.fromkeys(args.sizes))  # unique, order kept
    if args.synthetic is not None:
        return make_synthetic(args, sizes)

    sources = [open_source(src, args.crop, args.split, args.attrs) for src in source_paths(args)]
    parts = limited_names(sources, args.limit)
    name = output_name(args, sources[0])
    attributes = combined_attributes(sources, parts)  # a bad attribute file: before any output
    signature, source_meta = signature_and_meta(sources, parts)
    signature = {"format": FORMAT_VERSION, **signature, "split": args.split, "limit": args.limit, "filter": FILTER}
    todo = sizes_to_build(args.out, name, sizes, signature, args.force)
    if not todo:
        return 0

    def meta(size):
        return {**source_meta, "count": None, "size": size,
                "filter": FILTER + " (PIL, from the exact crop box; JPEGs first DCT-scaled by 1/2, 1/4 or 1/8 "
                                   "when the reduced box stays >= this size)",
                "split": args.split, "limit": args.limit, "signature": dict(signature, size=size)}

    images = [(s, n) for s, part in zip(sources, parts) for n in part]  # (its source, its name), in output order
    tasks = [(i, str(s.src), n, todo, s.crop, s.aligned) for i, (s, n) in enumerate(images)]
    # the name of each image in reports and label files: relative to its --src, or the whole path for several
    names = [n if len(sources) == 1 else str(Path(s.src) / n) for s, n in images]
    crop_text = "; ".join(s.crop_text for s in sources)
    write_outputs(args.out, name, todo, len(names), tasks, decode.decode_task, min(args.workers, len(names)),
                  names, meta, desc=f"{name} {'/'.join(map(str, todo))}px", crop_text=crop_text,
                  attributes=attributes)
    if attributes:
        print(f"labels: {attributes['labelled']} of {len(names)} images have a row in "
              f"{', '.join(map(str, attributes['paths']))} ({len(attributes['names'])} attributes) -> "
              f"{output_paths(args.out, name, todo[0])['attrs'].name}, ...")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
