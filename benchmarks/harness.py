"""What the speed bench and the GPU check share, without torch: each
measurement in its own fresh process with its peak memory (``isolated``, the
row named as ``"module:function"`` so only that process imports it), a command
run as a user runs it (``run_script``), the preprocess row, the images the rows
read and the machine they ran on. The rows that use torch are in rows.py.

    row = isolated("benchmarks.rows:measure_ours", npy="data/celeba_64.npy", size=64, device="cuda",
                   batch_size=128, steps=50, warmup=3, precision="auto", compile=True, channels_last="auto",
                   small=False, profile=False)
    row = isolated("benchmarks.harness:measure_preprocess", src="faces", out="/tmp/arrays", sizes=[64])
"""
from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import os
import platform
import runpy
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

import utils
from utils.paths import ROOT

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


def resolve(reference: str):
    """``"package.module:function"`` -> that function, its module imported now:
    a row or a stage is named, so the process that plans never imports it (nor torch)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _child(conn, row: str, kwargs) -> None:
    try:
        with MemoryWatch() as watch:
            result = resolve(row)(**kwargs)
        result.update(watch.result())
        torch = sys.modules.get("torch")  # loaded by the row, if it uses it
        device = torch and torch.device(kwargs.get("device") or "cpu")
        if device and device.type == "cuda" and torch.cuda.is_initialized():  # the benchmarked GPU, not the current one
            result["gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        conn.send(result)
    except BaseException as err:  # reported as a failed row, never a crash of the whole bench
        conn.send({"status": "failed", "reason": f"{type(err).__name__}: {str(err).strip()[:300]}",
                   "traceback": traceback.format_exc()})
    finally:
        conn.close()


def isolated(row: str, timeout: float | None = None, **kwargs) -> dict:
    """Run the function ``row`` names (``"benchmarks.rows:measure_ours"``) with
    ``kwargs`` in a fresh spawned (non-daemon, so it may start its own workers)
    process; return its result dict plus its peak memory. After ``timeout``
    seconds the process is killed and the row failed."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, row, kwargs))
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


@contextlib.contextmanager
def default_compile_backend(backend: str | None):
    """torch.compile calls that name no backend use ``backend`` meanwhile
    (aot_eager: dynamo and AOTAutograd without Inductor's C++ / Triton code
    generation, which takes a minute on a CPU); None changes nothing."""
    import torch  # only when called: this module loads without torch

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


def run_script(script: str, argv: list) -> int:
    """``python SCRIPT ARGV`` run in this process, as a user runs the command
    (its ``__main__`` block) -> its exit code: for a process that measures the
    command itself, or sets torch.compile's default backend first."""
    path, saved = ROOT / script, sys.argv
    sys.argv = [str(path), *map(str, argv)]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    finally:
        sys.argv = saved
    return 0


def measure_preprocess(src: str, out: str, sizes: list, limit: int = 0) -> dict:
    """preprocess.py on ``src`` into ``out`` (``bench_<size>.npy``), images per second."""
    argv = ["--src", src, "--out", out, "--sizes", *map(str, sizes), "--name", "bench", "--force"]
    if limit:
        argv += ["--limit", str(limit)]
    start = time.perf_counter()
    code = run_script("preprocess.py", argv)
    seconds = time.perf_counter() - start
    if code:
        raise utils.UserError(f"preprocess.py exited with {code} (its error is printed above)")
    meta = json.loads((Path(out) / f"bench_{sizes[0]}.json").read_text())
    return {"status": "ok", "img_s": meta["count"] / seconds, "seconds": seconds, "images": meta["count"],
            "skipped": len(meta.get("skipped", [])), "sizes": sizes}


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
    import torch  # only when called: this module loads without torch

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
