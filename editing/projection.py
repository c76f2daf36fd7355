"""A face photo into the generator: find the latent z whose face is closest to
it (projection), then tune the generator's weights around that z so the same
person comes back (Pivotal Tuning Inversion, Roich et al., 2021), keeping the
generator as it was on latents around the pivot so named edits still work.

    z = project_z(generator, target)                       # target (B, 3, S, S) in [-1, 1] -> z (B, nz)
    tuned = tune_generator(generator, z[0], target[0])     # a tuned copy; ``generator`` is left as it was
    psnr(tuned(z[:1]), target[:1]), ssim(tuned(z[:1]), target[:1])

``project_z`` follows StyleGAN2-ADA's ``projector.py``: the learning rate
ramps up over the first 5 % of the steps and down (cosine) over the last
25 %, and noise on the latent, decaying as (1 - t / 0.75)^2, shakes it out
of poor minima early. Here the latent is z, kept on the sphere of radius
sqrt(nz) where the generator's N(0, I) latents live, started from the best
of ``candidates`` random z, ``restarts`` at a time. The loss is pixel MSE
plus ``ssim_weight`` x (1 - SSIM). Method and measurements: docs/projection.md.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataloader import to_float

# --------------------------------------------------------------------------- #
# Image similarity
# --------------------------------------------------------------------------- #
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004's Gaussian window
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # (K L)^2 for images in [0, 1]


def as_target(face, device="cpu") -> torch.Tensor:
    """A uint8 H x W x 3 face (array or PIL) -> (1, 3, H, W) float in [-1, 1], as training reads images."""
    return to_float(torch.from_numpy(np.array(face, dtype=np.uint8))[None]).to(device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (B, C, H, W),
    on the [0, 1] scale -> (B,)."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def _gaussian_window(channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004: 11x11 Gaussian window, sigma
    1.5, per channel, valid positions only) of images in [-1, 1] (B, C, H, W)
    -> (B,); differentiable, so it can be a loss."""
    a, b = (a + 1) / 2, (b + 1) / 2
    w = _gaussian_window(a.shape[1], a.device, a.dtype)

    def blur(x):
        return F.conv2d(x, w, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return s.flatten(1).mean(1)


def image_loss(images: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.0) -> torch.Tensor:
    """Per image: pixel MSE (on [-1, 1]) plus ``ssim_weight`` x (1 - SSIM) -> (B,)."""
    loss = (images - target).pow(2).flatten(1).mean(1)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ssim(images, target))
    return loss


# --------------------------------------------------------------------------- #
# The latent: z on the sphere
# --------------------------------------------------------------------------- #
def to_sphere(z: torch.Tensor) -> torch.Tensor:
    """Rows of z (N, nz) scaled to norm sqrt(nz), where N(0, I) latents concentrate."""
    return z * (math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True).clamp_min(1e-12))


