"""Measure our pipeline against the classic DCGAN loop on the same machine and
the same images: training img/s (ours vs classic, and the ratio), preprocess
images/s, feeder batches/s, FID feature extraction img/s, and peak memory of
each. Prints a table and one JSON line.

    python bench.py                                     # ../shared/data/celeba_sample if present, else synthetic
    python bench.py --device cuda --steps 50 --sizes 64 128 --out-json bench.json
    python bench.py --steps 3 --sizes 64 --small --synthetic 256      # smoke run, seconds on a CPU
    python bench.py --gpu-check --out gpu_check                       # the GPU check (docs/gpu_check.md)
    python bench.py --explorer                                        # app.py under load (docs/explorer.md)
    python bench.py --onnx                                            # eager PyTorch vs onnxruntime, batch 1/16/64

The two training paths:
  ours     training.trainer.Trainer(...).step(batch), fed by dataloader.DeviceFeeder from
           the .npy that preprocess.py wrote from the same images, in the
           precision train.py would pick (--precision auto: bf16 on Ampere and
           later, fp16 on older CUDA GPUs, fp32 on the CPU).
  classic  the loop as the PyTorch DCGAN tutorial writes it: torchvision
           ImageFolder over the image files, Resize + CenterCrop + ToTensor +
           Normalize, DataLoader(shuffle, workers), fp32, Sigmoid + BCELoss,
           a host read (.item()) of the losses and D outputs every step.
Both use the same layer stack (network.py equals the tutorial's nets at 64 px)
and batch size, and are timed after --warmup steps; img/s counts the images
the timed steps consumed (data loading included, as a user experiences it).

Each row runs in its own fresh process (spawn), so its peak host RSS
(VmHWM), the peak summed PSS of it and its workers (sampled), and peak GPU
memory (torch.cuda.max_memory_allocated) are its own. Nothing is written
outside a temporary folder (and --out-json); ../shared is only read.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import utils
from benchmarks import explorer_load, gpu_check
from benchmarks.harness import fmt, isolated, machine, prepare_images
from utils.paths import PRETRAINED_PARAMS, SHARED_DATA, shown

DEFAULT_DATA = SHARED_DATA / "celeba_sample"


def build_parser() -> argparse.ArgumentParser:
    from training.device import PRECISIONS  # torch-free import: spawned rows re-import this module (torch at the top)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="image folder in ImageFolder layout (a parent with class subfolders); "
                             "synthetic faces are made when it does not exist")
    parser.add_argument("--synthetic", type=int, default=1024, metavar="N",
                        help="images to make when --data is absent")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images of --data (0: all)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes to train at")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of every training row")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per path and size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (workers start, caches fill)")
    parser.add_argument("--workers", type=int, default=2, help="classic DataLoader workers (the tutorial uses 2)")
    parser.add_argument("--feeder-batches", type=int, default=50, help="timed batches for the feeder row")
    parser.add_argument("--eval-n", type=int, default=0,
                        help="images for the feature-extraction row (0: 256 on CPU, 4096 on a GPU)")
    parser.add_argument("--eval-batch-size", type=int, default=200, help="feature-extraction batch")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                        help="our path's memory format (auto: what train.py does, i.e. Trainer's default)")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                        help="our path's precision (auto: as train.py picks it, bf16 on Ampere+ CUDA, fp16 on "
                             "older CUDA GPUs, fp32 elsewhere); classic is always fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile our training step")
    parser.add_argument("--small", action="store_true", help="tiny nets (ngf = ndf = 8) for smoke tests")
    parser.add_argument("--skip", nargs="+", default=[],
                        choices=["preprocess", "feeder", "ours", "classic", "evaluate"], help="rows to leave out")
    parser.add_argument("--rss-check", type=int, nargs="+", default=[], metavar="N",
                        help="also run preprocess on the first N images for each N and report its peak RSS "
                             "(memory should stay flat in N)")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table (top ops) for the timed steps of each training row")
    parser.add_argument("--out-json", default=None, help="also write the JSON result here")
    check = parser.add_argument_group("the GPU check (docs/gpu_check.md): every stage in its own process "
                                      "and time limit; --data is its image folder")
    check.add_argument("--gpu-check", action="store_true",
                       help="run the GPU check into --out: gpu_check.json and gpu_check.md (the BENCHMARKS.md table)")
    check.add_argument("--dry-run", action="store_true", help="with --gpu-check: every stage on the CPU, tiny")
    check.add_argument("--out", default="gpu_check", help="with --gpu-check: the folder it writes")
    check.add_argument("--budget", type=float, default=gpu_check.DEFAULT_BUDGET,
                       help="with --gpu-check: seconds for all stages together, shared as gpu_check.STAGES says")
    check.add_argument("--stages", nargs="+", default=None, choices=[name for name, _, _ in gpu_check.STAGES],
                       help="with --gpu-check: only these stages (setup always runs; default: all)")
    load = parser.add_argument_group("the face explorer's load test (docs/explorer.md): app.py on a free "
                                     "127.0.0.1 port, a fixed number of requests, a time limit")
    load.add_argument("--explorer", action="store_true",
                      help="run the load test instead of the speed rows: a flood of concurrent faces requests, "
                           "then p50/p95 of one face, one edit and one grid")
    load.add_argument("--explorer-params", default=shown(PRETRAINED_PARAMS), help="with --explorer: its --params")
    load.add_argument("--explorer-requests", type=int, default=50, help="with --explorer: concurrent requests")
    load.add_argument("--explorer-faces", type=int, default=16, help="with --explorer: faces per flood request")
    load.add_argument("--explorer-repeats", type=int, default=30, help="with --explorer: requests per latency row")
    load.add_argument("--explorer-queue-size", type=int, default=20, help="with --explorer: app.py --queue-size")
    load.add_argument("--explorer-time-limit", type=float, default=300.0,
                      help="with --explorer: seconds for the whole test (rows stop early past it)")
    load.add_argument("--explorer-runtime", default="auto", choices=["auto", "onnx", "torch"],
                      help="with --explorer: app.py --runtime (what renders the faces)")
    load.add_argument("--soak", type=int, default=0,
                      help="with --explorer: this many mixed requests (the soak, docs/explorer.md) instead of the load test")
    onnx = parser.add_argument_group("eager PyTorch against onnxruntime for one generator on the CPU "
                                     "(benchmarks/onnx_speed.py; pip install -r requirements-export.txt)")
    onnx.add_argument("--onnx", action="store_true",
                      help="run the comparison instead of the speed rows: ms per call at batch 1, 16, 64")
    onnx.add_argument("--onnx-params", default=shown(PRETRAINED_PARAMS), help="with --onnx: the generator")
    onnx.add_argument("--onnx-threads", type=int, nargs="+", default=[1, 2],
                      help="with --onnx: intra-op threads of both runtimes, a set of rows per value")
    onnx.add_argument("--onnx-seconds", type=float, default=3.0, help="with --onnx: timed seconds per row")
    return parser


def table(results: dict) -> str:
    lines = [f"{'row':<24}{'speed':>22}{'peak RSS MiB':>14}{'+workers MiB':>13}{'GPU MiB':>10}  note",
             "-" * 100]
    for name, row in results["rows"].items():
        if row.get("status") != "ok":
            lines.append(f"{name:<24}{'UNAVAILABLE':>22}{'':>37}  {row.get('reason', '')}")
            continue
        if "batches_s" in row:
            speed = f"{fmt(row['batches_s'])} batch/s"
        else:
            speed = f"{fmt(row['img_s'])} img/s"
        note = {k: row[k] for k in ("precision", "compile", "channels_last", "images", "weights", "skipped")
                if k in row}
        lines.append(f"{name:<24}{speed:>22}{fmt(row.get('rss_mb'), 0):>14}{fmt(row.get('tree_pss_mb'), 0):>13}"
                     f"{fmt(row.get('gpu_mb'), 0):>10}  {json.dumps(note) if note else ''}")
    for size, ratio in results["ratio"].items():
        lines.append(f"{'ratio ours/classic ' + size:<24}{fmt(ratio, 2) + 'x':>22}")
    return "\n".join(lines)


def check_args(args, supported: tuple) -> None:
    """One line for the first bad value, before any work."""
    bad = [s for s in args.sizes if s not in supported]
    if bad:
        raise utils.UserError(f"--sizes {bad[0]} is not supported; choose from {', '.join(map(str, supported))}")
    for flag in ("batch_size", "steps", "feeder_batches", "synthetic", "eval_batch_size"):
        if getattr(args, flag) < 1:
            raise utils.UserError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    for flag in ("warmup", "workers", "limit", "eval_n"):
        if getattr(args, flag) < 0:
            raise utils.UserError(f"--{flag.replace('_', '-')} must be 0 or more (got {getattr(args, flag)})")
    if args.rss_check and any(n < 1 for n in args.rss_check):
        raise utils.UserError("--rss-check counts must be at least 1")


def measure_rows(args, results: dict, root: Path, tmp: Path, device, sizes: list, eval_n: int) -> None:
    """Every row not in --skip into ``results["rows"]``, each in its own process, and
    the ours / classic ratio per size into ``results["ratio"]``; arrays go to ``tmp``."""
    rows = results["rows"]
    arrays = tmp / "arrays"
    row = isolated("benchmarks.harness:measure_preprocess", src=str(root), out=str(arrays), sizes=sizes)
    if "preprocess" not in args.skip:
        rows["preprocess"] = row
    if row.get("status") != "ok":
        raise utils.UserError(f"preprocess.py failed on {root}, so no row has its arrays: {row.get('reason')}")
    npys = {s: arrays / f"bench_{s}.npy" for s in sizes}
    for n in args.rss_check:
        rows[f"preprocess rss n={n}"] = isolated("benchmarks.harness:measure_preprocess", src=str(root),
                                                 out=str(tmp / f"rss{n}"), sizes=sizes, limit=n)

    for size in sizes:
        if "feeder" not in args.skip:
            rows[f"feeder {size}"] = isolated(
                "benchmarks.rows:measure_feeder", npy=str(npys[size]), device=str(device),
                batch_size=args.batch_size, batches=args.feeder_batches, channels_last=args.channels_last)
        if "classic" not in args.skip:
            print(f"classic {size} px ...", flush=True)
            rows[f"train classic {size}"] = isolated(
                "benchmarks.rows:measure_classic", image_root=str(root), size=size, device=str(device),
                batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, workers=args.workers,
                small=args.small, profile=args.profile)
        if "ours" not in args.skip:
            print(f"ours {size} px ...", flush=True)
            rows[f"train ours {size}"] = isolated(
                "benchmarks.rows:measure_ours", npy=str(npys[size]), size=size, device=str(device),
                batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, precision=args.precision,
                compile=args.compile, channels_last=args.channels_last, small=args.small, profile=args.profile)
        ours, classic = rows.get(f"train ours {size}", {}), rows.get(f"train classic {size}", {})
        if ours.get("status") == "ok" and classic.get("status") == "ok":
            results["ratio"][str(size)] = ours["img_s"] / classic["img_s"]
    if "evaluate" not in args.skip:
        rows[f"evaluate features {sizes[0]}"] = isolated(
            "benchmarks.rows:measure_evaluate", npy=str(npys[sizes[0]]), device=str(device), n=eval_n,
            batch_size=args.eval_batch_size, tmp=str(tmp))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.gpu_check:
        args.argv = list(argv if argv is not None else sys.argv[1:])
        return gpu_check.run_check(args)
    if args.explorer and args.soak:
        return explorer_load.main(["--soak", str(args.soak), "--params", args.explorer_params,
                                   "--runtime", args.explorer_runtime])
    if args.explorer:
        explorer_load.check(args)
        args.argv = list(argv if argv is not None else sys.argv[1:])
        explorer_load.run(args)
        return 0
    if args.onnx:
        from benchmarks import onnx_speed  # torch and onnxruntime at its top: only this mode loads them

        onnx_speed.check(args)
        args.argv = list(argv if argv is not None else sys.argv[1:])
        onnx_speed.run(args)
        return 0
    from benchmarks.rows import SIZES, row_precision  # torch-free import, as in build_parser

    check_args(args, SIZES)
    device = utils.resolve_device(args.device)
    sizes = sorted(set(args.sizes))
    eval_n = args.eval_n or (4096 if device.type == "cuda" else 256)
    precision, precision_why = row_precision(args.precision, device)
    started = datetime.datetime.now(datetime.timezone.utc)

    results = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": "python bench.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "machine": machine(), "device": str(device),
        "precision": precision, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "small": args.small, "rows": {}, "ratio": {}}
    with tempfile.TemporaryDirectory(prefix="dcgan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root, described = prepare_images(Path(args.data), args.limit, args.synthetic, max(sizes), tmp)
        results["data"] = described
        print(f"bench: {described}; device {device}; ours in {precision} ({precision_why}); batch {args.batch_size}; "
              f"{args.warmup} warm-up + {args.steps} timed steps; sizes {sizes}")
        measure_rows(args, results, root, tmp, device, sizes, eval_n)
    results["seconds"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1)
    print(table(results))
    print(json.dumps(results))
    if args.out_json:
        utils.save_json(results, args.out_json)
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
