"""Measure our pipeline against the classic DCGAN loop on the same machine and
the same images: training img/s (ours vs classic, and the ratio), preprocess
images/s, feeder batches/s, FID feature extraction img/s, and peak memory of
each. Prints a table and one JSON line.

    python bench.py                                     # ../shared/data/celeba_sample if present, else synthetic
    python bench.py --device cuda --steps 50 --sizes 64 128 --out-json bench.json
    python bench.py --steps 3 --sizes 64 --small --synthetic 256      # smoke run, seconds on a CPU
    python bench.py --gpu-check --out gpu_check                       # the one-command GPU check (gpu_check.py)

The two training paths:
  ours     training.trainer.Trainer(...).step(batch), fed by dataloader.DeviceFeeder from
           the .npy that preprocess.py wrote from the same images (bf16 on
           CUDA with --precision auto, fp32 on CPU).
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
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

import utils

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "celeba_sample"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="our path's precision (auto: bf16 on CUDA, fp32 elsewhere); classic is always fp32")
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
    check = parser.add_argument_group("the one-command GPU check (gpu_check.py): every stage in its own process "
                                      "and time limit; --data is its image folder")
    check.add_argument("--gpu-check", action="store_true",
                       help="run the GPU check into --out: gpu_check.json and gpu_check.md (the BENCHMARKS.md table)")
    check.add_argument("--dry-run", action="store_true", help="with --gpu-check: every stage on the CPU, tiny")
    check.add_argument("--out", default="gpu_check", help="with --gpu-check: the folder it writes")
    check.add_argument("--budget", type=float, default=570,
                       help="with --gpu-check: seconds for all stages together, shared as gpu_check.STAGES says")
    check.add_argument("--stages", nargs="+", default=None,
                       choices=["setup", "sync", "train64", "train128", "resume", "sample", "speed"],
                       help="with --gpu-check: only these stages (setup always runs; default: all)")
    return parser


# --------------------------------------------------------------------------- #
# Running one measurement in a fresh process
# --------------------------------------------------------------------------- #
def _proc_kib(path: str, field: str):
    """A 'Field:   123 kB' value from a /proc file, or None."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _descendants(pid: int) -> list:
    """pid's child processes, recursively (Linux /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(k) for k in children.read_text().split()]
                found += kids
                todo += kids
    return found


class MemoryWatch:
    """Peak memory of this process and of the processes it starts.

    rss_mb: this process's own peak RSS (VmHWM: the kernel's high-water mark
    for this address space, so a fresh process measures only its own work).
    tree_pss_mb: peak of the summed PSS (proportional set size: shared pages
    split between the processes sharing them, so forked DataLoader / pool
    workers are not double-counted) of this process and all its descendants,
    sampled every ``interval`` seconds by a thread (short spikes can be missed).
    Linux only; elsewhere both are None (getrusage would fold in the parent's
    pre-exec memory and that of unrelated helper processes)."""

    def __init__(self, interval: float = 0.2):
        import threading

        self.interval, self.tree_peak_kib = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = Path("/proc/self/smaps_rollup").exists()

    def _sample(self) -> None:
        me = os.getpid()
        total = 0
        for pid in [me] + _descendants(me):
            total += _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss") or 0
        self.tree_peak_kib = max(self.tree_peak_kib, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        if self.available:
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.available:
            self._stop.set()
            self._thread.join()
            self._sample()

    def result(self) -> dict:
        own = _proc_kib("/proc/self/status", "VmHWM") if self.available else None
        return {
            "rss_mb": None if own is None else round(own / 1024, 1),
            "tree_pss_mb": round(self.tree_peak_kib / 1024, 1) if self.available else None,
        }


def _child(conn, fn, kwargs) -> None:
    try:
        with MemoryWatch() as watch:
            result = fn(**kwargs)
        result.update(watch.result())
        import torch

        device = torch.device(kwargs.get("device") or "cpu")
        if device.type == "cuda" and torch.cuda.is_initialized():  # the benchmarked GPU, not the current one
            result["gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        conn.send(result)
    except BaseException as err:  # reported as a failed row, never a crash of the whole bench
        conn.send({"status": "failed", "reason": f"{type(err).__name__}: {str(err).strip()[:300]}",
                   "traceback": traceback.format_exc()})
    finally:
        conn.close()


def isolated(fn, timeout: float | None = None, **kwargs) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned (non-daemon, so it may start
    its own workers) process; return its result dict plus its peak memory.
    After ``timeout`` seconds the process is killed and the row failed."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, kwargs))
    process.start()
    send.close()
    try:
        if timeout is not None and not receive.poll(timeout):
            process.kill()
            result = {"status": "failed", "reason": f"killed after its time limit of {timeout:.0f} s"}
        else:
            result = receive.recv()
    except EOFError:
        result = {"status": "failed", "reason": "the measuring process died"}
    process.join()
    if result.get("status") == "failed" and result.get("traceback"):
        print(result.pop("traceback"), file=sys.stderr)
    if result.get("status") == "failed" and process.exitcode not in (0, None):
        result["reason"] += f" (exit code {process.exitcode})"
    return result


def unavailable(reason: str) -> dict:
    return {"status": "unavailable", "reason": reason}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def maybe_profile(enabled: bool, label: str):
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    import torch

    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        yield
    key = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    print(f"\n--- profile: {label} (sorted by {key}) ---")
    print(prof.key_averages().table(sort_by=key, row_limit=15))


@contextlib.contextmanager
def default_compile_backend(backend: str | None):
    """torch.compile calls that name no backend use ``backend`` meanwhile
    (aot_eager: dynamo and AOTAutograd without Inductor's C++ / Triton code
    generation, which takes a minute on a CPU); None changes nothing."""
    import torch

    if backend is None:
        yield
        return
    original = torch.compile

    def compile_with(*args, **kwargs):
        kwargs.setdefault("backend", backend)
        return original(*args, **kwargs)

    torch.compile = compile_with
    try:
        yield
    finally:
        torch.compile = original


def net_config(size: int, small: bool) -> dict:
    from network import DEFAULT_CONFIG

    width = 8 if small else 64
    return {**DEFAULT_CONFIG, "size": size, "ngf": width, "ndf": width}


# --------------------------------------------------------------------------- #
# The rows (each runs inside its own process)
# --------------------------------------------------------------------------- #
def measure_classic(image_root: str, size: int, device: str, batch_size: int, steps: int, warmup: int,
                    workers: int, small: bool, profile: bool) -> dict:
    """The tutorial-style loop: ImageFolder + Resize/CenterCrop, DataLoader
    workers, fp32, Sigmoid + BCELoss, .item() every step."""
    import torch
    import torchvision.datasets as dset
    import torchvision.transforms as T
    from torch import nn

    from network import build_discriminator, build_generator

    device = utils.resolve_device(device)
    config = net_config(size, small)
    dataset = dset.ImageFolder(
        root=image_root,
        transform=T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                             T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    netG = build_generator(config).to(device)
    netD = nn.Sequential(build_discriminator(config), nn.Sigmoid()).to(device)  # the tutorial's D ends in Sigmoid
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    history = []

    def step(real_cpu):
        real = real_cpu.to(device)
        b = real.size(0)
        # D: real batch labelled 1, then G's batch (detached) labelled 0, one Adam step
        netD.zero_grad()
        target = torch.full((b,), 1.0, device=device)
        out = netD(real).view(-1)
        loss_real = criterion(out, target)
        loss_real.backward()
        d_x = out.mean().item()
        z = torch.randn(b, config["nz"], 1, 1, device=device)
        fake = netG(z)
        target.fill_(0.0)
        out = netD(fake.detach()).view(-1)
        loss_fake = criterion(out, target)
        loss_fake.backward()
        d_g_z1 = out.mean().item()
        optD.step()
        # G: the same fake batch labelled 1 (non-saturating), one Adam step
        netG.zero_grad()
        target.fill_(1.0)
        out = netD(fake).view(-1)
        loss_g = criterion(out, target)
        loss_g.backward()
        d_g_z2 = out.mean().item()
        optG.step()
        history.append(((loss_real + loss_fake).item(), loss_g.item(), d_x, d_g_z1, d_g_z2))
        return b

    def batches():
        while True:  # a new epoch re-creates the iterator (and its workers), as the tutorial's loop does
            for images, _ in loader:
                yield images

    stream = batches()
    for _ in range(warmup):
        step(next(stream))
    sync(device)
    count = 0
    with maybe_profile(profile, f"classic {size} px"):
        start = time.perf_counter()
        for _ in range(steps):
            count += step(next(stream))
        sync(device)
        seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": count / seconds, "seconds": seconds, "images": count,
            "loss_g_last": history[-1][1]}


def endless(feeder):
    """The feeder's batches, epoch after epoch, for as many steps as a row times."""
    epoch = 0
    while True:
        yield from feeder.epoch(epoch)
        epoch += 1


