"""preprocess.py's outputs: a worker pool streams decoded images, in order,
straight into ``{out}/{name}_{S}.npy`` (never the whole array in memory), then
the attribute labels, the preview grid and the ``.json`` (which marks the
outputs up to date) appear, each atomically.

    from preprocessing import writer
    from preprocessing.synthetic import synthetic_task
    tasks = [(i, 0, (32,)) for i in range(8)]
    writer.write_outputs(Path("/tmp/faces"), "demo", (32,), 8, tasks, synthetic_task, 1, None,
                         lambda size: {"source": "demo"}, desc="demo")
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import struct
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import utils
from utils import UserError

FORMAT_VERSION = 1  # in every signature: a new version rebuilds every output


# --------------------------------------------------------------------------- #
# Streaming .npy writer: the array is appended image by image, never in RAM
# --------------------------------------------------------------------------- #
def _npy_header(shape: tuple, total: int | None = None) -> bytes:
    """A version 1.0 .npy header for uint8 C-order data, padded to ``total``
    bytes (so a shorter shape can later overwrite it in place)."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(int(d) for d in shape),)
    if total is None:
        total = -(-(10 + len(text) + 1 + 32) // 64) * 64  # 64-byte aligned, with slack
    pad = total - 10 - len(text) - 1
    assert pad >= 0
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", total - 10) + text.encode("latin1") + b" " * pad + b"\n"


class NpyStreamWriter:
    """Append uint8 images to a .npy file; ``close()`` fixes the header to the
    number actually written (skipped files leave no holes)."""

    def __init__(self, path: str, capacity: int, size: int):
        self.path, self.size, self.count = path, size, 0
        self.header = _npy_header((capacity, size, size, 3))
        self.file = open(path, "wb")
        self.file.write(self.header)
        self.digest = hashlib.blake2b(digest_size=16)

    def append(self, buffer: bytes) -> None:
        self.file.write(buffer)
        self.digest.update(buffer)
        self.count += 1

    def close(self) -> str:
        shape = (self.count, self.size, self.size, 3)
        self.file.seek(0)
        self.file.write(_npy_header(shape, total=len(self.header)))
        self.file.truncate(len(self.header) + self.count * self.size * self.size * 3)
        self.file.close()
        self.digest.update(repr(shape).encode())
        return self.digest.hexdigest()


# --------------------------------------------------------------------------- #
# Output files and the up-to-date check
# --------------------------------------------------------------------------- #
def output_paths(out: Path, name: str, size: int) -> dict:
    stem = out / f"{name}_{size}"
    return {"npy": stem.with_suffix(".npy"), "json": stem.with_suffix(".json"),
            "preview": out / f"{name}_{size}_preview.png", "attrs": out / f"{name}_{size}.attrs.npz"}


def is_up_to_date(paths: dict, signature: dict) -> bool:
    """True when the json beside an existing .npy records the same input and options."""
    try:
        meta = json.loads(paths["json"].read_text())
    except (OSError, ValueError):
        return False
    return paths["npy"].is_file() and meta.get("signature") == signature


def sizes_to_build(out: Path, name: str, sizes: tuple, signature: dict, force: bool = False) -> tuple:
    """The sizes whose outputs are missing or were made from other input or
    options (all of them with ``force``); says which are already up to date."""
    todo = tuple(s for s in sizes if force or not is_up_to_date(output_paths(out, name, s), dict(signature, size=s)))
    for size in sizes:
        if size not in todo:
            print(f"{output_paths(out, name, size)['npy']} is up to date (same input and options; --force rebuilds)")
    return todo


# --------------------------------------------------------------------------- #
# The pool and the outputs
# --------------------------------------------------------------------------- #
def run_pool(tasks: list, worker, workers: int, writers: dict, sizes: tuple, names: list | None, desc: str) -> list:
    """Stream ``worker(task)`` results, in order, into the writers; returns
    ([[file, reason], ...] for skipped inputs, the indices of the written ones)."""
    skipped, kept = [], []
    bar = tqdm(total=len(tasks), desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5)
    chunk = max(1, min(64, len(tasks) // (8 * max(1, workers)) or 1))
    if workers <= 1:
        results = map(worker, tasks)
        pool = contextlib.nullcontext()
    else:
        # forkserver, not fork: a forked worker inherits the parent's locks mid-use when the parent runs
        # threads (a notebook, a web server, a test session), and a Pool whose worker dies that way waits forever
        pool = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver").Pool(workers)
        results = pool.imap(worker, tasks, chunksize=chunk)
    with pool, bar:
        for index, buffers, reason in results:
            if buffers is None:
                skipped.append([names[index], reason])
                bar.set_postfix(skipped=len(skipped), refresh=False)
            else:
                for size, buf in zip(sizes, buffers):
                    writers[size].append(buf)
                kept.append(index)
            bar.update(1)
    return skipped, kept


def write_arrays(out: Path, name: str, sizes: tuple, capacity: int, tasks: list, worker, workers: int,
                 names: list | None, desc: str) -> tuple[list, list, dict]:
    """Run the pool into temp .npy files and rename them into place only when
    every size finished; the json and label files of the old arrays go.
    -> (skipped [[file, reason], ...], indices written, {size: fingerprint})."""
    with contextlib.ExitStack() as stack:
        writers = {}
        for size in sizes:
            tmp = stack.enter_context(utils.atomic_path(output_paths(out, name, size)["npy"]))
            writers[size] = NpyStreamWriter(tmp, capacity, size)
            stack.callback(writers[size].file.close)
        skipped, kept = run_pool(tasks, worker, workers, writers, sizes, names, desc)
        if len(skipped) == capacity:
            raise UserError(f"none of the {capacity} input files could be read (first: {skipped[0][0]}: "
                            f"{skipped[0][1]}); nothing written")
        fingerprints = {size: writers[size].close() for size in sizes}
        for size in sizes:  # a stale json or label file must never describe a new .npy
            for stale in ("json", "attrs"):
                with contextlib.suppress(FileNotFoundError):
                    output_paths(out, name, size)[stale].unlink()
    return skipped, kept, fingerprints  # the ExitStack has renamed every temp .npy into place


def write_outputs(out: Path, name: str, sizes: tuple, capacity: int, tasks: list, worker, workers: int,
                  names: list | None, meta_for_size, desc: str, crop_text: str | None = None,
                  attributes: dict | None = None) -> dict:
    """Run the pool into temp files, then publish npy, attribute labels (when
    ``attributes`` has them, one row per input name), preview and json for
    every size; the json, which marks the outputs up to date, comes last.
    Nothing is replaced unless every size finished. ``crop_text`` (the crop box
    used) goes into the summary line."""
    start = time.time()
    skipped, kept, fingerprints = write_arrays(out, name, sizes, capacity, tasks, worker, workers, names, desc)
    count = capacity - len(skipped)
    seconds = time.time() - start
    results = {}
    for size in sizes:
        paths = output_paths(out, name, size)
        if attributes is not None:
            write_attributes(paths["attrs"], attributes, [names[i] for i in kept], attributes["labels"][kept])
        preview = np.load(paths["npy"], mmap_mode="r")[:64]
        utils.save_png(utils.image_grid(np.ascontiguousarray(preview), nrow=8), paths["preview"])
        meta = meta_for_size(size)
        if attributes is not None:
            meta["attributes"] = {"file": ", ".join(str(f.resolve()) for f in attributes["paths"]), "labels": str(paths["attrs"]),
                                  "images_with_a_row": int(np.count_nonzero(attributes["labels"][kept].any(1))),
                                  "rows_without_an_image": attributes["rows_without_image"]}
        meta.update(count=count, size=size, skipped=skipped, fingerprint=fingerprints[size],
                    seconds=round(seconds, 2), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        utils.save_json(meta, paths["json"])
        results[size] = paths
    rate = capacity / max(seconds, 1e-9)
    written = ", ".join(str(results[s]["npy"]) for s in sizes)
    crop_part = f", {crop_text}" if crop_text else ""
    print(f"wrote {written}: {count} images, {len(skipped)} skipped{crop_part}, {seconds:.1f} s, {rate:.0f} images/s")
    return results


def write_attributes(path: Path, attributes: dict, files: list[str], labels: np.ndarray) -> None:
    """``<name>_<size>.attrs.npz``: names (the attribute names), labels (int8,
    one row per image of the array, in its order: 1, -1, or 0 where the file
    has no row for that image) and files (each row's source file), atomically."""
    with utils.atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, names=np.array(attributes["names"]), labels=labels.astype(np.int8), files=np.array(files))
