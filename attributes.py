"""Face attributes: a classifier trained on CelebA's labels, its scores on
faces it never saw, and named directions in a generator's latent space for
``generator.py --edit`` and ``--sweep``.

    python preprocess.py --src data/celeba/img_align_celeba --sizes 64    # + data/celeba_64.attrs.npz
    python attributes.py train --data data/celeba_64.npy --rows :6000 --out celeba_attributes.pt
    python attributes.py evaluate --classifier celeba_attributes.pt --data data/celeba_64.npy --rows 6000:
    python attributes.py directions --params assets/celeba_64.params --classifier assets/celeba_attributes.pt

``train`` fits a small CNN (``editing/classifier.py``) to the labels
preprocess.py writes beside the array, choosing its epoch on the last
``--val-fraction`` of the rows it is given. ``evaluate`` prints each
attribute's balanced accuracy and AUC and appends them to results.jsonl.
``directions`` labels the faces of ``--n`` latents, fits one direction per
attribute (``editing/directions.py``), scores each edit on other latents and
writes ``<params stem>.directions.npz`` beside the params, where generator.py
finds it.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch

import utils
from dataloader import data_fingerprint, load_images
from editing.classifier import (DEFAULT_ATTRIBUTES, attribute_scores, check_names, load_classifier, load_labels,
                                predict, save_classifier, score_line, train_classifier)
from editing.directions import (classify_latents, condition, directions_path, edit_line, edit_scores,
                                fit_direction, save_directions, weights_fingerprint)
from editing.latents import latents
from network import load_generator
from utils import UserError
from utils.paths import CLASSIFIER, PRETRAINED_PARAMS, shown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,directions}")

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=utils.HelpFormatter)
        sub.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        return sub

    rows_help = ("rows of --data to use, as a Python slice A:B (preprocess.py writes them in file-name order), "
                 "e.g. :6000, 6000: or, counting from the end, --rows=-1817:")
    train = command("train", "train the attribute classifier on an image array and the labels beside it")
    train.add_argument("--data", default="data/celeba_64.npy", help="image array with <name>.attrs.npz beside it")
    train.add_argument("--rows", default=":", help=rows_help)
    train.add_argument("--out", default="celeba_attributes.pt", help="the classifier file to write")
    train.add_argument("--attributes", default=",".join(DEFAULT_ATTRIBUTES), help="comma-separated CelebA names")
    train.add_argument("--epochs", type=int, default=15, help="passes over the training rows")
    train.add_argument("--batch-size", type=int, default=64, help="faces per step")
    train.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (one-cycle)")
    train.add_argument("--width", type=int, default=16, help="channels of the CNN's first level (x2 per level)")
    train.add_argument("--val-fraction", type=float, default=0.1,
                       help="the last share of --rows: validation that picks the epoch, never trained on")
    train.add_argument("--shift", type=int, default=4, help="random translation in pixels (besides mirroring)")
    train.add_argument("--seed", type=int, default=0, help="initialisation, order and augmentation")

    evaluate = command("evaluate", "balanced accuracy and AUC of each attribute on labelled faces")
    evaluate.add_argument("--classifier", default=shown(CLASSIFIER), help="a file from `attributes.py train`")
    evaluate.add_argument("--data", default="data/celeba_64.npy", help="image array with <name>.attrs.npz beside it")
    evaluate.add_argument("--rows", default=":", help=rows_help)
    evaluate.add_argument("--results", default=None, help="JSON lines to append to; default: results.jsonl beside "
                                                          "--classifier")
    evaluate.add_argument("--batch-size", type=int, default=256, help="faces per forward pass")

    directions = command("directions", "fit one latent direction per attribute and store it beside --params")
    directions.add_argument("--params", default="generator.params", help="the generator")
    directions.add_argument("--classifier", default=shown(CLASSIFIER), help="a file from `attributes.py train`")
    directions.add_argument("--n", type=int, default=20000, help="latents to sample and label (seeds --seed ...)")
    directions.add_argument("--attributes", default=None,
                            help="comma-separated names; default: every attribute of the classifier")
    directions.add_argument("--keep", default=None,
                            help="comma-separated attributes every other direction leaves alone (their normals are "
                                 "projected out), e.g. Male; default: none")
    directions.add_argument("--tail", type=float, default=0.0,
                            help="0: fit each boundary on every face, split by the classifier's decision; > 0: on "
                                 "that share of the most and of the least confident faces (InterFaceGAN's tails)")
    directions.add_argument("--eval-n", type=int, default=2000,
                            help="other latents (the seeds after the --n) on which each edit is scored")
    directions.add_argument("--step", type=float, default=3.0, help="the move along a direction that is scored")
    directions.add_argument("--seed", type=int, default=0, help="first latent seed")
    directions.add_argument("--batch-size", type=int, default=500, help="faces per forward pass")
    directions.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA weights")
    return parser


def parse_rows(text: str, count: int) -> range:
    """ "A:B" (a Python slice, either end optional or negative) -> the rows of ``count``."""
    match = re.fullmatch(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*", text)
    if not match:
        raise UserError(f"--rows {text!r} is not a slice A:B (e.g. :6000, 6000: or 100:200)")
    rows = range(count)[slice(*(None if g is None else int(g) for g in match.groups()))]
    if not len(rows):
        raise UserError(f"--rows {text!r} selects no rows of the {count}")
    return rows


def names_list(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def labelled_rows(data, names, rows_text: str):
    """-> (images, labels, rows) of the chosen rows of --data and its labels."""
    images = load_images(data)
    names, labels = load_labels(data, names, count=len(images))
    rows = parse_rows(rows_text, len(images))
    return images[rows.start : rows.stop], labels[rows.start : rows.stop], rows


# --------------------------------------------------------------------------- #
# The three commands
# --------------------------------------------------------------------------- #
def train(args) -> int:
    if args.epochs < 1 or args.batch_size < 1 or args.width < 1 or args.shift < 0:
        raise UserError("--epochs, --batch-size and --width must be at least 1, --shift 0 or more")
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1) (got {args.val_fraction})")
    names = names_list(args.attributes)
    images, labels, rows = labelled_rows(args.data, names, args.rows)
    device = utils.resolve_device(args.device)
    start = time.time()
    print(f"training on rows {rows.start}:{rows.stop} of {args.data} ({len(rows)} faces, the last "
          f"{args.val_fraction:g} for validation), {images.shape[1]} px, {len(names)} attributes, device {device}")
    state, config = train_classifier(images, labels, names, epochs=args.epochs, batch_size=args.batch_size,
                                     lr=args.lr, width=args.width, val_fraction=args.val_fraction, shift=args.shift,
                                     seed=args.seed, device=device)
    config["trained_on"] = {"data": str(args.data), "fingerprint": data_fingerprint(args.data),
                            "rows": [rows.start, rows.stop]}
    save_classifier(args.out, state, config)
    for s in config["validation"]:
        print(score_line(s))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB): epoch {config['best_epoch']} of "
          f"{args.epochs}, chosen on the {config['val_n']} validation faces (scores above), "
          f"{time.time() - start:.0f} s")
    return 0


def evaluate(args) -> int:
    device = utils.resolve_device(args.device)
    model, config = load_classifier(args.classifier, device)
    names = config["attributes"]
    images, labels, rows = labelled_rows(args.data, names, args.rows)
    fingerprint = data_fingerprint(args.data)
    seen = config.get("trained_on", {})
    if seen.get("fingerprint") == fingerprint:
        overlap = len(range(max(rows.start, seen["rows"][0]), min(rows.stop, seen["rows"][1])))
        if overlap:
            print(f"warning: {overlap} of these {len(rows)} faces were used in training (rows "
                  f"{seen['rows'][0]}:{seen['rows'][1]} of this array); these are not held-out scores")
    logits = predict(model, images, config["size"], args.batch_size, device, progress="classify")
    scores = attribute_scores(logits, np.asarray(labels), names)
    for s in scores:
        print(score_line(s))
    results = Path(args.results) if args.results else Path(args.classifier).parent / "results.jsonl"
    utils.append_jsonl({"classifier": str(args.classifier), "data": str(args.data), "data_fingerprint": fingerprint,
                        "rows": [rows.start, rows.stop], "n": len(rows), "scores": scores,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, results)
    print(f"appended to {results}")
    return 0


def directions(args) -> int:
    if args.n < 2 or args.eval_n < 1 or args.batch_size < 1:
        raise UserError("--n must be at least 2, --eval-n and --batch-size at least 1")
    if not 0 <= args.tail <= 0.5:
        raise UserError(f"--tail must be 0 (every face) or in (0, 0.5] (got {args.tail})")
    if not Path(args.params).exists():
        raise UserError(f"params file not found: {args.params} (e.g. --params {shown(PRETRAINED_PARAMS)})")
    device = utils.resolve_device(args.device)
    start = time.time()
    generator, gconfig = load_generator(args.params, device, use_ema=not args.no_ema)
    classifier, cconfig = load_classifier(args.classifier, device)
    names = cconfig["attributes"] if args.attributes is None else names_list(args.attributes)
    keep = names_list(args.keep or "")
    check_names(names + keep, cconfig["attributes"], str(args.classifier))
    check_names(keep, names, "--attributes")
    columns = [cconfig["attributes"].index(n) for n in names]
    nz = gconfig["nz"]
    print(f"{args.params}: {gconfig['weights']} weights; labelling {args.n} faces (seeds {args.seed}..."
          f"{args.seed + args.n - 1}) with {args.classifier}, device {device}")

    def logits_of(z, progress=None):
        return classify_latents(generator, classifier, cconfig["size"], z, args.batch_size, device,
                                progress)[:, columns]

    z = latents(range(args.seed, args.seed + args.n), nz)
    logits = logits_of(z, progress="label")
    normals = torch.stack([fit_direction(z, logits[:, k], args.tail) for k in range(len(names))])
    vectors = condition(names, normals, keep)
    z_eval = latents(range(args.seed + args.n, args.seed + args.n + args.eval_n), nz)
    scores = edit_scores(lambda zs: torch.sigmoid(logits_of(zs)), z_eval, names, vectors, args.step)
    seconds = time.time() - start
    meta = {"params": str(args.params), "weights": gconfig["weights"], "classifier": str(args.classifier),
            "n": args.n, "seed": args.seed, "tail": args.tail, "eval_n": args.eval_n, "step": args.step,
            "share": {n: float((logits[:, k] > 0).float().mean()) for k, n in enumerate(names)},
            "scores": scores, "seconds": round(seconds, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = directions_path(args.params)
    save_directions(path, names, vectors, normals, keep, weights_fingerprint(generator), meta)
    for s in scores:
        print(edit_line(s))
    kept = f", keeping {', '.join(keep)}" if keep else ""
    fitted = f"the {args.tail:g} tails of {args.n} faces" if args.tail else f"all {args.n} faces"
    print(f"wrote {path}: {len(names)} directions{kept}, fitted on {fitted}, "
          f"edits of {args.step:+g} scored on {args.eval_n} others, {seconds:.0f} s")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": train, "evaluate": evaluate, "directions": directions}[args.command](args)


if __name__ == "__main__":
    utils.run_cli(main)