def measure_ours(npy: str, size: int, device: str, batch_size: int, steps: int, warmup: int,
                 precision: str, compile: bool, channels_last: str, small: bool, profile: bool,
                 recipe: str = "classic", compile_backend: str | None = None) -> dict:
    """training.trainer.Trainer's real step fed by dataloader.DeviceFeeder,
    with train.py's --recipe options; warmup_s includes torch.compile's work."""
    import dataloader
    from train import recipe_options
    from training.trainer import Trainer
    from training.training_loop import DEFAULTS

    device = utils.resolve_device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    config = {**DEFAULTS, **recipe_options(recipe), **net_config(size, small), "batch_size": batch_size}
    memory_format = {"auto": None, "on": True, "off": False}[channels_last]
    with default_compile_backend(compile_backend):
        trainer = Trainer(config, device, precision=precision, compile=compile, channels_last=memory_format)
    channels_last = bool(getattr(trainer, "channels_last", False))
    feeder = dataloader.DeviceFeeder(npy, batch_size=batch_size, device=device, seed=0,
                                     channels_last=channels_last)
    if len(feeder) < 1:
        return unavailable(f"{feeder.num_images} images are fewer than one batch of {batch_size}")

    stream = endless(feeder)
    out = None
    start = time.perf_counter()
    for _ in range(warmup):
        out = trainer.step(next(stream))
    sync(device)
    warmup_s = time.perf_counter() - start
    count = 0
    with maybe_profile(profile, f"ours {size} px"):
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(stream)
            out = trainer.step(batch)
            count += batch.shape[0]
        loss_g = float(out["loss_G"])  # one host read at the end (also a device sync)
        sync(device)
        seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": count / seconds, "seconds": seconds, "images": count, "warmup_s": warmup_s,
            "precision": precision, "compile": compile, "recipe": recipe, "channels_last": channels_last,
            "loss_g_last": loss_g}


