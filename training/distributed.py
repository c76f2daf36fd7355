"""Processes: the process group, rank-0 printing, the stop vote, signals.

Under torchrun (WORLD_SIZE > 1) ``init`` joins the process group from the
environment: NCCL on CUDA, Gloo on CPU; multi-node works the same way through
torchrun's --nnodes/--rdzv-* flags. One process needs no group, and every
helper here is then a plain local call.

    device = distributed.init("auto")
    distributed.print0("only rank 0 prints this")
"""
from __future__ import annotations

import datetime
import os
import signal
import sys

import torch

import utils

WAIT_TIMEOUT_HOURS = 6  # ranks waiting for rank 0's Inception work (real statistics of a big data set)
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # exit codes: 128 + signal number

_state = {"rank": 0, "world_size": 1, "stop_group": None, "wait_group": None, "device": None}


def init(device_name: str = "auto") -> torch.device:
    """-> this process's device; joins the process group once under torchrun.
    A CUDA device always gets its index and becomes the current device, so
    streams, events and pinned copies use that GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and _state["device"] is not None:  # joined already (train.py's main, then the loop)
        return _state["device"]
    device = utils.resolve_device(device_name)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _state.update(
            rank=dist.get_rank(), world_size=dist.get_world_size(),
            # a CPU (Gloo) group for the stop vote, so it never syncs the GPU stream
            stop_group=dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD,
            # and one with a long timeout for waiting on rank 0's FID work (NCCL's watchdog stops a run after 10 min)
            wait_group=dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=WAIT_TIMEOUT_HOURS)),
            device=device,
        )
    return device


def shutdown() -> None:
    """Leave the process group (if any); ``init`` may then be called again."""
    if _state["world_size"] > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _state.update(rank=0, world_size=1, stop_group=None, wait_group=None, device=None)


def get_rank() -> int:
    return _state["rank"]


def get_world_size() -> int:
    return _state["world_size"]


def print0(*args, **kwargs) -> None:
    if _state["rank"] == 0:
        print(*args, **kwargs)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (over the long-timeout Gloo group)."""
    if _state["world_size"] <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_state["wait_group"])
    return box[0]


def wait_for_rank0() -> None:
    """A barrier on the long-timeout Gloo group: the other ranks wait while rank 0 does Inception work."""
    if _state["world_size"] > 1:
        import torch.distributed as dist

        dist.barrier(group=_state["wait_group"])


def should_stop(signum: int | None) -> int | None:
    """The stop vote: any rank's signal number (the largest), else None, on every
    rank. One blocking Gloo all-reduce: the loop calls it at log intervals only."""
    if _state["world_size"] <= 1:
        return signum
    import torch.distributed as dist

    vote = torch.tensor([0 if signum is None else signum])
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_state["stop_group"])
    return int(vote.item()) or None


class StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current step (under
    torchrun: at the next stop vote); a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              f"(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_EXIT:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
