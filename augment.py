"""Differentiable augmentation for GAN training (DiffAugment, Zhao et al., 2020).

D never sees an un-augmented image: the same random transform family is
applied to every real and every fake batch D scores, in D's step and in G's
step, so D cannot tell reals from fakes by the augmentation, and G gets its
gradient back through the transform (every op here is differentiable w.r.t.
the images). On a small data set this stops D from memorising the reals.

    from augment import diff_augment
    logits = D(diff_augment(real, "color,translation,cutout"))

The default policy is ``color,translation,cutout``: the one Zhao et al.
recommend when data is scarce (their 100-shot / 10 % CelebA and CIFAR
results); colour alone barely helps, translation and cutout carry most of the
gain, and none of the three changes what a face looks like once undone.

Random parameters are drawn per image from the torch RNG on the images'
device (one call per op for the whole batch, no per-image Python), so the
checkpoint's RNG state makes a resumed run repeat them exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import UserError

DEFAULT_POLICY = "color,translation,cutout"


def _rand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) on x's device, float32 (promotes bf16 images, like autocast would)."""
    return torch.rand(*shape, device=x.device)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Add U(-0.5, 0.5) to each image."""
    return x + (_rand(x, x.shape[0], 1, 1, 1) - 0.5)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's distance from its grey value by U(0, 2)."""
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * (_rand(x, x.shape[0], 1, 1, 1) * 2) + grey


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale each image's distance from its mean by U(0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, x.shape[0], 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y (integer
    pixels, zero fill): one gather from the zero-padded batch."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # per-image shifts in [-sh, sh] x [-sw, sw]
    dy = (_rand(x, b, 1) * (2 * sh + 1)).long() - sh                       # (B, 1)
    dx = (_rand(x, b, 1) * (2 * sw + 1)).long() - sw                       # (B, 1)
    padded = F.pad(x, [sw, sw, sh, sh])                                     # (B, C, H+2sh, W+2sw)
    rows = torch.arange(h, device=x.device) + sh - dy                       # (B, H) source rows
    cols = torch.arange(w, device=x.device) + sw - dx                       # (B, W) source cols
    batch = torch.arange(b, device=x.device)[:, None, None]                 # (B, 1, 1)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]               # (B, H, W, C)
    return out.permute(0, 3, 1, 2)                                          # (B, C, H, W), channels_last strides


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of side ``ratio`` * size per image, centred anywhere in
    the image (it may be clipped by the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = (_rand(x, b, 1, 1) * h).long()                                     # (B, 1, 1) centre row
    cx = (_rand(x, b, 1, 1) * w).long()
    ys = torch.arange(h, device=x.device)[None, :, None]                    # (1, H, 1)
    xs = torch.arange(w, device=x.device)[None, None, :]                    # (1, 1, W)
    inside = ((ys - cy + ch // 2) >= 0) & ((ys - cy + ch // 2) < ch) \
        & ((xs - cx + cw // 2) >= 0) & ((xs - cx + cw // 2) < cw)          # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)                           # (B, 1, H, W) mask


OPS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' / 'none' -> (). Unknown names: UserError."""
    if not policy or policy == "none":
        return ()
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise UserError(f"unknown --augment op {unknown[0]!r} (use a comma list of {', '.join(OPS)}, or none)")
    return names


def diff_augment(x: torch.Tensor, policy: str = DEFAULT_POLICY) -> torch.Tensor:
    """Images (B, C, H, W) -> the same batch augmented, each image with its own
    random parameters; differentiable w.r.t. ``x``, same shape and memory format."""
    names = parse_policy(policy)
    if not names:
        return x
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    for name in names:
        for op in OPS[name]:
            x = op(x)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
