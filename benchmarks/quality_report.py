"""The quality bench's report: which rows a table shows (one per cell, the
first trajectory, its last score), the tables (every row; best against
classic; each variant against classic; seeds; the rise after each run's
minimum; re-trained trajectories), the FID / KID / precision and recall curves,
and the sample grids beside held-out faces.

    python bench_quality.py --size 64 --report                  # the table + assets/quality_celeba_64.png
    report(args, heldout_npy=lambda: Path("runs/quality/data/celeba_heldout_64.npy"))
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

import utils
from editing.latents import latents
from network import load_generator
from utils import UserError
from utils.files import read_jsonl


# --------------------------------------------------------------------------- #
# The rows: which cell and which snapshot each scores, which a table shows
# --------------------------------------------------------------------------- #
def data_tag(args) -> str:
    """The data's name in rows and file names: --name, and --split when it is not the tail."""
    return args.name if args.split == "tail" else f"{args.name}_{args.split}"


def results_path(args) -> Path:
    """The rows file: --results, or <out>/quality.jsonl."""
    return args.results or args.out / "quality.jsonl"


def row_key(r: dict) -> tuple:
    """One cell of the tables: data, variant, size, nets, step, weights, n and seed."""
    return (r["data"], r["variant"], r["size"], r["ngf"], r["ndf"], r["batch_size"], r["step"], r["weights"],
            r["fid_n"], r.get("seed", 0))


def score_key(r: dict) -> tuple:
    """What one score is of: its cell and its snapshot (None in rows without a snapshot hash)."""
    return (*row_key(r), r.get("snapshot"))


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib: only the report draws
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
    net, config = load_generator(params, "cpu")
    with torch.no_grad():
        return utils.to_uint8(net(latents(range(n), int(config["nz"]))))


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


def report(args, heldout_npy: Callable[[], Path]) -> None:
    """Print the tables of ``args``' data and size, draw the curves and the grids
    (``heldout_npy()``: the held-out faces' array, asked for only when the grids are drawn)."""
    name = data_tag(args)
    every_row = [r for r in read_jsonl(results_path(args)) if r["size"] == args.size and r["data"] == name]
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
    draw_grids(args, rows, name, heldout_npy)


def draw_grids(args, rows: list[dict], name: str, heldout_npy: Callable[[], Path]) -> None:
    """The README's pictures: classic's and best's last snapshot beside held-out
    faces, and classic beside best at their last common step (same latents).
    Skipped, with one line, where the snapshots are not on this machine (rows
    read from a committed --results file point into someone's run folders)."""
    rows = [r for r in rows if r["variant"] in ("classic", "best")]
    missing = sorted({r["params"] for r in rows if not Path(r["params"]).is_file()})
    if missing:
        print(f"sample grids skipped: {len(missing)} snapshot(s) not here, e.g. {missing[0]} (rerun the variants)")
        return
    heldout = heldout_npy()
    for variant in sorted({r["variant"] for r in rows}):
        last = max((r for r in rows if r["variant"] == variant), key=lambda r: (r["images_seen"], r["ngf"]))
        grid = args.assets / f"quality_{name}_{args.size}_{variant}_grid.png"
        sample_beside_real(Path(last["params"]), heldout, grid)
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


