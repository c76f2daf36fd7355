"""Every loss term of the GAN step, and the regularisers' state, in one object.

    bce    D: -log s(D(x)) - log(1 - s(D(G(z))))   G: -log s(D(G(z)))   (classic, non-saturating)
    hinge  D: relu(1 - D(x)) + relu(1 + D(G(z)))   G: -D(G(z))          (SNGAN / BigGAN)
    R1     gamma/2 * E_x ||grad_x D(x)||^2 on reals, lazily every k steps (Mescheder et al. 2018; StyleGAN2)
    LeCam  lambda * (E relu(D(x) - a_F)^2 + E relu(a_R - D(G(z)))^2), a_R / a_F moving averages of
           D's mean logits on reals / fakes (Tseng et al. 2021)
    top-k  G learns only from the fakes D scores highest, all of the batch in epoch 1, x0.99 each
           epoch, never below nu of it (Sinha et al. 2020)

Under DDP both see the global batch. Top-k ranks all ranks' fakes (one
all_gather of B_local scores per step) and each rank's G loss is the global
top-k mean, so the averaged gradient is the one-process gradient. LeCam keeps
each rank's moving average locally and averages the ranks' every
``LECAM_SYNC_EVERY`` steps (the average is linear, so this is the moving average
of the global means): the anchors in use are equal on all ranks and at most
LECAM_SYNC_EVERY - 1 steps old, next to the average's 100-step memory.

Each term is a batch mean, gated by one condition in the method that uses it.
``Trainer.step`` calls, in order: ``r1`` (when ``r1_due()``), ``d_real``,
``d_fake``, ``d_step_done``, ``g``, ``g_step_done``. A new regulariser is a
field here, a term in one of those methods, its state in ``state_dict``, and
its flag in train.py.

    loss = Loss(kind="hinge", r1=1.0, r1_every=16, lecam=0.3, topk=0.5, steps_per_epoch=1000)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LECAM_DECAY = 0.99  # the anchors' moving average (Tseng et al.'s value)
LECAM_SYNC_EVERY = 4  # DDP: steps between averaging the ranks' LeCam moving averages (one 2-float all_reduce)
TOPK_DECAY = 0.99  # top-k: the share shrinks by this factor per epoch, down to --topk (Sinha et al.)


def bce_real(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))  # nn.BCEWithLogitsLoss, label 1


def bce_fake(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def hinge_real(logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - logits).mean()


def hinge_fake(logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 + logits).mean()


def hinge_gen(logits: torch.Tensor) -> torch.Tensor:
    return -logits.mean()


# kind -> (D on reals, D on fakes, G on its fakes)
LOSSES = {"bce": (bce_real, bce_fake, bce_real), "hinge": (hinge_real, hinge_fake, hinge_gen)}


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


def lecam_real(out_real: torch.Tensor, anchor_fake: torch.Tensor) -> torch.Tensor:
    """LeCam's real half: E relu(D(x) - a_fake)^2 (a_fake a constant here)."""
    return F.relu(out_real - anchor_fake).square().mean()


def lecam_fake(out_fake: torch.Tensor, anchor_real: torch.Tensor) -> torch.Tensor:
    """LeCam's fake half: E relu(a_real - D(G(z)))^2."""
    return F.relu(anchor_real - out_fake).square().mean()


def global_scores(scores: torch.Tensor) -> torch.Tensor:
    """All ranks' per-image scores in rank order (every rank holds the same
    batch size), with a gradient only into this rank's: one all_gather."""
    import torch.distributed as dist

    gathered = [torch.empty_like(scores) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, scores.detach())
    gathered[dist.get_rank()] = scores
    return torch.cat(gathered)


def top_k(out_gen: torch.Tensor, fraction: float, world_size: int = 1) -> torch.Tensor:
    """The ceil(fraction * B) largest of D's logits on a batch of B fakes; under
    DDP (world_size > 1) of the global batch, every rank picking the same ones
    (the same topk on the same gathered scores, ties included)."""
    scores = out_gen.reshape(out_gen.shape[0], -1).mean(dim=1)
    if world_size > 1:
        scores = global_scores(scores)
    k = max(1, min(scores.numel(), math.ceil(fraction * scores.numel())))
    return scores.topk(k, sorted=False).values