def learning_rate(t: float, lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """StyleGAN2-ADA's projector schedule at fraction t of the steps: a linear
    ramp up over ``rampup``, a cosine ramp down over the last ``rampdown``."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup)


@torch.no_grad()
def best_of_random(generator, target: torch.Tensor, candidates: int, keep: int, seed: int = 0,
                   batch_size: int = 128, ssim_weight: float = 0.0) -> torch.Tensor:
    """For each target (B, C, S, S), the ``keep`` of ``candidates`` random z
    (drawn from ``seed``, the same for every target) whose faces have the
    lowest loss -> (B, keep, nz) on the sphere."""
    device = target.device
    z = to_sphere(torch.randn(candidates, generator.nz, generator=torch.Generator().manual_seed(seed))).to(device)
    losses = []
    for start in range(0, candidates, batch_size):
        images = generator(z[start : start + batch_size])
        losses.append(torch.stack([image_loss(images, t.expand_as(images), ssim_weight) for t in target]))
    best = torch.cat(losses, 1).topk(keep, dim=1, largest=False).indices  # (B, keep)
    return z[best]


def project_z(
    generator,                  # a Generator in eval mode; its weights are not changed
    target: torch.Tensor,       # (B, C, S, S) faces in [-1, 1] at the generator's size
    steps: int = 150,           # Adam steps
    candidates: int = 256,      # random z the starting points are chosen from
    restarts: int = 2,          # starting points per target, optimised together; the best is kept
    lr: float = 0.1,            # peak learning rate (StyleGAN2-ADA's)
    noise: float = 0.05,        # initial noise on z, as a share of its norm sqrt(nz)
    noise_ramp: float = 0.75,   # the noise is gone after this share of the steps
    ssim_weight: float = 0.0,   # loss = MSE + ssim_weight * (1 - SSIM)
    seed: int = 0,              # candidates and noise
    progress: str | None = None,  # a tqdm description; None: no bar
) -> torch.Tensor:
    """The latent (B, nz) on the sphere whose face is closest to each target."""
    B, nz = target.shape[0], generator.nz
    frozen = [p.requires_grad_(False) for p in generator.parameters() if p.requires_grad]
    # ---- starting points: the best `restarts` of `candidates` random z ----
    z0 = best_of_random(generator, target, candidates, restarts, seed, ssim_weight=ssim_weight)  # (B, R, nz)
    z = z0.reshape(B * restarts, nz).clone().requires_grad_(True)
    goal = target.repeat_interleave(restarts, 0)
    opt = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
    rng = torch.Generator().manual_seed(seed + 1)
    # ---- optimise: lr ramps, decaying noise, back onto the sphere each step ----
    bar = tqdm(range(steps), desc=progress, unit="step", disable=progress is None, leave=False)
    for step in bar:
        t = step / steps
        for group in opt.param_groups:
            group["lr"] = learning_rate(t, lr)
        scale = math.sqrt(nz) * noise * max(0.0, 1.0 - t / noise_ramp) ** 2
        shake = scale * torch.randn(z.shape, generator=rng).to(z.device) if scale else 0.0
        loss = image_loss(generator(z + shake), goal, ssim_weight).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(to_sphere(z))
        if progress is not None and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item() / len(z):.4f}")
    bar.close()
    # ---- keep each target's best restart ----
    with torch.no_grad():
        final = image_loss(generator(z), goal, ssim_weight).view(B, restarts)
        best = final.argmin(1)
    for p in frozen:
        p.requires_grad_(True)
    return z.detach().view(B, restarts, nz)[torch.arange(B), best]


# --------------------------------------------------------------------------- #
# Pivotal tuning: the generator's weights around the pivot
# --------------------------------------------------------------------------- #
def locality_latents(pivot: torch.Tensor, radius: float, samples: int, directions: torch.Tensor | None,
                     rng: torch.Generator) -> torch.Tensor:
    """Latents ``radius`` from the pivot (1, nz): ``samples`` in random
    directions, and, with named ``directions`` (K, nz), one more along a random
    one of them, either way -> (samples [+ 1], nz)."""
    u = torch.randn(samples, pivot.shape[1], generator=rng)
    if directions is not None:
        k = int(torch.randint(len(directions), (1,), generator=rng))
        sign = 1.0 if torch.rand((), generator=rng) < 0.5 else -1.0
        u = torch.cat([u, sign * directions[k : k + 1].to(u.device)])
    return pivot + radius * (u / u.norm(dim=1, keepdim=True)).to(pivot.device)


def tune_generator(
    generator,                  # the projection's generator; left unchanged (a copy is tuned)
    pivot: torch.Tensor,        # (nz,) the projected latent
    target: torch.Tensor,       # (C, S, S) the face in [-1, 1]
    steps: int = 100,           # Adam steps on every weight
    lr: float = 3e-4,           # PTI's learning rate
    ssim_weight: float = 0.0,   # loss = MSE + ssim_weight * (1 - SSIM)
    locality: float = 0.1,      # weight of the locality term (0: plain PTI)
    radius: float = 3.0,        # distance from the pivot of the latents the locality term holds
    samples: int = 1,           # such latents per step
    seed: int = 0,              # the locality latents
    directions: torch.Tensor | None = None,  # (K, nz) named directions: each step also holds pivot +- radius x one
    progress: str | None = None,
) -> torch.nn.Module:
    """A copy of ``generator`` whose face at ``pivot`` is ``target``, its
    BatchNorm statistics frozen (eval mode). The locality term (Roich et al.
    2021) keeps its faces at latents ``radius`` from the pivot equal to the
    original generator's: random ones, and with ``directions`` one along a
    named direction each step, exactly where an edit of that strength lands,
    so the named edits keep working on the tuned copy."""
    original = generator
    tuned = copy.deepcopy(generator).eval()
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    pivot, target = pivot[None].detach(), target[None]
    bar = tqdm(range(steps), desc=progress, unit="step", disable=progress is None, leave=False)
    for step in bar:
        loss = image_loss(tuned(pivot), target, ssim_weight).sum()
        if locality:
            z_r = locality_latents(pivot, radius, samples, directions, rng)
            with torch.no_grad():
                anchor = original(z_r)
            loss = loss + locality * (tuned(z_r) - anchor).pow(2).flatten(1).mean(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.5f}")
    bar.close()
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned.eval()