def measure_feeder(npy: str, device: str, batch_size: int, batches: int, channels_last: str = "auto") -> dict:
    """DeviceFeeder batches in the memory format the training rows use."""
    import dataloader
    from training.trainer import default_channels_last

    device = utils.resolve_device(device)
    channels_last = {"auto": default_channels_last(device), "on": True, "off": False}[channels_last]
    start_setup = time.perf_counter()
    feeder = dataloader.DeviceFeeder(npy, batch_size=batch_size, device=device, seed=0, flip=True,
                                     channels_last=channels_last)
    setup = time.perf_counter() - start_setup
    if len(feeder) < 1:
        return unavailable(f"{feeder.num_images} images are fewer than one batch of {batch_size}")

    it = endless(feeder)
    next(it)  # warm-up
    sync(device)
    start = time.perf_counter()
    last = None
    for _ in range(batches):
        last = next(it)
    sync(device)
    seconds = time.perf_counter() - start
    return {"status": "ok", "batches_s": batches / seconds, "img_s": batches * batch_size / seconds,
            "setup_s": setup, "batch_shape": list(last.shape), "dtype": str(last.dtype),
            "channels_last": channels_last}


def measure_preprocess(src: str, out: str, sizes: list, limit: int = 0) -> dict:
    try:
        import preprocess
    except ImportError as err:
        return unavailable(f"preprocess.py not importable yet ({err})")
    argv = ["--src", src, "--out", out, "--sizes", *map(str, sizes), "--name", "bench", "--force"]
    if limit:
        argv += ["--limit", str(limit)]
    start = time.perf_counter()
    preprocess.main(argv)
    seconds = time.perf_counter() - start
    meta = json.loads((Path(out) / f"bench_{sizes[0]}.json").read_text())
    return {"status": "ok", "img_s": meta["count"] / seconds, "seconds": seconds, "images": meta["count"],
            "skipped": len(meta.get("skipped", [])), "sizes": sizes}