class Loss:
    """The D and G losses of one kind plus R1, LeCam and top-k, with their state:
    the step count (lazy R1, top-k's epoch schedule) and LeCam's anchors."""

    def __init__(self, kind: str, r1: float, r1_every: int, lecam: float, topk: float,
                 steps_per_epoch: int | None = None, world_size: int = 1):
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r} (use {' or '.join(LOSSES)})")
        if topk and not steps_per_epoch:
            raise ValueError("top-k's schedule needs steps_per_epoch (the data's batches per epoch)")
        self.kind = kind
        self.real_loss, self.fake_loss, self.gen_loss = LOSSES[kind]
        self.r1_gamma, self.r1_every = float(r1 or 0.0), int(r1_every)
        self.lecam_weight = float(lecam or 0.0)
        self.topk_min = float(topk or 0.0)
        self.world_size = world_size
        self.steps = 0  # steps taken: the lazy R1 and top-k schedules
        self.steps_per_epoch = steps_per_epoch  # top-k's epoch length
        self.lecam_anchors = None  # (2,) moving averages of D's mean logit on reals, fakes; None until step 1
        self.lecam_running = None  # DDP: this rank's moving average since the ranks' last average

    # -- D ------------------------------------------------------------------- #
    def r1_due(self) -> bool:
        return self.r1_gamma > 0 and self.steps % self.r1_every == 0

    def r1(self, discriminator, real: torch.Tensor, augment=None) -> torch.Tensor:
        """The lazy R1 term, scaled by r1_every so its average strength is gamma."""
        return r1_penalty(discriminator, real, augment) * (0.5 * self.r1_gamma * self.r1_every)

    def d_real(self, out_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (D's loss on reals, what to backpropagate: it plus LeCam's real half)."""
        loss = self.real_loss(out_real)
        if self.lecam_anchors is None:  # LeCam off, or its first step (anchors from earlier steps only)
            return loss, loss
        return loss, loss + self.lecam_weight * lecam_real(out_real, self.lecam_anchors[1])

    def d_fake(self, out_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (D's loss on fakes, what to backpropagate: it plus LeCam's fake half)."""
        loss = self.fake_loss(out_fake)
        if self.lecam_anchors is None:
            return loss, loss
        return loss, loss + self.lecam_weight * lecam_fake(out_fake, self.lecam_anchors[0])

    def d_step_done(self, out_real: torch.Tensor, out_fake: torch.Tensor) -> None:
        """LeCam: move the moving average toward this step's mean logits; the
        anchors are it, or under DDP the ranks' average of it every LECAM_SYNC_EVERY steps."""
        if self.lecam_weight <= 0:
            return
        means = torch.stack([out_real.detach().mean(), out_fake.detach().mean()])
        running = self.lecam_anchors if self.world_size == 1 else self.lecam_running
        running = means if running is None else torch.lerp(running, means, 1.0 - LECAM_DECAY)
        if self.world_size == 1:
            self.lecam_anchors = running
            return
        self.lecam_running = running
        if self.lecam_anchors is None or (self.steps + 1) % LECAM_SYNC_EVERY == 0:  # step 1, then every k-th
            import torch.distributed as dist

            dist.all_reduce(running)  # in place: every rank continues from the global average
            running /= self.world_size
            self.lecam_anchors = running.clone()

    # -- G ------------------------------------------------------------------- #
    def topk_fraction(self) -> float:
        """The share of each batch's fakes G learns from this epoch."""
        return max(self.topk_min, TOPK_DECAY ** (self.steps // self.steps_per_epoch))

    def g(self, out_gen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (G's loss, what to backpropagate). Under DDP with top-k the loss is
        the global top-k mean, its gradient reaching this rank's picks only, so
        it is scaled by world_size against DDP's average over ranks."""
        if not self.topk_min:
            loss = self.gen_loss(out_gen)
            return loss, loss
        loss = self.gen_loss(top_k(out_gen, self.topk_fraction(), self.world_size))
        return loss, loss if self.world_size == 1 else loss * self.world_size

    def g_step_done(self) -> None:
        self.steps += 1

    # -- state --------------------------------------------------------------- #
    def state_dict(self) -> dict:
        return {"steps": self.steps, "lecam_anchors": self.lecam_anchors, "lecam_running": self.lecam_running}

    def load_state_dict(self, state: dict, device) -> None:
        self.steps = int(state.get("steps", 0))
        anchors = state.get("lecam_anchors") if self.lecam_weight > 0 else None
        self.lecam_anchors = None if anchors is None else anchors.to(device, torch.float32)
        # DDP: every rank resumes rank 0's running average, exact at a multiple of LECAM_SYNC_EVERY steps
        running = state.get("lecam_running") if self.lecam_weight > 0 and self.world_size > 1 else None
        running = self.lecam_anchors if running is None else running.to(device, torch.float32)
        self.lecam_running = None if running is None or self.world_size == 1 else running.clone()
