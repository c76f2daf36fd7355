"""Device, precision and DDP helpers: which precision to train in on a
device, its memory format, DDP wrapping, and optimiser state laid out like its
parameters.

    precision, why = resolve_precision("auto", "cuda", (7, 5), "Tesla T4")  # -> ("fp16", "auto: Tesla T4, ...")
    precision, why = resolve_precision("auto", device.type, *device_capability(device))
"""
from __future__ import annotations

import torch
from torch import nn

from utils import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device_type: str, capability: tuple[int, int] | None = None,
                      name: str = "GPU") -> tuple[str, str]:
    """``precision`` (auto, fp32, bf16 or fp16) -> (fp32 | bf16 | fp16, why), for
    a device of ``device_type`` whose CUDA compute ``capability`` and ``name``
    are given (pure, so testable without CUDA). auto: bf16 autocast where the
    GPU has native bf16 (compute capability 8.0+, Ampere and later); fp16
    autocast with loss scaling on older CUDA GPUs (T4, V100), where bf16 is
    emulated and slow; fp32 on CPU and MPS."""
    if precision not in ("auto", *PRECISIONS):
        raise UserError(f"unknown precision {precision!r} (use auto, {', '.join(PRECISIONS)})")
    gpu = "" if capability is None else f"{name}, compute capability {capability[0]}.{capability[1]}"
    native_bf16 = capability is not None and capability >= (8, 0)
    if precision != "auto":
        if precision == "bf16" and device_type == "cuda" and capability is not None and not native_bf16:
            return precision, f"as typed; {gpu} has no native bf16, so it is emulated and slow: --precision fp16"
        return precision, "as typed"
    if device_type != "cuda" or capability is None:
        return "fp32", f"auto: {device_type}"
    if native_bf16:
        return "bf16", f"auto: {gpu}, native bf16"
    return "fp16", f"auto: {gpu}, no native bf16"


def device_capability(device) -> tuple[tuple[int, int] | None, str]:
    """-> (CUDA compute capability or None, device name) for resolve_precision."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, device.type
    return torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)


def default_channels_last(device) -> bool:
    """channels_last: faster convs on CUDA (tensor cores) and on CPU (oneDNN), see BENCHMARKS.md."""
    return torch.device(device).type in ("cuda", "cpu")


def wrap_ddp(module: nn.Module, device_ids) -> nn.Module:
    """DDP that syncs every buffer from rank 0 once, at wrapping, and never in
    forward: train-mode BN uses batch statistics and rank 0 saves and samples
    with its own running stats, so a broadcast before each of the four forwards
    per step would change nothing rank 0 keeps; the spectral-norm vectors
    (``--sn``), drawn from each rank's RNG, start equal and then stay equal
    (the power iteration runs on the same weights). torch >= 2.14 says this with
    ``forward_sync_buffers=False``; before it, ``broadcast_buffers=False`` (now
    deprecated) skipped the first sync too, so that is done here."""
    import inspect

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP).parameters:
        return DDP(module, device_ids=device_ids, forward_sync_buffers=False)
    wrapped = DDP(module, device_ids=device_ids, broadcast_buffers=False)
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
    return wrapped


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every state tensor of a parameter's shape (Adam's moments) that
    parameter's strides. ``Optimizer.load_state_dict`` keeps the saved strides,
    so a checkpoint from another memory format (``--channels-last off``, MPS,
    older runs) would hand channels_last params NCHW moments, which CUDA's
    fused Adam refuses."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
