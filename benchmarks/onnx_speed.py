"""Eager PyTorch against onnxruntime for one generator on this CPU (python
bench.py --onnx): ms per call and img/s at batch 1, 16 and 64, the same
intra-op thread count for both, per thread count asked for.

    python bench.py --onnx                                   # the shipped generator, 1 and 2 threads
    python bench.py --onnx --onnx-threads 1 --onnx-seconds 2 --out-json onnx.json

The generator is exported in memory (export.onnx_export) and run by
export.onnx_runtime.OnnxGenerator, the explorer's path. Each row times the
two runtimes' calls alternately on the same latents, after warm-up calls,
for --onnx-seconds (at least 5 calls each), so a busy machine slows both
alike; it reports the median per call and the largest difference between
their images.
"""
from __future__ import annotations

import datetime
import json
import statistics
import time
from pathlib import Path

import torch

import utils
from benchmarks.harness import fmt, machine
from export.onnx_export import onnx_bytes
from export.onnx_runtime import OnnxGenerator
from network import load_generator

BATCHES = (1, 16, 64)
WARMUP = 3  # untimed calls of each runtime before a row


@torch.no_grad()
def time_row(runtimes: dict, z: torch.Tensor, seconds: float) -> dict:
    """Calls of each runtime on ``z``, alternating, for ``seconds`` (at least
    5 each) after WARMUP -> {name: median seconds per call}."""
    for run in runtimes.values():
        for _ in range(WARMUP):
            run(z)
    times = {name: [] for name in runtimes}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or min(len(t) for t in times.values()) < 5:
        for name, run in runtimes.items():
            start = time.perf_counter()
            run(z)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()} | {"calls": len(times["torch"])}


def run(args) -> dict:
    """The comparison with the --onnx-* options of ``args``; prints a table and one JSON line."""
    threads_before = torch.get_num_threads()
    generator, config = load_generator(args.onnx_params)
    started = time.perf_counter()
    model = onnx_bytes(generator, config["nz"])
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python bench.py " + " ".join(args.argv), "machine": machine(gpu=False),
              "params": str(args.onnx_params), "export_s": time.perf_counter() - started,
              "seconds_per_row": args.onnx_seconds, "rows": []}
    try:
        for threads in args.onnx_threads:
            torch.set_num_threads(threads)
            runtimes = {"torch": generator, "onnx": OnnxGenerator(model, threads=threads)}
            for batch in BATCHES:
                z = torch.randn(batch, config["nz"], generator=torch.Generator().manual_seed(batch))
                with torch.no_grad():
                    difference = (runtimes["onnx"](z) - generator(z)).abs().max().item()
                medians = time_row(runtimes, z, args.onnx_seconds)
                result["rows"].append({"threads": threads, "batch": batch, "calls": medians["calls"],
                                       "torch_ms": 1000 * medians["torch"], "onnx_ms": 1000 * medians["onnx"],
                                       "torch_img_s": batch / medians["torch"], "onnx_img_s": batch / medians["onnx"],
                                       "speedup": medians["torch"] / medians["onnx"], "max_abs_diff": difference})
                print(row_line(result["rows"][-1]), flush=True)
    finally:
        torch.set_num_threads(threads_before)
    print(table(result))
    print(json.dumps(result))
    if args.out_json:
        utils.save_json(result, Path(args.out_json))
    return result


def row_line(row: dict) -> str:
    return (f"{row['threads']:>7}{row['batch']:>6}{fmt(row['torch_ms'], 2):>11}{fmt(row['onnx_ms'], 2):>10}"
            f"{fmt(row['torch_img_s'], 0):>12}{fmt(row['onnx_img_s'], 0):>11}{fmt(row['speedup'], 2) + 'x':>9}"
            f"{row['max_abs_diff']:>10.1e}{row['calls']:>7}")


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"{result['params']} on {m['cpu']} ({m['cores']} cores), torch {m['torch']}; export "
             f"{result['export_s']:.1f} s; medians of alternating calls, {result['seconds_per_row']:g} s a row",
             f"{'threads':>7}{'batch':>6}{'torch ms':>11}{'onnx ms':>10}{'torch img/s':>12}{'onnx img/s':>11}"
             f"{'onnx x':>9}{'max diff':>10}{'calls':>7}"]
    return "\n".join(lines + [row_line(row) for row in result["rows"]])


def check(args) -> None:
    """One-line errors for bad --onnx-* values, before any work."""
    if not args.onnx_threads or any(not 1 <= t <= 256 for t in args.onnx_threads):
        raise utils.UserError(f"--onnx-threads must be 1 to 256 (got {args.onnx_threads})")
    if not args.onnx_seconds > 0:
        raise utils.UserError(f"--onnx-seconds must be positive (got {args.onnx_seconds})")
    if not Path(args.onnx_params).exists():
        raise utils.UserError(f"--onnx-params {args.onnx_params} not found")
