"""GAN losses on D's logits, the R1 gradient penalty, LeCam and top-k.

    bce    D: -log s(D(x)) - log(1 - s(D(G(z))))   G: -log s(D(G(z)))   (classic, non-saturating)
    hinge  D: relu(1 - D(x)) + relu(1 + D(G(z)))   G: -D(G(z))          (SNGAN / BigGAN)
    R1     gamma/2 * E_x ||grad_x D(x)||^2 on reals (Mescheder et al., 2018)
    LeCam  E relu(D(x) - a_F)^2 + E relu(a_R - D(G(z)))^2, a_R / a_F moving averages of D's mean logits
    top-k  G's loss on the k fakes D scores highest only

Each loss is the batch mean; the D loss comes as (real part, fake part) so
the step can backpropagate them one at a time, as the classic step does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge")


def d_loss(kind: str, out_real: torch.Tensor, out_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D's loss on real logits and on fake logits -> (loss_real, loss_fake)."""
    return d_loss_real(kind, out_real), d_loss_fake(kind, out_fake)


def d_loss_real(kind: str, out_real: torch.Tensor) -> torch.Tensor:
    if kind == "bce":  # the exact call the classic step makes (nn.BCEWithLogitsLoss, label 1)
        return F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
    if kind == "hinge":
        return F.relu(1 - out_real).mean()
    raise ValueError(f"unknown loss {kind!r}")


def d_loss_fake(kind: str, out_fake: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake))
    if kind == "hinge":
        return F.relu(1 + out_fake).mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, out_gen: torch.Tensor) -> torch.Tensor:
    """G's loss on the logits D gives its images (non-saturating BCE, or hinge's -D)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out_gen, torch.ones_like(out_gen))
    if kind == "hinge":
        return -out_gen.mean()
    raise ValueError(f"unknown loss {kind!r}")


def r1_penalty(discriminator, real: torch.Tensor, augment=None) -> torch.Tensor:
    """E_x ||grad_x D(aug(x))||^2 over the batch, in fp32 (autocast off
    inside), with a graph for backward (create_graph). Pass the plain module:
    torch.compile'd graphs do not support double backward. The gradient is
    taken w.r.t. the un-augmented reals (as StyleGAN2-ADA does)."""
    x = real.detach().float().requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):
        seen = augment(x) if augment is not None else x
        out = discriminator(seen).float()
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean()


# --------------------------------------------------------------------------- #
# LeCam regulariser (D) and top-k generator training (G)
# --------------------------------------------------------------------------- #
def lecam_real(out_real: torch.Tensor, anchor_fake: torch.Tensor) -> torch.Tensor:
    """LeCam's real half (Tseng et al., 2021): E relu(D(x) - a_fake)^2, with
    a_fake a moving average of D's mean logit on fakes (a constant here)."""
    return F.relu(out_real - anchor_fake).square().mean()


def lecam_fake(out_fake: torch.Tensor, anchor_real: torch.Tensor) -> torch.Tensor:
    """LeCam's fake half: E relu(a_real - D(G(z)))^2."""
    return F.relu(anchor_real - out_fake).square().mean()


def top_k(out_gen: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ceil(fraction * B) largest of D's logits on a batch of B fakes
    (Sinha et al., 2020): G then learns only from the fakes D finds most real."""
    scores = out_gen.reshape(out_gen.shape[0], -1).mean(dim=1)
    k = max(1, min(scores.numel(), math.ceil(fraction * scores.numel())))
    return scores.topk(k, sorted=False).values