def random_fid_weights(path: Path) -> None:
    """A randomly initialised FID Inception state_dict (for timing only: speed
    does not depend on the weight values), built by pytorch-fid's own code
    with its download replaced by nothing."""
    from unittest import mock

    import torch
    from pytorch_fid import inception

    with mock.patch.object(inception, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", return_value=None):
        net = inception.fid_inception_v3()
    utils.torch_save(net.state_dict(), path)


def measure_evaluate(npy: str, device: str, n: int, batch_size: int, tmp: str) -> dict:
    """evaluate.py's feature extraction alone: load_inception once, warm up,
    then time array_features (uint8 -> device -> 299 px Inception pool3)."""
    try:
        import evaluate
    except ImportError as err:
        return unavailable(f"evaluate.py not importable yet ({err})")
    if not (hasattr(evaluate, "load_inception") and hasattr(evaluate, "array_features")):
        return unavailable("evaluate.load_inception / evaluate.array_features are missing")
    import torch

    device = utils.resolve_device(device)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    if hub.is_file():
        weights, kind = hub, "FID Inception (hub cache)"
    else:
        weights, kind = Path(tmp) / "random_inception.pth", "random init (FID weights offline; speed only)"
        if not weights.is_file():
            random_fid_weights(weights)
    model = evaluate.load_inception(device, weights_path=weights)
    images = np.load(npy, mmap_mode="r")
    n = min(n, len(images))
    batch_size = min(batch_size, n)
    evaluate.array_features(model, images[:batch_size], device, batch_size=batch_size, desc="warm-up")
    sync(device)
    start = time.perf_counter()
    feats = evaluate.array_features(model, images[:n], device, batch_size=batch_size, desc="timed")
    sync(device)
    seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": n / seconds, "seconds": seconds, "images": n, "batch": batch_size,
            "weights": kind, "features": list(feats.shape)}


