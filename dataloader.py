"""Reading the arrays preprocess.py writes: checks, the content fingerprint, and the
fast device-resident batch feeder train.py uses.

    from dataloader import load_images, DeviceFeeder
    images = load_images("data/celeba_64.npy", size=64)      # uint8 (N, 64, 64, 3), memory-mapped
    feeder = DeviceFeeder(images, batch_size=128, device="cuda", seed=0, flip=True)
    for real in feeder.epoch(0):                              # float32 (128, 3, 64, 64) in [-1, 1] on the GPU
        ...

The feeder copies the uint8 array to the device once (4x smaller than float),
then every batch is one ``index_select`` of a slice of a per-epoch permutation
generated on the device, an optional flip, and one uint8 -> float conversion:
no per-image Python, no worker processes, no host-device sync per batch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from utils import UserError, file_kind

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, epoch) over the 64-bit seed space


def check_images(array, source="array", size=None) -> None:
    """UserError unless ``array`` is uint8 (N, S, S, 3) with S == size (if given)."""
    shape = tuple(array.shape)
    if array.ndim != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise UserError(f"{source} has shape {shape}; expected uint8 images (N, S, S, 3) as preprocess.py writes")
    if array.dtype != np.uint8:
        raise UserError(f"{source} has dtype {array.dtype}; expected uint8 images (N, S, S, 3)")
    if shape[0] == 0:
        raise UserError(f"{source} holds no images (shape {shape})")
    if size is not None and shape[1] != size:
        raise UserError(
            f"{source} holds {shape[1]}x{shape[2]} images (shape {shape}) but size {size} was asked for; "
            f"make them with `python preprocess.py --sizes {size}` or pass the matching file"
        )


def load_images(path, size: int | None = None) -> np.ndarray:
    """The uint8 (N, S, S, 3) array at ``path``, memory-mapped (read-only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image array not found: {path} (make it with `python preprocess.py`)")
    kind = file_kind(path)
    if kind[0] != "npy":
        src = path if kind[0] == "zip" else "FOLDER"  # preprocess.py reads a zip of photos in place
        raise UserError(f"{path} is {kind[1]}, not an image array from preprocess.py; "
                        f"make one with: python preprocess.py --src {src}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npy image array ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path} is not a single .npy array")
    check_images(array, str(path), size)
    return array


def data_fingerprint(path) -> str:
    """A short content hash that keys caches (FID statistics...). Taken from the
    sidecar json preprocess.py writes when it matches the array; otherwise a
    hash of the file size and sampled bytes (fast even for 10 GB)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image array not found: {path}")
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if meta.get("fingerprint") and meta.get("count") == array.shape[0] and meta.get("size") == array.shape[1]:
            return str(meta["fingerprint"])
    except (OSError, ValueError, AttributeError, IndexError):
        pass
    total = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(total).encode())
    block = 1 << 16
    with open(path, "rb") as handle:
        for k in range(65):  # evenly spaced 64 KiB blocks, first and last included
            handle.seek(max(0, min(total - block, (total - block) * k // 64)))
            digest.update(handle.read(block))
    return "file-" + digest.hexdigest()


def to_float(batch_u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1] (x / 127.5 - 1), contiguous or channels_last."""
    x = batch_u8.permute(0, 3, 1, 2)  # a channels_last view of the NHWC data
    if not channels_last:
        x = x.contiguous()  # reorder the 1-byte values, cheaper than reordering floats
    return x.to(torch.float32).div_(127.5).sub_(1.0)


class DeviceFeeder:
    """Seeded, shuffled, device-resident batches of real images.

    ``images``: uint8 (N, S, S, 3) array / memmap, or a path to one.
    ``batch_size`` is the global batch; rank r of ``world_size`` gets
    ``batch_size // world_size`` images of every batch, disjoint from the other
    ranks. The order and the flips of an epoch are a pure function of
    (seed, epoch) (and the device type), so ``epoch(e, start_batch=k)`` resumes
    exactly where a run stopped.

    ``storage``: "auto" keeps the array in GPU memory when it fits (leaving
    ``reserve`` of the free memory), otherwise in pinned host memory with
    asynchronous copies; on CPU the array sits in ordinary memory.
    """

    def __init__(self, images, batch_size: int = 128, device="cpu", seed: int = 0, flip: bool = False,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 storage: str = "auto", reserve: float = 0.5):
        if isinstance(images, (str, Path)):
            images = load_images(images)
        elif isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        check_images(images, "images")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not valid for world_size {world_size}")
        if batch_size < world_size or batch_size % world_size:
            raise UserError(f"batch_size {batch_size} must be a positive multiple of world_size {world_size}")
        n = images.shape[0]
        if drop_last and n < batch_size:
            raise UserError(f"only {n} images but batch_size is {batch_size}; use a smaller batch or more images")
        if storage not in ("auto", "device", "pinned"):
            raise UserError(f"storage must be auto, device or pinned, got {storage!r}")
        self.device = torch.device(device)
        self.num_images, self.size = n, images.shape[1]
        self.batch_size, self.local_batch = batch_size, batch_size // world_size
        self.seed, self.flip, self.channels_last = int(seed), bool(flip), bool(channels_last)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.data = self._place(images, storage, reserve)
        self._buffers = None

    # ------------------------------------------------------------------ #
    def _place(self, images: np.ndarray, storage: str, reserve: float) -> torch.Tensor:
        """Copy the uint8 array once, in chunks (never a second full host copy)."""
        n, nbytes = images.shape[0], images.nbytes
        chunk = max(1, (256 << 20) // max(1, nbytes // n))  # ~256 MiB at a time
        if self.device.type == "cpu":
            self.storage = "cpu"
            return torch.from_numpy(np.ascontiguousarray(images) if not isinstance(images, np.memmap)
                                    else np.array(images))
        if storage == "auto":
            storage = "device"
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                storage = "device" if nbytes <= free * (1 - reserve) else "pinned"
        self.storage = storage
        if storage == "pinned":
            data = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
            for start in range(0, n, chunk):
                data[start:start + chunk] = torch.from_numpy(np.array(images[start:start + chunk]))
            return data
        data = torch.empty(images.shape, dtype=torch.uint8, device=self.device)
        for start in range(0, n, chunk):
            part = torch.from_numpy(np.array(images[start:start + chunk]))
            data[start:start + chunk].copy_(part.pin_memory() if self.device.type == "cuda" else part)
        return data

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_images // self.batch_size
        return -(-self.num_images // self.batch_size)

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The epoch's permutation of all images and per-position flip flags,
        made on the device from (seed, epoch); identical on every rank."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.seed * _MIX + int(epoch) * 1_000_003 + 12345) % (1 << 63))
        perm = torch.randperm(self.num_images, generator=gen, device=self.device)
        flips = None
        if self.flip:
            flips = torch.rand(self.num_images, generator=gen, device=self.device) < 0.5
        return perm, flips

    def _rank_slice(self, b: int) -> tuple[int, int]:
        """[start, stop) of this rank's part of global batch b in the permutation."""
        start = b * self.batch_size
        if start + self.batch_size <= self.num_images:
            lo = start + self.rank * self.local_batch
            return lo, lo + self.local_batch
        # the last, short batch (drop_last=False): split as evenly as possible
        rest = self.num_images - start
        bounds = [start + rest * r // self.world_size for r in range(self.world_size + 1)]
        return bounds[self.rank], bounds[self.rank + 1]

    def epoch(self, epoch: int, start_batch: int = 0):
        """Iterator of float32 (B_rank, 3, S, S) batches in [-1, 1] on the device."""
        if epoch < 0:
            raise UserError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= len(self):
            raise UserError(f"start_batch {start_batch} is outside 0..{len(self)} for this feeder")
        perm, flips = self.order(epoch)
        if self.storage == "pinned":
            return self._pinned_batches(perm.cpu(), None if flips is None else flips, start_batch)
        return self._device_batches(perm, flips, start_batch)

    def _finish(self, batch: torch.Tensor, flip_mask: torch.Tensor | None) -> torch.Tensor:
        if flip_mask is not None:  # horizontal flip = reverse W, which is dim 2 of NHWC
            batch = torch.where(flip_mask.view(-1, 1, 1, 1), batch.flip(2), batch)
        return to_float(batch, self.channels_last)

    def _device_batches(self, perm, flips, start_batch):
        for b in range(start_batch, len(self)):
            lo, hi = self._rank_slice(b)
            batch = self.data.index_select(0, perm[lo:hi])
            yield self._finish(batch, None if flips is None else flips[lo:hi])

    def _pinned_batches(self, perm_cpu, flips, start_batch):
        # two pinned staging buffers: gather batch k+1 on the host while batch k copies. On CUDA the
        # copies run on a side stream of the feeder's own GPU (so they overlap compute, and the event
        # guarding each buffer is recorded behind its copy, whichever GPU is current); compute waits for it.
        cuda = self.device.type == "cuda"
        if self._buffers is None:
            shape = (self.local_batch, self.size, self.size, 3)
            self._buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            self._events = [None, None]
            self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        for k, b in enumerate(range(start_batch, len(self))):
            lo, hi = self._rank_slice(b)
            slot = k % 2
            if self._events[slot] is not None:
                self._events[slot].synchronize()  # the copy out of this buffer has finished
            staging = self._buffers[slot][: hi - lo]
            torch.index_select(self.data, 0, perm_cpu[lo:hi], out=staging)
            if cuda:
                compute = torch.cuda.current_stream(self.device)
                with torch.cuda.stream(self._copy_stream):
                    batch = staging.to(self.device, non_blocking=True)
                    self._events[slot] = torch.cuda.Event()
                    self._events[slot].record(self._copy_stream)
                compute.wait_stream(self._copy_stream)
                batch.record_stream(compute)  # its memory is not reused before compute has read it
            else:
                batch = staging.to(self.device)
            yield self._finish(batch, None if flips is None else flips[lo:hi])
