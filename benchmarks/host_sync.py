"""Find the host syncs in a training step: every aten call that makes the CPU
wait for the GPU (.item(), data-dependent shapes, blocking copies), with the
line of this project that made it. A TorchDispatchMode, so it works on the CPU
too, where such calls would sync on a GPU.

    found = probe_host_syncs(lambda: trainer.step(batch), steps=20, device="cuda")
    found["host_syncs"], found["where"]     # 0, {} when the step never waits
"""
from __future__ import annotations

import os
import traceback
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from utils.paths import ROOT


def probe_host_syncs(step, steps: int, device) -> dict:
    """Run ``step`` ``steps`` times under HostSyncRecorder (and on CUDA under
    torch.cuda.set_sync_debug_mode("warn"), then one more step under "error")."""
    cuda = torch.device(device).type == "cuda"
    with warnings.catch_warnings(record=True) as caught, HostSyncRecorder(device) as recorder:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    found = {"steps": steps, "host_syncs": len(recorder.events), "where": recorder.where()}
    if recorder.optimizer_reads:
        found["cpu_optimizer_reads_not_counted"] = recorder.optimizer_reads
    if cuda:
        warned = [w for w in caught if "synchroniz" in str(w.message).lower()]
        found["cuda_sync_warnings"] = len(warned)
        found["cuda_where"] = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in warned})[:10]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            found["error_mode"] = "no error in one more step"
        except RuntimeError as err:
            found["error_mode"] = str(err).strip().splitlines()[0][:200]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return found


def _sync_reason(func, args, kwargs, device) -> str | None:
    """Why this aten call makes the host wait for ``device`` (None: it does not)."""
    name = func.overloadpacket.__name__
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    on_device = bool(tensors) and tensors[0].device.type == device.type
    if name in ("_local_scalar_dense", "is_nonzero", "equal") and on_device:
        return f"{name} (a host read: .item(), float(), bool(), if tensor)"
    if name in ("nonzero", "masked_select", "unique_consecutive", "_unique2", "unique_dim") and on_device:
        return f"{name} (output size depends on the data)"
    if name == "repeat_interleave" and on_device and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if name in ("index", "index_put", "index_put_", "_index_put_impl_") and on_device and len(args) > 1:
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            return f"{name} with a boolean mask"
    if name in ("_to_copy", "copy_") and tensors and not kwargs.get("non_blocking", args[2] if name == "copy_"
                                                                    and len(args) > 2 else False):
        src = tensors[1] if name == "copy_" and len(tensors) > 1 else tensors[0]
        dst = tensors[0].device if name == "copy_" else torch.device(kwargs.get("device") or src.device)
        if src.device.type != dst.type and "cpu" in (src.device.type, dst.type):
            return f"blocking copy {src.device.type} -> {dst.type}"
    return None


class HostSyncRecorder(TorchDispatchMode):
    """Records every aten call that makes the host wait for ``device``:
    scalar reads (.item(), float(), bool()), data-dependent output sizes
    (nonzero, masked_select, boolean-mask indexing, unique) and blocking
    copies between the host and the device; with the project line that
    caused each (autograd threads have no Python line). On the CPU these
    are the calls that would sync on a GPU.

        with HostSyncRecorder("cuda") as recorder: ...; recorder.events
    """

    def __init__(self, device="cpu"):
        super().__init__()
        self.device, self.events, self.optimizer_reads = torch.device(device), [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs, self.device)
        if reason and self.device.type == "cpu" and _in_optimizer():
            self.optimizer_reads += 1  # CPU Adam reads its step counters; CUDA's fused Adam does not
        elif reason:
            self.events.append((reason, project_line()))
        return func(*args, **kwargs)

    def where(self) -> dict:
        counts: dict = {}
        for reason, line in self.events:
            counts[f"{line}: {reason}"] = counts.get(f"{line}: {reason}", 0) + 1
        return counts


def _in_optimizer() -> bool:
    return any(f"torch{os.sep}optim{os.sep}" in frame.filename for frame in traceback.extract_stack())


def project_line() -> str:
    """The innermost line of this project's code on the stack, as file:line (function)."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if ROOT in path.parents and not (path.name == "host_sync.py" and frame.name in (
                "__torch_dispatch__", "project_line")) and "site-packages" not in path.parts:
            return f"{path.relative_to(ROOT)}:{frame.lineno} ({frame.name})"
    return "(no Python line: autograd or C++ thread)"