# --------------------------------------------------------------------------- #
# Input data
# --------------------------------------------------------------------------- #
def image_files(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def prepare_images(args, tmp: Path) -> tuple[Path, str]:
    """-> (ImageFolder root, description). Real data is only read: a --limit
    subset is a folder of symlinks in tmp. Synthetic faces are drawn by
    preprocess.py --synthetic and saved as PNG files for the classic loop."""
    data = Path(args.data)
    if data.is_dir():
        classes = [p for p in sorted(data.iterdir()) if p.is_dir()]
        files = image_files(data)
        if not classes or not files:
            raise utils.UserError(f"--data {data} needs ImageFolder layout: class subfolder(s) holding images")
        if args.limit and args.limit < len(files):
            root = tmp / "images"
            (root / "subset").mkdir(parents=True)
            for k, path in enumerate(files[: args.limit]):
                (root / "subset" / f"{k:06d}{path.suffix.lower()}").symlink_to(path.resolve())
            return root, f"{data} (first {args.limit} of {len(files)} files)"
        return data, f"{data} ({len(files)} files)"

    root = tmp / "images"
    (root / "synthetic").mkdir(parents=True)
    largest = max(args.sizes)
    array, how = None, ""
    try:
        syn = tmp / "synthetic"
        subprocess.run([sys.executable, str(ROOT / "preprocess.py"), "--synthetic", str(args.synthetic),
                        "--out", str(syn), "--sizes", str(largest)], check=True, cwd=tmp,
                       stdout=subprocess.DEVNULL)
        array = np.load(syn / f"synthetic_{largest}.npy")
        how = "preprocess.py --synthetic"
    except (subprocess.CalledProcessError, FileNotFoundError, OSError) as err:
        print(f"note: preprocess.py --synthetic unavailable ({err}); using bench's own random blobs")
    if array is None:  # stand-in until preprocess.py exists: smooth random colour fields
        rng = np.random.default_rng(0)
        low = rng.integers(0, 256, (args.synthetic, 8, 8, 3), dtype=np.uint8)
        from PIL import Image

        array = np.stack([np.asarray(Image.fromarray(x).resize((largest, largest), Image.BILINEAR)) for x in low])
        how = "bench random blobs"
    for k, image in enumerate(array):
        utils.save_png(image, root / "synthetic" / f"{k:06d}.png")
    return root, f"synthetic: {len(array)} images at {largest} px ({how}) in a temp folder"


def fallback_arrays(root: Path, out: Path, sizes: list) -> dict:
    """Only when preprocess.py is not there yet: centre-crop + resize with PIL
    so the training rows still run on the same images."""
    from PIL import Image

    files = image_files(root)
    paths = {}
    for size in sizes:
        array = np.empty((len(files), size, size, 3), np.uint8)
        for k, path in enumerate(files):
            with Image.open(path) as im:
                im = im.convert("RGB")
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                array[k] = np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size),
                                                                                          Image.LANCZOS))
        paths[size] = out / f"bench_{size}.npy"
        with utils.atomic_path(paths[size]) as tmp_file:
            np.save(tmp_file, array)
    return paths


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #
def machine(gpu: bool = True) -> dict:
    """CPU, torch, Python, the commit; ``gpu``: also the GPU's name (this starts CUDA in this process)."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if gpu and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        info["dirty"] = bool(dirty)
    return info


def fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.gpu_check:
        import gpu_check

        args.argv = list(argv if argv is not None else sys.argv[1:])
        return gpu_check.run_check(args)
    from network import SIZES

    bad = [s for s in args.sizes if s not in SIZES]
    if bad:
        raise utils.UserError(f"--sizes {bad[0]} is not supported; choose from {', '.join(map(str, SIZES))}")
    for flag in ("batch_size", "steps", "feeder_batches", "synthetic", "eval_batch_size"):
        if getattr(args, flag) < 1:
            raise utils.UserError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    for flag in ("warmup", "workers", "limit", "eval_n"):
        if getattr(args, flag) < 0:
            raise utils.UserError(f"--{flag.replace('_', '-')} must be 0 or more (got {getattr(args, flag)})")
    if args.rss_check and any(n < 1 for n in args.rss_check):
        raise utils.UserError("--rss-check counts must be at least 1")
    device = utils.resolve_device(args.device)
    sizes = sorted(set(args.sizes))
    eval_n = args.eval_n or (4096 if device.type == "cuda" else 256)
    started = datetime.datetime.now(datetime.timezone.utc)

    results = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": "python bench.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "machine": machine(), "device": str(device),
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "small": args.small,
        "rows": {}, "ratio": {}}
    rows = results["rows"]
    with tempfile.TemporaryDirectory(prefix="dcgan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root, described = prepare_images(args, tmp)
        results["data"] = described
        print(f"bench: {described}; device {device}; batch {args.batch_size}; {args.warmup} warm-up + "
              f"{args.steps} timed steps; sizes {sizes}")

        arrays = tmp / "arrays"
        row = isolated(measure_preprocess, src=str(root), out=str(arrays), sizes=sizes)
        if "preprocess" not in args.skip:
            rows["preprocess"] = row
        npys = {s: arrays / f"bench_{s}.npy" for s in sizes}
        if row.get("status") != "ok" or not all(p.is_file() for p in npys.values()):
            print(f"note: preprocess.py unavailable ({row.get('reason')}); arrays made by bench's PIL fallback")
            npys = fallback_arrays(root, tmp / "fallback", sizes)
        for n in args.rss_check:
            rows[f"preprocess rss n={n}"] = isolated(measure_preprocess, src=str(root), out=str(tmp / f"rss{n}"),
                                                   sizes=sizes, limit=n)

        for size in sizes:
            if "feeder" not in args.skip:
                rows[f"feeder {size}"] = isolated(measure_feeder, npy=str(npys[size]), device=str(device),
                                                  batch_size=args.batch_size, batches=args.feeder_batches,
                                                  channels_last=args.channels_last)
            if "classic" not in args.skip:
                print(f"classic {size} px ...", flush=True)
                rows[f"train classic {size}"] = isolated(
                    measure_classic, image_root=str(root), size=size, device=str(device),
                    batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, workers=args.workers,
                    small=args.small, profile=args.profile)
            if "ours" not in args.skip:
                print(f"ours {size} px ...", flush=True)
                rows[f"train ours {size}"] = isolated(
                    measure_ours, npy=str(npys[size]), size=size, device=str(device), batch_size=args.batch_size,
                    steps=args.steps, warmup=args.warmup, precision=args.precision, compile=args.compile,
                    channels_last=args.channels_last, small=args.small, profile=args.profile)
            ours, classic = rows.get(f"train ours {size}", {}), rows.get(f"train classic {size}", {})
            if ours.get("status") == "ok" and classic.get("status") == "ok":
                results["ratio"][str(size)] = ours["img_s"] / classic["img_s"]
        if "evaluate" not in args.skip:
            rows[f"evaluate features {sizes[0]}"] = isolated(
                measure_evaluate, npy=str(npys[sizes[0]]), device=str(device), n=eval_n,
                batch_size=args.eval_batch_size, tmp=str(tmp))
    results["seconds"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1)
    print(table(results))
    print(json.dumps(results))
    if args.out_json:
        utils.save_json(results, args.out_json)
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
