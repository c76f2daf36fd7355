"""What the speed bench and the GPU check share: each measurement in its own
fresh process with its peak memory (``isolated``), the machine it ran on, the
rows themselves (``measure_*``: our training step, the classic loop, the
feeder, preprocess, FID features), the images they read, and the Trainer
built as train.py builds it (``make_trainer``: the same precision rule).

    row = isolated(measure_ours, npy="data/celeba_64.npy", size=64, device="cuda", batch_size=128, steps=50,
                   warmup=3, precision="auto", compile=True, channels_last="auto", small=False, profile=False)
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import utils

ROOT = Path(__file__).resolve().parents[1]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


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


def endless(feeder):
    """The feeder's batches, epoch after epoch, for as many steps as a row times."""
    epoch = 0
    while True:
        yield from feeder.epoch(epoch)
        epoch += 1


# --------------------------------------------------------------------------- #
# Our training path, as train.py sets it up
# --------------------------------------------------------------------------- #
def net_config(size: int, small: bool) -> dict:
    from network import DEFAULT_CONFIG

    width = 8 if small else 64
    return {**DEFAULT_CONFIG, "size": size, "ngf": width, "ndf": width}


def row_precision(requested: str, device) -> tuple[str, str]:
    """``--precision`` (auto, fp32, bf16, fp16) on ``device`` -> (precision, why),
    by train.py's rule: bf16 on CUDA with native bf16, fp16 on older CUDA GPUs, fp32 elsewhere."""
    import torch

    from training.device import device_capability, resolve_precision

    device = torch.device(device)
    return resolve_precision(requested, device.type, *device_capability(device))


def row_channels_last(option: str, device) -> bool:
    """``--channels-last`` auto / on / off -> the memory format train.py would use."""
    from training.device import default_channels_last

    return {"auto": default_channels_last(device), "on": True, "off": False}[option]


def make_trainer(config: dict, device, precision: str = "auto", compile: bool = False, channels_last: bool = True,
                 steps_per_epoch: int | None = None):
    """The Trainer as train.py builds it: ``precision`` resolved by train.py's rule
    (``row_precision``); ``steps_per_epoch``: the feeder's batches (top-k's schedule)."""
    from training.trainer import Trainer

    precision, _ = row_precision(precision, device)
    return Trainer(config, device, precision=precision, compile=compile, channels_last=channels_last,
                   steps_per_epoch=steps_per_epoch)


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


def measure_ours(npy: str, size: int, device: str, batch_size: int, steps: int, warmup: int,
                 precision: str, compile: bool, channels_last: str, small: bool, profile: bool,
                 recipe: str = "classic", compile_backend: str | None = None) -> dict:
    """training.trainer.Trainer's real step fed by dataloader.DeviceFeeder,
    with train.py's --recipe options; warmup_s includes torch.compile's work."""
    import dataloader
    from train import recipe_options
    from training.training_loop import DEFAULTS

    device = utils.resolve_device(device)
    config = {**DEFAULTS, **recipe_options(recipe), **net_config(size, small), "batch_size": batch_size}
    channels_last = row_channels_last(channels_last, device)
    feeder = dataloader.DeviceFeeder(npy, batch_size=batch_size, device=device, seed=0,
                                     channels_last=channels_last)
    if len(feeder) < 1:
        return unavailable(f"{feeder.num_images} images are fewer than one batch of {batch_size}")
    with default_compile_backend(compile_backend):
        trainer = make_trainer(config, device, precision, compile, channels_last, steps_per_epoch=len(feeder))

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
            "precision": trainer.precision, "compile": compile, "recipe": recipe, "channels_last": channels_last,
            "loss_g_last": loss_g}


def measure_feeder(npy: str, device: str, batch_size: int, batches: int, channels_last: str = "auto") -> dict:
    """DeviceFeeder batches in the memory format the training rows use."""
    import dataloader

    device = utils.resolve_device(device)
    channels_last = row_channels_last(channels_last, device)
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
    """preprocess.py on ``src`` into ``out`` (``bench_<size>.npy``), images per second."""
    import preprocess

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
    from metrics import features, inception

    device = utils.resolve_device(device)
    hub = inception.hub_weights_path()
    if hub.is_file():
        weights, kind = hub, "FID Inception (hub cache)"
    else:
        weights, kind = Path(tmp) / "random_inception.pth", "random init (FID weights offline; speed only)"
        if not weights.is_file():
            random_fid_weights(weights)
    model = inception.load_inception(device, weights_path=weights)
    images = np.load(npy, mmap_mode="r")
    n = min(n, len(images))
    batch_size = min(batch_size, n)
    features.array_features(model, images[:batch_size], device, batch_size=batch_size, desc="warm-up")
    sync(device)
    start = time.perf_counter()
    feats = features.array_features(model, images[:n], device, batch_size=batch_size, desc="timed")
    sync(device)
    seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": n / seconds, "seconds": seconds, "images": n, "batch": batch_size,
            "weights": kind, "features": list(feats.shape)}


# --------------------------------------------------------------------------- #
# Input images
# --------------------------------------------------------------------------- #
def image_files(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def prepare_images(data: Path, limit: int, synthetic: int, size: int, tmp: Path) -> tuple[Path, str]:
    """-> (ImageFolder root, description). A real ``data`` folder is only read:
    a ``limit`` subset is a folder of symlinks in ``tmp``. Where ``data`` does not
    exist, ``synthetic`` faces at ``size`` px are drawn by preprocess.py
    --synthetic and saved as PNG files in ``tmp`` (the classic loop reads files)."""
    data = Path(data)
    if data.is_dir():
        classes = [p for p in sorted(data.iterdir()) if p.is_dir()]
        files = image_files(data)
        if not classes or not files:
            raise utils.UserError(f"--data {data} needs ImageFolder layout: class subfolder(s) holding images")
        if limit and limit < len(files):
            root = tmp / "images"
            (root / "subset").mkdir(parents=True)
            for k, path in enumerate(files[:limit]):
                (root / "subset" / f"{k:06d}{path.suffix.lower()}").symlink_to(path.resolve())
            return root, f"{data} (first {limit} of {len(files)} files)"
        return data, f"{data} ({len(files)} files)"

    root = tmp / "images"
    (root / "synthetic").mkdir(parents=True)
    made = tmp / "synthetic"
    subprocess.run([sys.executable, str(ROOT / "preprocess.py"), "--synthetic", str(synthetic), "--out", str(made),
                    "--sizes", str(size)], check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    array = np.load(made / f"synthetic_{size}.npy")
    for k, image in enumerate(array):
        utils.save_png(image, root / "synthetic" / f"{k:06d}.png")
    return root, f"synthetic: {len(array)} images at {size} px (preprocess.py --synthetic) in a temp folder"


# --------------------------------------------------------------------------- #
# The machine, and numbers for tables
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


def fmt(value, digits: int = 1) -> str:
    """``value`` with thousands separators and ``digits`` decimals; '-' for None."""
    return "-" if value is None else f"{value:,.{digits}f}"
