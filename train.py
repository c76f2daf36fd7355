"""Train the DCGAN (Radford et al., 2016) on a preprocessed image array.

    python preprocess.py --synthetic 2000 && python train.py --data data/synthetic_64.npy --ngf 32 --ndf 32 --batch-size 64 --max-steps 1500
    python train.py --size 128 --ema 0.999 --compile          # CelebA 128 px on a GPU (bf16, fused Adam)
    python train.py --resume --out runs/128px-celeba-20260101-120000 --max-steps 20000
    torchrun --nproc_per_node 4 train.py --size 128           # DDP; --batch-size stays the global batch
    python train.py --data data/flowers_64.npy --recipe best  # small folder: DiffAugment + EMA (README "Better faces")

The classic algorithm: D takes one Adam step on a real batch (label 1) and on
G's batch detached (label 0); then G takes one Adam step on the same fake batch
with label 1 (the non-saturating loss). D returns logits; the loss is
BCEWithLogits. Beyond that classic recipe (the default), --augment, --loss
hinge, --sn, --lr-g/--lr-d, --r1, --ada, --lecam, --topk and --ema-bn-recompute change the step or D
(see build_parser and README "Better faces"); --recipe best sets the
combination measured best on the quality benchmark (RECIPES: DiffAugment
color,translation, EMA with BatchNorm statistics recomputed). A run folder (``--out``) holds
config.json, checkpoint.pt (full resume state), metrics.jsonl, loss.png,
reals.png and samples/step_NNNNNN.png; ``--params`` (default generator.params)
is the small export generator.py and evaluate.py read.

Signals: Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves the
checkpoint and generator.params, says where, and exits 130 (SIGINT) or 143
(SIGTERM, 128 + 15, so a scheduler sees the job did not complete). Every file
is written atomically, so a SIGKILL at any moment leaves the previous files
loadable.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import signal
import sys
import time
import types
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

import augment
import losses
import utils
from network import (DEFAULT_CONFIG, build_discriminator, build_generator, recompute_bn_stats, save_generator_params,
                     strip_prefixes)
from utils import UserError

CHECKPOINT_FORMAT = "dcgan-train-checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"
ARCH_KEYS = ("size", "nz", "ngf", "ndf", "nc", "sn")  # --sn changes D's layers (no BN, SN parametrization)

# What Trainer uses when a config leaves a key out: today's classic recipe.
TRAINER_DEFAULTS = {"lr": 2e-4, "beta1": 0.5, "beta2": 0.999, "ema": 0.0, "lr_g": None, "lr_d": None,
                    "loss": "bce", "sn": False, "augment": "none", "r1": 0.0, "r1_every": 16,
                    "ema_bn_recompute": False, "ada": 0.0, "ada_kimg": 10.0, "lecam": 0.0, "topk": 0.0}
LECAM_DECAY = 0.99  # the anchors' moving average (Tseng et al.'s value)
TOPK_DECAY = 0.99  # top-k: k shrinks by this factor per epoch, down to --topk of the batch (Sinha et al.)

# --recipe NAME sets these keys unless the same option is typed on the command
# line. "classic" is today's DCGAN (it changes nothing). "best" is the one that
# measured best on bench_quality.py's selection set (training faces; README
# "Better faces", BENCHMARKS.md "Issue 12"): of each option alone and two
# combinations, DiffAugment alone won at 2,000 steps; TTUR and --sn alone were
# worse than classic, adding R1 or hinge to DiffAugment made it worse, and
# adaptive augmentation (--ada 0.6) lost to augmenting every image. A second
# screen around that winner (2026-12-02) dropped cutout from the policy
# (DEFAULT_POLICY); doubling the learning rates too did better at 64 px but
# failed the 128 px check. EMA with recomputed BatchNorm statistics scored
# 2-4 % better than the plain EMA. A third screen (--lecam 0.3, --topk 0.5,
# --lr 3e-4 on top of best) found nothing that qualified, nor did a fourth
# (2026-12-03: --flip, mirrored reals; 1 % behind at 3,000 steps at 64 px).
RECIPES = {
    "classic": {"loss": "bce", "sn": False, "augment": "none", "r1": 0.0, "lr_g": None, "lr_d": None,
                "ema": 0.0, "ema_bn_recompute": False, "lecam": 0.0, "topk": 0.0},
    "best": {"loss": "bce", "sn": False, "augment": augment.DEFAULT_POLICY, "r1": 0.0, "lr_g": None, "lr_d": None,
             "ema": 0.999, "ema_bn_recompute": True, "lecam": 0.0, "topk": 0.0},
}
METRIC_KEYS = ("loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2")
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
DEFAULT_EPOCHS = 5  # when neither --epochs nor --max-steps is given
MIN_BN_BATCH = 32  # per-process batch below which per-rank BatchNorm statistics get noisy


# --------------------------------------------------------------------------- #
# One training step, reusable by bench.py
# --------------------------------------------------------------------------- #
def default_channels_last(device) -> bool:
    """channels_last: faster convs on CUDA (tensor cores) and on CPU (oneDNN), see BENCHMARKS.md."""
    return torch.device(device).type in ("cuda", "cpu")


class Trainer:
    """G, D, their Adam optimizers, an optional EMA of G, and the step.

    ``config`` needs size, nz, ngf, ndf (nc) and may set lr, beta1, beta2, ema
    and the options of TRAINER_DEFAULTS (lr_g, lr_d, loss, sn, augment, r1,
    r1_every, ema_bn_recompute, ada, lecam, topk); left out, each is the
    classic recipe's. With topk, set ``.steps_per_epoch`` (k shrinks per epoch).
    ``.step(real)`` returns 0-dim device tensors and never synchronises with
    the host, so on a GPU the CPU runs ahead; read the numbers when logging.
    ``.netG`` / ``.netD`` are the plain modules (what gets saved); the step runs
    through ``self.G`` / ``self.D``, which may be DDP- and/or compile-wrapped.
    """

    def __init__(self, config: dict, device="cpu", precision: str = "fp32", compile: bool = False,
                 channels_last: bool | None = None, world_size: int = 1, rank: int = 0):
        self.config = {**DEFAULT_CONFIG, **TRAINER_DEFAULTS, **config}
        if self.config["loss"] not in losses.LOSSES:
            raise UserError(f"unknown --loss {self.config['loss']!r} (use {' or '.join(losses.LOSSES)})")
        self.augment_policy = augment.parse_policy(self.config["augment"])
        ada_target = float(self.config["ada"] or 0.0)
        self.loss = self.config["loss"]
        self.r1_gamma, self.r1_every = float(self.config["r1"] or 0.0), int(self.config["r1_every"])
        self.steps = 0  # steps taken (for the lazy R1 and top-k schedules); saved in state_dict
        self.topk_min = float(self.config["topk"] or 0.0)
        self.steps_per_epoch: int | None = None  # top-k's epoch length; train.py's Run sets it
        self.lecam_weight = float(self.config["lecam"] or 0.0)
        self.lecam_anchors = None  # (2,) moving averages of D's mean logit on reals, fakes; None until step 1
        self.world_size = world_size
        self.device = device = torch.device(device)
        if precision not in ("fp32", "bf16"):
            raise UserError(f"unknown precision {precision!r} (use fp32 or bf16)")
        self.precision = precision
        cuda = device.type == "cuda"
        self.channels_last = default_channels_last(device) if channels_last is None else bool(channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.netG = build_generator(self.config).to(device, memory_format=memory_format)
        self.netD = build_discriminator(self.config).to(device, memory_format=memory_format)
        betas = (self.config["beta1"], self.config["beta2"])
        fused = True if cuda else None  # fused Adam: one kernel for all parameters
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=self.lr_g, betas=betas, fused=fused)
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=self.lr_d, betas=betas, fused=fused)

        self.ema_decay = float(self.config.get("ema") or 0.0)
        self.ema_updates = 0
        self.netG_ema = None
        if self.ema_decay > 0:
            self._make_ema()

        self._sampling_ema = None  # (ema_updates, BN-recomputed copy of netG_ema)
        # --ada: the augmentation probability follows D's overfitting (None: every image augmented)
        self.ada = (augment.AdaptiveAugment(ada_target, float(self.config["ada_kimg"]), device, world_size=world_size)
                    if ada_target > 0 and self.augment_policy else None)

        self.G, self.D = self.netG, self.netD
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Plain per-rank BatchNorm on purpose (no SyncBatchNorm): the classic
            # DCGAN normalises each D call's batch on its own (real and fake never
            # mixed), per-rank batches of 32+ give stable statistics, and SyncBN
            # would add a collective to every BN layer of all three forwards per step.
            ids = [device.index] if cuda else None
            # broadcast_buffers=False: train-mode BN uses batch statistics, rank 0 saves and samples with its
            # own running stats, so broadcasting them before each of the four forwards changed nothing rank 0 keeps
            self.G = DDP(self.netG, device_ids=ids, broadcast_buffers=False)
            self.D = DDP(self.netD, device_ids=ids, broadcast_buffers=False)
        if compile:
            self.G, self.D = torch.compile(self.G), torch.compile(self.D)

    @property
    def lr_g(self) -> float:
        return float(self.config["lr_g"] or self.config["lr"])

    @property
    def lr_d(self) -> float:
        return float(self.config["lr_d"] or self.config["lr"])

    # -- EMA ---------------------------------------------------------------- #
    def _make_ema(self) -> None:
        self.netG_ema = copy.deepcopy(self.netG).eval().requires_grad_(False)
        pairs = list(zip(self.netG_ema.parameters(), self.netG.parameters()))
        pairs += list(zip(self.netG_ema.buffers(), self.netG.buffers()))
        self._ema_float = [(e, m) for e, m in pairs if e.is_floating_point()]
        self._ema_other = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of G's weights and BatchNorm buffers. The decay warms up as
        min(decay, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage
        with num_updates) so short runs are not dominated by the random init."""
        self.ema_updates += 1
        t = self.ema_updates
        decay = min(self.ema_decay, (1 + t) / (10 + t))
        ema, model = zip(*self._ema_float)
        torch._foreach_lerp_(list(ema), list(model), 1.0 - decay)
        for e, m in self._ema_other:
            e.copy_(m)

    def sampling_ema(self) -> nn.Module | None:
        """The EMA generator to sample, score or export (None without --ema).
        With ema_bn_recompute: a copy whose BatchNorm statistics are re-estimated
        for the EMA weights (network.recompute_bn_stats), cached until the EMA
        moves. The lerped running stats of G do not belong to the averaged
        weights, which greys out early EMA samples. Touches neither the
        training state nor any RNG, so exact resume is unaffected."""
        if self.netG_ema is None or not self.config["ema_bn_recompute"]:
            return self.netG_ema
        if self._sampling_ema is None or self._sampling_ema[0] != self.ema_updates:
            copy_ = copy.deepcopy(self.netG_ema)
            recompute_bn_stats(copy_, seed=self.config.get("seed", 0))
            self._sampling_ema = (self.ema_updates, copy_)
        return self._sampling_ema[1]

    # -- the step ------------------------------------------------------------ #
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """--augment: DiffAugment on every batch D sees (reals and fakes alike);
        with --ada each op on each image with the adaptive probability p."""
        if not self.augment_policy:
            return images
        if self.ada is None:
            return augment.diff_augment(images, self.config["augment"])
        return augment.diff_augment(images, self.config["augment"], self.ada.p)

    def _unreduced(self, module):
        """DDP's no_sync for ``module`` (gradients stay local), else nothing."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        inner = getattr(module, "_orig_mod", module)  # under torch.compile
        return inner.no_sync() if isinstance(inner, DDP) else contextlib.nullcontext()

    def step(self, real: torch.Tensor) -> dict:
        """One D step then one G step on ``real`` (B, 3, S, S) in [-1, 1]."""
        b = real.shape[0]
        z = torch.randn(b, self.config["nz"], 1, 1, device=self.device)
        # D's input in the dtype and layout of G's fakes (a no-op for fp32 feeder batches): under
        # --compile D then builds two graphs (input without / with grad) instead of four
        real = real.to(torch.bfloat16 if self.precision == "bf16" else real.dtype,
                       memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

        # D: maximise log D(x) + log(1 - D(G(z))) (bce), or minimise the hinge
        self.optD.zero_grad(set_to_none=True)
        if self.r1_gamma > 0 and self.steps % self.r1_every == 0:
            # lazy R1 (StyleGAN2): every r1_every steps, scaled by r1_every so the
            # average strength is gamma. fp32 outside autocast, through the plain
            # netD (compiled graphs have no double backward); under DDP its local
            # gradient is all-reduced with the fake half's below.
            penalty = losses.r1_penalty(self.netD, real, self._augment if self.augment_policy else None)
            (penalty * (0.5 * self.r1_gamma * self.r1_every)).backward()
        anchors = self.lecam_anchors  # --lecam: from the steps before this one (none on the first)
        with self._unreduced(self.D):  # DDP: the real half's gradients are reduced with the fake half's
            with self._autocast():
                out_real = self.D(self._augment(real)).float()
                loss_real = losses.d_loss_real(self.loss, out_real)
            if anchors is None:
                loss_real.backward()
            else:
                (loss_real + self.lecam_weight * losses.lecam_real(out_real, anchors[1])).backward()
        with self._autocast():
            fake = self.G(z)
            out_fake = self.D(self._augment(fake.detach())).float()
            loss_fake = losses.d_loss_fake(self.loss, out_fake)
        if anchors is None:
            loss_fake.backward()
        else:
            (loss_fake + self.lecam_weight * losses.lecam_fake(out_fake, anchors[0])).backward()
        self.optD.step()
        if self.lecam_weight > 0:
            self._update_lecam_anchors(out_real.detach(), out_fake.detach())

        # G: maximise log D(G(z)) on the same fake batch (non-saturating), or -D(G(z))
        self.optG.zero_grad(set_to_none=True)
        with self._unreduced(self.D):  # DDP: D's gradients from G's loss are discarded, so never reduced
            with self._autocast():
                out_gen = self.D(self._augment(fake)).float()
                scored = out_gen if not self.topk_min else losses.top_k(out_gen, self.topk_fraction())  # --topk
                loss_g = losses.g_loss(self.loss, scored)
            loss_g.backward()
        self.optG.step()
        if self.netG_ema is not None:
            self.update_ema()
        if self.ada is not None:  # after the step, so all of its D and G calls used one p
            self.ada.observe(out_real.detach())
        self.steps += 1

        # sigmoid(logit) is the classic D(x); for hinge it is a monitor of the same logits
        return {
            "loss_D": (loss_real + loss_fake).detach(),
            "loss_G": loss_g.detach(),
            "D_x": torch.sigmoid(out_real.detach()).mean(),
            "D_G_z1": torch.sigmoid(out_fake.detach()).mean(),
            "D_G_z2": torch.sigmoid(out_gen.detach()).mean(),
            **({} if self.ada is None else {"aug_p": self.ada.p}),
        }

    def _update_lecam_anchors(self, out_real: torch.Tensor, out_fake: torch.Tensor) -> None:
        """--lecam: move the anchors toward this step's mean logits (all ranks' under DDP)."""
        means = torch.stack([out_real.mean(), out_fake.mean()])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(means)
            means /= self.world_size
        if self.lecam_anchors is None:
            self.lecam_anchors = means
        else:
            self.lecam_anchors = torch.lerp(self.lecam_anchors, means, 1.0 - LECAM_DECAY)

    def topk_fraction(self) -> float:
        """--topk: the share of each batch's fakes G learns from, 1 in the first
        epoch, times TOPK_DECAY each epoch, never below --topk."""
        if self.steps_per_epoch is None:
            raise RuntimeError("Trainer.steps_per_epoch must be set for topk")
        return max(self.topk_min, TOPK_DECAY ** (self.steps // self.steps_per_epoch))

    # -- state ---------------------------------------------------------------- #
    def state_dict(self) -> dict:
        """Unwrapped module state (no 'module.'/'_orig_mod.' prefixes), so a
        checkpoint resumes on any number of processes."""
        return {
            "netG": self.netG.state_dict(),
            "netD": self.netD.state_dict(),
            "optG": self.optG.state_dict(),
            "optD": self.optD.state_dict(),
            "ema": None if self.netG_ema is None else self.netG_ema.state_dict(),
            "ema_updates": self.ema_updates,
            "steps": self.steps,
            "ada": None if self.ada is None else self.ada.state_dict(),
            "lecam_anchors": self.lecam_anchors,
        }

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        try:
            self.netG.load_state_dict(strip_prefixes(state["netG"]))
            self.netD.load_state_dict(strip_prefixes(state["netD"]))
            self.optG.load_state_dict(state["optG"])
            self.optD.load_state_dict(state["optD"])
            # the configured rates and betas win over the saved ones (--lr-g/--lr-d typed on --resume)
            for opt, lr in ((self.optG, self.lr_g), (self.optD, self.lr_d)):
                for group in opt.param_groups:
                    group["lr"], group["betas"] = lr, (self.config["beta1"], self.config["beta2"])
            self.steps = int(state.get("steps", 0))
            anchors = state.get("lecam_anchors") if self.lecam_weight > 0 else None
            self.lecam_anchors = None if anchors is None else anchors.to(self.device, torch.float32)
            if self.ada is not None and state.get("ada") is not None:  # else (--ada typed on --resume) p starts at 0
                self.ada.load_state_dict(state["ada"])
            self._sampling_ema = None
            match_param_layout(self.optG)
            match_param_layout(self.optD)
            if self.netG_ema is not None:
                if state.get("ema") is not None:
                    self.netG_ema.load_state_dict(strip_prefixes(state["ema"]))
                    self.ema_updates = int(state.get("ema_updates", 0))
                else:  # EMA switched on at resume: start it from the current G
                    self.netG_ema.load_state_dict(self.netG.state_dict())
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            lines = str(err).strip().splitlines()
            detail = (lines[1] if len(lines) > 1 else lines[0] if lines else repr(err)).strip()
            raise UserError(
                f"{source} does not match a {self.config['size']} px DCGAN with ngf {self.config['ngf']}, "
                f"ndf {self.config['ndf']}, nz {self.config['nz']}{', sn' if self.config['sn'] else ''}: "
                f"{detail[:200]}"
            ) from None


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


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the DCGAN on a preprocessed uint8 image array (see preprocess.py).",
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("--size", type=int, default=64, choices=(64, 128), help="image size in pixels")
    p.add_argument("--data", default=None, help="image array from preprocess.py (default: data/celeba_{size}.npy)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help="epochs to train (total, across resumes); not applied when only --max-steps is given")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many TOTAL steps (counted across resumes); decides the length alone "
                        "unless --epochs is also given, then the smaller wins")
    p.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch size (split across DDP ranks)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate for G and D")
    p.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
    p.add_argument("--nz", type=int, default=100, help="latent size")
    p.add_argument("--ngf", type=int, default=64, help="generator width (32 trains ~4x faster on CPU)")
    p.add_argument("--ndf", type=int, default=64, help="discriminator width")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, noise and data order")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto = bf16 autocast on CUDA, fp32 elsewhere")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (first steps are slow)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an EMA of G's weights with this decay (e.g. 0.999; 0 = off)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<size>px-<data>-<date-time>)")
    p.add_argument("--params", default="generator.params", help="where to write the generator export")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out's checkpoint (default: the newest run in runs/)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips of the real images")
    p.add_argument("--log-every", type=int, default=50, help="steps between metrics lines and NaN checks (read one interval late; loss.png is "
                        "redrawn at each checkpoint)")
    p.add_argument("--sample-every", type=int, default=500, help="steps between samples/step_NNNNNN.png grids")
    p.add_argument("--checkpoint-every", type=int, default=1000,
                   help="steps between checkpoint.pt + --params saves (always saved at the end)")
    p.add_argument("--num-samples", type=int, default=64, help="images in each fixed-noise grid")
    p.add_argument("--fid-every", type=int, default=0, help="steps between FID evaluations (0 = off)")
    p.add_argument("--fid-n", type=int, default=5000, help="generated images per FID evaluation")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="channels_last memory format (auto = on for CUDA and CPU, where it is faster); "
                        "kept on --resume unless given")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (cuDNN benchmark off): on a GPU a resumed run then matches an "
                        "uninterrupted one, as it always does on CPU; slower")

    g = p.add_argument_group("beyond the classic recipe (README 'Better faces'); a typed flag beats --recipe")
    g.add_argument("--recipe", default="classic", choices=tuple(RECIPES),
                   help="classic = the DCGAN paper's recipe (today's numbers, bit for bit); best = "
                        + ", ".join(f"{k} {v}" for k, v in RECIPES["best"].items() if v != RECIPES["classic"][k]))
    g.add_argument("--augment", nargs="?", const=augment.DEFAULT_POLICY, default="none", metavar="POLICY",
                   help=f"DiffAugment every image D sees, real and fake; bare --augment = {augment.DEFAULT_POLICY} "
                        f"(measured best on the CelebA sample; Zhao et al. add cutout for tiny sets), or a comma list of "
                        f"{', '.join(augment.OPS)}; none = off")
    g.add_argument("--loss", default="bce", choices=losses.LOSSES,
                   help="bce = classic non-saturating; hinge = SNGAN/BigGAN's relu(1 -+ D) for D, -D(G(z)) for G")
    g.add_argument("--sn", action=argparse.BooleanOptionalAction, default=False,
                   help="spectral normalisation on every D conv; D then has no BatchNorm (as in SNGAN). "
                        "Changes D: fixed for a run")
    g.add_argument("--lr-g", type=float, default=None, help="G's Adam learning rate (default: --lr); TTUR: lr-d > lr-g")
    g.add_argument("--lr-d", type=float, default=None, help="D's Adam learning rate (default: --lr)")
    g.add_argument("--r1", type=float, default=0.0, metavar="GAMMA",
                   help="R1 penalty GAMMA/2 * E||grad D(x)||^2 on reals (e.g. 0.1-10; 0 = off)")
    g.add_argument("--r1-every", type=int, default=16, metavar="K",
                   help="lazy R1: apply it every K steps, scaled by K (StyleGAN2's 16: ~1/16 of its cost)")
    g.add_argument("--ada", type=float, default=0.0, metavar="TARGET",
                   help="with --augment: adaptive augmentation (ADA, Karras et al. 2020): each op on each image with "
                        "probability p, p starts at 0 and moves to keep E[sign D(real)] at TARGET (their 0.6); 0 = off, "
                        "every image augmented")
    g.add_argument("--ada-kimg", type=float, default=10.0, metavar="KIMG",
                   help="with --ada: thousands of images for p to go from 0 to 1 at the fastest")
    g.add_argument("--lecam", type=float, default=0.0, metavar="LAMBDA",
                   help="LeCam regulariser on D (Tseng et al. 2021, for small data sets): LAMBDA * (E relu(D(x) - a_F)^2 "
                        "+ E relu(a_R - D(G(z)))^2), a_R / a_F moving averages (0.99) of D's mean logits; their 0.3 "
                        "with DiffAugment; 0 = off")
    g.add_argument("--topk", type=float, default=0.0, metavar="NU",
                   help="top-k training (Sinha et al. 2020): G learns only from the fakes D scores highest, all of the "
                        f"batch in epoch 1, x{TOPK_DECAY} each epoch, never below NU of it (their 0.5); 0 = off")
    g.add_argument("--ema-bn-recompute", action=argparse.BooleanOptionalAction, default=False,
                   help="with --ema: re-estimate the EMA generator's BatchNorm statistics (512 fresh latents) "
                        "before each sample grid, FID and export; training is unchanged")
    return p


def explicit_args(argv) -> set[str]:
    """Names of the options the user actually typed (so --resume can take the
    rest from the checkpoint's config)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def validate_args(args) -> None:
    checks = [
        (args.epochs >= 1, f"--epochs must be at least 1, got {args.epochs}"),
        (args.max_steps is None or args.max_steps >= 1, f"--max-steps must be at least 1, got {args.max_steps}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr must be a positive number, got {args.lr}"),
        (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1, f"--beta1/--beta2 must be in [0, 1), got {args.beta1}, {args.beta2}"),
        (args.nz >= 1 and args.ngf >= 1 and args.ndf >= 1, "--nz, --ngf and --ndf must be at least 1"),
        (0 <= args.ema < 1, f"--ema must be in [0, 1) (e.g. 0.999; 0 = off), got {args.ema}"),
        (min(args.log_every, args.sample_every, args.checkpoint_every) >= 1,
         "--log-every, --sample-every and --checkpoint-every must be at least 1"),
        (args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}"),
        (args.fid_every >= 0 and args.fid_n >= 2, "--fid-every must be >= 0 and --fid-n >= 2"),
        (all(lr is None or (lr > 0 and math.isfinite(lr)) for lr in (args.lr_g, args.lr_d)),
         f"--lr-g/--lr-d must be positive numbers, got {args.lr_g}, {args.lr_d}"),
        (args.r1 >= 0 and math.isfinite(args.r1), f"--r1 must be >= 0 (0 = off), got {args.r1}"),
        (args.r1_every >= 1, f"--r1-every must be at least 1, got {args.r1_every}"),
        (0 <= args.ada < 1, f"--ada must be in [0, 1) (e.g. 0.6; 0 = off), got {args.ada}"),
        (args.ada_kimg > 0 and math.isfinite(args.ada_kimg), f"--ada-kimg must be a positive number, got {args.ada_kimg}"),
        (args.lecam >= 0 and math.isfinite(args.lecam), f"--lecam must be >= 0 (e.g. 0.3; 0 = off), got {args.lecam}"),
        (0 <= args.topk <= 1, f"--topk must be in [0, 1] (e.g. 0.5; 0 = off), got {args.topk}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    augment.parse_policy(args.augment)  # unknown op names: one line


def check_writable(folder: Path, what: str) -> None:
    """Fail before any work if ``folder`` cannot be created or written."""
    probe = folder
    while not probe.exists():  # nearest existing ancestor
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot create {what} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {folder}: {probe} is not writable")


# --------------------------------------------------------------------------- #
# Distributed setup
# --------------------------------------------------------------------------- #
WAIT_TIMEOUT_HOURS = 6  # ranks waiting for rank 0's Inception work (real statistics of a big data set)


def setup_distributed(device_name: str):
    """-> (device, rank, world_size, stop_group, wait_group). Under torchrun
    (WORLD_SIZE > 1) joins the process group from the environment: NCCL on
    CUDA, Gloo on CPU. Multi-node works the same way through torchrun's
    --nnodes/--rdzv-* flags. A CUDA device always gets its index and becomes
    the current device, so streams, events and pinned copies use that GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = utils.resolve_device(device_name)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size <= 1:
        return device, 0, 1, None, None
    import datetime as dt

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    # a CPU (Gloo) group for the per-step "stop?" vote, so it never syncs the GPU stream
    stop_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    # and one with a long timeout for waiting on rank 0's FID work (NCCL's watchdog stops a run after 10 min)
    wait_group = dist.new_group(backend="gloo", timeout=dt.timedelta(hours=WAIT_TIMEOUT_HOURS))
    return device, dist.get_rank(), dist.get_world_size(), stop_group, wait_group


def broadcast_object(obj, world_size: int, group=None):
    if world_size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #
def rng_state(device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_checkpoint(path: Path) -> dict:
    blob = utils.torch_load(path, what="checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a train.py checkpoint (a generator.params file cannot be resumed)")
    return blob


def newest_run(root: Path = Path("runs")) -> Path:
    runs = sorted(root.glob(f"*/{CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"--resume found no run with a {CHECKPOINT_NAME} under {root}/; pass --out RUN_FOLDER")
    return runs[-1].parent


def resolve_config(args, given: set[str], checkpoint: dict | None, ckpt_path: Path | None) -> dict:
    """The run's configuration: command line, or on --resume the checkpoint's
    config with the options typed now on top. Architecture changes are refused.
    --recipe fills the options it names that are not typed (on --resume only
    when --recipe is typed again). lr_g / lr_d left unset follow lr."""
    config = {
        "size": args.size, "nz": args.nz, "ngf": args.ngf, "ndf": args.ndf, "nc": 3,
        "data": args.data or f"data/celeba_{args.size}.npy",
        # epochs None: not typed, so --max-steps alone decides (or DEFAULT_EPOCHS without it); see total_steps
        "epochs": args.epochs if "epochs" in given else None, "max_steps": args.max_steps,
        "batch_size": args.batch_size, "lr": args.lr, "beta1": args.beta1, "beta2": args.beta2, "seed": args.seed,
        "ema": args.ema, "flip": args.flip,
        "channels_last": {"auto": None, "on": True, "off": False}[args.channels_last],  # the run's value once resolved
        "deterministic": args.deterministic,
        "recipe": args.recipe, "loss": args.loss, "sn": args.sn, "augment": args.augment,
        "r1": args.r1, "r1_every": args.r1_every, "lr_g": args.lr_g, "lr_d": args.lr_d,
        "ema_bn_recompute": args.ema_bn_recompute, "ada": args.ada, "ada_kimg": args.ada_kimg,
        "lecam": args.lecam, "topk": args.topk,
    }
    given = set(given)
    if checkpoint is None or "recipe" in given:
        for key, value in RECIPES[args.recipe].items():
            if key not in given:
                config[key] = value
                given.add(key)

    def follow_lr(c: dict) -> dict:
        return {**c, "lr_g": c["lr_g"] or c["lr"], "lr_d": c["lr_d"] or c["lr"]}

    if checkpoint is None:
        return follow_lr(config)
    old = dict(checkpoint["config"])
    for key in ("lr_g", "lr_d"):  # a rate that followed --lr keeps following a new --lr
        if old.get(key) == old.get("lr"):
            old[key] = None
    for key in ARCH_KEYS:
        was = old.get(key, TRAINER_DEFAULTS.get(key))
        if key in given and config[key] != was:
            typed = {True: f"--{key}", False: f"--no-{key}"}.get(config[key], f"--{key} {config[key]}")
            raise UserError(
                f"{typed} does not match the checkpoint {ckpt_path} ({key} {was}); "
                f"drop it{' (and --recipe)' if 'recipe' in given else ''} or start a new run with another --out"
            )
    for key in config:
        if key in given:
            old[key] = config[key]
    return follow_lr({**config, **old})


def total_steps(config: dict, per_epoch: int) -> tuple[int, str | None]:
    """-> (steps to train in total, across resumes; a note when --epochs and
    --max-steps both bound it). --max-steps alone decides; neither: DEFAULT_EPOCHS."""
    epochs, max_steps = config["epochs"], config["max_steps"]
    if epochs is None:
        return (max_steps, None) if max_steps else (DEFAULT_EPOCHS * per_epoch, None)
    if max_steps is None or max_steps == epochs * per_epoch:
        return epochs * per_epoch, None
    total = min(epochs * per_epoch, max_steps)
    return total, (f"--epochs {epochs} ({epochs * per_epoch} steps of {per_epoch}) and --max-steps {max_steps} "
                   f"both given: training stops at step {total}, the smaller")


# --------------------------------------------------------------------------- #
# Artefacts: loss plot, sample grids
# --------------------------------------------------------------------------- #
def plot_losses(history: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in history if "loss_D" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(10, 6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(steps, [r["loss_D"] for r in rows], label="loss D")
    ax1.plot(steps, [r["loss_G"] for r in rows], label="loss G")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(steps, [r["D_x"] for r in rows], label="D(x)")
    ax2.plot(steps, [r["D_G_z1"] for r in rows], label="D(G(z)) before D step")
    ax2.plot(steps, [r["D_G_z2"] for r in rows], label="D(G(z)) after D step")
    if all("aug_p" in r for r in rows):  # --ada
        ax2.plot(steps, [r["aug_p"] for r in rows], "k--", label="augmentation p (--ada)")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.legend()
    fig.tight_layout()
    with utils.atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)


@torch.no_grad()
def sample_grid(generator: nn.Module, noise: torch.Tensor, path: Path) -> None:
    """Fixed-noise grid in eval mode (BN running stats, as generator.py samples):
    touches no RNG and no BN buffer, so it cannot change the training run."""
    was_training = generator.training
    generator.eval()
    images = generator(noise.to(next(generator.parameters()).device)).float()
    generator.train(was_training)
    utils.save_grid(images, path)


# --------------------------------------------------------------------------- #
# Signals
# --------------------------------------------------------------------------- #
class StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a
    second SIGINT interrupts at once (KeyboardInterrupt)."""

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


# --------------------------------------------------------------------------- #
# Metrics: read one log interval late
# --------------------------------------------------------------------------- #
class Metrics:
    """The step's losses summed on the device, read one log interval late.

    ``close()`` ends an interval: its means are all-reduced across ranks and
    copied to pinned host memory without blocking, an event behind the copy.
    ``read()`` returns the closed intervals' rows, waiting for their copies;
    on a plain log step it runs one interval later, when the copy has long
    finished, so logging never stalls the GPU. Steps that read the device
    anyway (save, samples, FID) read at once, and a save always reads first:
    the NaN check comes before every save."""

    def __init__(self, device: torch.device, world_size: int, keys: tuple[str, ...] = METRIC_KEYS):
        self.device, self.world_size, self.keys = device, world_size, keys
        self.sums = torch.zeros(len(keys), device=device)
        self.steps = 0
        self.pending: list[tuple[dict, float, torch.Tensor, object]] = []  # (step/epoch, img/s, host means, event)

    def add(self, out: dict) -> None:
        self.sums += torch.stack([out[k] for k in self.keys]).float()
        self.steps += 1

    def close(self, head: dict, img_per_s: float) -> None:
        if self.steps == 0:
            return
        means = self.sums / self.steps
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(means)  # NCCL on GPU: enqueued, not waited for
            means /= self.world_size
        cuda = self.device.type == "cuda"
        host = torch.empty(means.shape, dtype=means.dtype, pin_memory=cuda)
        host.copy_(means, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((head, img_per_s, host, event))
        self.sums.zero_()
        self.steps = 0

    def read(self) -> list[dict]:
        rows = []
        for head, img_per_s, host, event in self.pending:
            if event is not None:
                event.synchronize()
            rows.append({**head, **dict(zip(self.keys, host.tolist())), "img_per_s": img_per_s})
        self.pending.clear()
        return rows


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    given = explicit_args(argv if argv is not None else sys.argv[1:])
    validate_args(args)
    device, rank, world_size, stop_group, wait_group = setup_distributed(args.device)
    try:
        return train(args, given, device, rank, world_size, stop_group, wait_group)
    finally:
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def prepare(args, given, rank: int, world_size: int) -> types.SimpleNamespace:
    """Check every input before anything is written: the checkpoint, the
    resolved config, the data, the batch split, the output folders."""
    import dataloader

    say = print if rank == 0 else (lambda *a, **k: None)
    checkpoint, ckpt_path = None, None
    if args.resume:
        out = Path(args.out) if args.out else newest_run()
        ckpt_path = out / CHECKPOINT_NAME
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no {CHECKPOINT_NAME} in {out} (run without --resume to start it)")
        checkpoint = load_checkpoint(ckpt_path)
    config = resolve_config(args, given, checkpoint, ckpt_path)
    if config["ada"] and not augment.parse_policy(config["augment"]):
        raise UserError(f"--ada {config['ada']} adapts the augmentation's strength: it needs --augment (or --recipe best)")
    data_path = Path(config["data"])
    if not data_path.is_file():
        raise UserError(f"data file not found: {data_path} (make it with: python preprocess.py --sizes {config['size']})")
    if data_path.stat().st_size == 0:
        raise UserError(f"data file {data_path} is empty (0 bytes); run preprocess.py again")
    images = dataloader.load_images(data_path, size=config["size"])
    n_images = int(images.shape[0])
    if config["batch_size"] > n_images:
        raise UserError(
            f"--batch-size {config['batch_size']} is larger than the data set ({n_images} images in {data_path})"
        )
    if config["batch_size"] % world_size:
        raise UserError(f"--batch-size {config['batch_size']} is not divisible by the {world_size} processes")
    fingerprint = dataloader.data_fingerprint(data_path)
    if checkpoint is not None and checkpoint.get("data_fingerprint") not in (None, fingerprint):
        say(f"warning: {data_path} differs from the data this run started on; the data order will not "
            f"match the original run", file=sys.stderr)
    config["data_fingerprint"] = fingerprint

    if args.resume:
        out = ckpt_path.parent
    elif args.out:
        out = Path(args.out)
    else:
        stamp = broadcast_object(datetime.now().strftime("%Y%m%d-%H%M%S"), world_size)
        out = Path("runs") / f"{config['size']}px-{data_path.stem.rsplit('_', 1)[0]}-{stamp}"
    params_path = Path(args.params)
    check_writable(out, "run folder")
    check_writable(params_path.parent if str(params_path.parent) else Path("."), "params folder")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise UserError(f"{out} already holds a {CHECKPOINT_NAME}; pass --resume to continue it, "
                        f"or choose another --out")
    return types.SimpleNamespace(checkpoint=checkpoint, ckpt_path=ckpt_path, config=config, data_path=data_path,
                                 images=images, out=out, params_path=params_path)


def small_batch_warning(batch_size: int, world_size: int) -> str | None:
    """Each process's BatchNorm normalises its own share of the batch; below
    MIN_BN_BATCH images those statistics are noisy (the classic DCGAN used 128)."""
    local = batch_size // world_size
    if world_size == 1 or local >= MIN_BN_BATCH:
        return None
    return (f"warning: {local} images per process ({batch_size} over {world_size}) for BatchNorm statistics, "
            f"which each process takes from its own share; use --batch-size {MIN_BN_BATCH * world_size} or more")


def fid_reference(args, data_path: Path, device, lead: bool, world_size: int, wait_group):
    """-> (Inception, real statistics) on rank 0 for --fid-every, else (None, None).
    Made before any DDP module exists: the other ranks wait on a Gloo barrier
    with a long timeout, not inside NCCL collectives (10-minute watchdog)."""
    inception = real_stats = None
    if args.fid_every and lead:  # no Inception weights offline is a UserError here, before any output
        import evaluate  # only when asked: it loads Inception

        inception = evaluate.load_inception(device)
        real_stats = evaluate.real_statistics(str(data_path), device, model=inception)
    if args.fid_every and world_size > 1:
        import torch.distributed as dist

        dist.barrier(group=wait_group)
    return inception, real_stats


@contextlib.contextmanager
def deterministic_kernels(enabled: bool):
    """--deterministic: deterministic algorithms (warn where an op has none),
    cuDNN benchmark off; the previous settings come back afterwards."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.benchmark, cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]


class Run:
    """One training run's state, shared by the phases the step loop calls:
    ``log`` (metrics, NaN check), ``sample``, ``fid`` and ``save``."""

    def __init__(self, args, prep, trainer: Trainer, device, rank: int, world_size: int, wait_group,
                 inception=None, real_stats=None):
        import dataloader

        self.args, self.config, self.trainer, self.device = args, prep.config, trainer, device
        self.lead, self.world_size, self.wait_group = rank == 0, world_size, wait_group
        self.out, self.params_path = prep.out, prep.params_path
        self.best_path = prep.params_path.with_name("generator_best.params")
        self.inception, self.real_stats = inception, real_stats
        self.step, self.epoch, self.batch_in_epoch, self.best_fid = 0, 0, 0, None
        config, checkpoint = self.config, prep.checkpoint
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint["trainer"], source=str(prep.ckpt_path))
            self.step, self.epoch, self.batch_in_epoch = (checkpoint["step"], checkpoint["epoch"],
                                                          checkpoint["batch_in_epoch"])
            old_batch = checkpoint["config"]["batch_size"]
            if old_batch != config["batch_size"]:  # keep the position in the epoch, in images
                self.batch_in_epoch = self.batch_in_epoch * old_batch // config["batch_size"]
            self.best_fid = checkpoint.get("best_fid")
            self.fixed_noise = checkpoint["fixed_noise"]
            if world_size == 1:
                set_rng_state(checkpoint["rng"], device)
            else:  # each rank draws its own noise; exact resume is a single-process promise
                seed_everything(config["seed"] + 1_000_003 * rank + self.step)
        else:
            gen = torch.Generator().manual_seed(config["seed"])
            self.fixed_noise = torch.randn(args.num_samples, config["nz"], 1, 1, generator=gen)
        self.feeder = dataloader.DeviceFeeder(prep.images, batch_size=config["batch_size"], device=device,
                                              seed=config["seed"], flip=config["flip"],
                                              channels_last=trainer.channels_last, rank=rank, world_size=world_size)
        self.per_epoch = len(self.feeder)
        trainer.steps_per_epoch = self.per_epoch  # --topk's schedule
        self.total, self.length_note = total_steps(config, self.per_epoch)
        self.metrics = Metrics(device, world_size, METRIC_KEYS + (() if trainer.ada is None else ("aug_p",)))
        self.history: list[dict] = []
        self.postfix: dict = {}
        self.t_last, self.step_last = time.perf_counter(), self.step

    # -- start ---------------------------------------------------------------- #
    def open_folder(self, images, resume: bool) -> None:
        """config.json; on --resume drop metrics lines logged after the checkpoint."""
        if not self.lead:
            return
        utils.save_json(self.run_config(len(images)), self.out / "config.json")
        metrics_path = self.out / "metrics.jsonl"
        if resume and metrics_path.exists():
            for line in metrics_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("step", 0) <= self.step:
                    self.history.append(row)
            with utils.atomic_path(metrics_path) as tmp:
                Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in self.history))
        else:
            utils.save_grid(np.asarray(images[: self.args.num_samples]), self.out / "reals.png")

    def run_config(self, n_images: int) -> dict:
        a, t = self.args, self.trainer
        return {**self.config, "out": str(self.out), "params": str(self.params_path), "device": str(self.device),
                "precision": t.precision, "compile": a.compile, "world_size": self.world_size,
                "steps_per_epoch": self.per_epoch, "total_steps": self.total, "log_every": a.log_every,
                "sample_every": a.sample_every, "checkpoint_every": a.checkpoint_every, "fid_every": a.fid_every,
                "fid_n": a.fid_n, "num_images": n_images}

    # -- the phases ----------------------------------------------------------- #
    def advance(self) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def epoch_float(self) -> float:
        return round(self.epoch + self.batch_in_epoch / self.per_epoch, 4)

    def log(self, close: bool, now: bool) -> None:
        """``close``: end this log interval (its numbers start their way to the
        host). Then record the intervals whose numbers are there: all of them
        when ``now`` (a save, samples or FID follow), else the earlier ones."""
        rows = self.metrics.read() if not now else []
        if close:
            t = time.perf_counter()
            rate = (self.step - self.step_last) * self.config["batch_size"] / max(t - self.t_last, 1e-9)
            self.metrics.close({"step": self.step, "epoch": self.epoch_float()}, rate)
            self.t_last, self.step_last = t, self.step
        if now:
            rows = self.metrics.read()
        for row in rows:
            self.record(row)

    def record(self, row: dict) -> None:
        values = [row[k] for k in METRIC_KEYS]
        if not all(math.isfinite(v) for v in values):
            raise UserError(
                f"the loss became NaN/inf by step {row['step']} (loss_D {values[0]:.4g}, loss_G {values[1]:.4g}); "
                f"stopped without saving these weights, the last good checkpoint in {self.out} is kept. "
                f"Try a lower --lr (e.g. 1e-4), --precision fp32, a smaller --batch-size, "
                f"or --resume from that checkpoint"
            )
        self.postfix.update(D=f"{values[0]:.3f}", G=f"{values[1]:.3f}", img_s=f"{row['img_per_s']:.0f}")
        if "aug_p" in row:
            self.postfix["p"] = f"{row['aug_p']:.2f}"
        self.append(row)

    def append(self, row: dict) -> None:
        if self.lead:
            self.history.append(row)
            utils.append_jsonl(row, self.out / "metrics.jsonl")

    def sample(self) -> None:
        if not self.lead:
            return
        folder = self.out / "samples"
        sample_grid(self.trainer.netG, self.fixed_noise, folder / f"step_{self.step:06d}.png")
        if self.trainer.netG_ema is not None:
            sample_grid(self.trainer.sampling_ema(), self.fixed_noise, folder / f"step_{self.step:06d}_ema.png")

    def fid(self) -> None:
        """FID of the EMA (else raw) generator on rank 0; keep generator_best.params."""
        if self.lead:
            import evaluate

            t = self.trainer
            net = t.sampling_ema() if t.netG_ema is not None else t.netG
            was_training = net.training
            net.eval()
            fid = float(evaluate.generator_fid(net, self.config["nz"], self.real_stats, self.args.fid_n, self.device,
                                               seed=self.config["seed"], model=self.inception))
            net.train(was_training)
            self.append({"step": self.step, "epoch": self.epoch_float(), "fid": fid, "fid_n": self.args.fid_n,
                         "fid_seed": self.config["seed"], "fid_model": "ema" if t.netG_ema is not None else "raw",
                         "fid_weights": self.inception.weights_label})
            self.postfix["fid"] = f"{fid:.2f}"
            if self.best_fid is None or fid < self.best_fid:
                self.best_fid = fid
                self.export(self.best_path, t.state_dict())
        self.best_fid = broadcast_object(self.best_fid, self.world_size, group=self.wait_group)

    def save(self) -> None:
        """checkpoint.pt and --params (rank 0), then loss.png, off the hot path."""
        if not self.lead:
            return
        state = self.trainer.state_dict()
        utils.torch_save({
            "format": CHECKPOINT_FORMAT, "config": self.config, "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "trainer": state, "fixed_noise": self.fixed_noise,
            "rng": rng_state(self.device), "best_fid": self.best_fid,
            "data_fingerprint": self.config["data_fingerprint"],
        }, self.out / CHECKPOINT_NAME)
        self.export(self.params_path, state)
        plot_losses(self.history, self.out / "loss.png")

    def export(self, path: Path, state: dict) -> None:
        ema = self.trainer.sampling_ema()  # state["ema"], or its BN-recomputed copy
        save_generator_params(path, {**self.config, "step": self.step}, state["netG"],
                              None if ema is None else ema.state_dict())

    def after_step(self, last: bool) -> None:
        """What this step's number asks for; saves come after the NaN check."""
        a, s = self.args, self.step
        save = s % a.checkpoint_every == 0 or last
        sample = s % a.sample_every == 0 or last
        fid = a.fid_every and (s % a.fid_every == 0 or last)
        close = s % a.log_every == 0 or save
        if close or sample or fid:
            self.log(close=close, now=save or sample or bool(fid))
        if sample:
            self.sample()
        if fid:
            self.fid()
        if save:
            self.save()


def train(args, given, device, rank, world_size, stop_group, wait_group=None) -> int:
    prep = prepare(args, given, rank, world_size)
    config, lead = prep.config, rank == 0
    say = print if lead else (lambda *a, **k: None)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    inception, real_stats = fid_reference(args, prep.data_path, device, lead, world_size, wait_group)

    seed_everything(config["seed"] + rank)  # weights init; DDP then copies rank 0's weights to all ranks
    trainer = Trainer(config, device, precision=precision, compile=args.compile,
                      channels_last=config["channels_last"], world_size=world_size, rank=rank)
    config["channels_last"] = trainer.channels_last  # resolved, so a resume keeps it
    run = Run(args, prep, trainer, device, rank, world_size, wait_group, inception, real_stats)
    del prep.checkpoint
    say(("resuming" if args.resume else "training") + " with " + json.dumps(run.run_config(len(prep.images)),
                                                                           indent=2))
    for note in (run.length_note, small_batch_warning(config["batch_size"], world_size)):
        if note:
            say(note, file=sys.stderr)
    run.open_folder(prep.images, args.resume)

    # ---- the loop: one step, then whatever this step number asks for ------- #
    from tqdm import tqdm

    stop, stop_vote, interrupted = StopFlag(), torch.zeros(1), None
    n_epochs = -(-run.total // run.per_epoch)
    with stop, deterministic_kernels(config["deterministic"]):
        while run.step < run.total and interrupted is None:
            bar = tqdm(total=run.per_epoch, initial=run.batch_in_epoch, desc=f"epoch {run.epoch + 1}/{n_epochs}",
                       disable=not lead, dynamic_ncols=True, leave=True)
            steps_before = run.step
            for real in run.feeder.epoch(run.epoch, start_batch=run.batch_in_epoch):
                run.metrics.add(trainer.step(real))
                run.advance()
                bar.update(1)
                if world_size > 1:  # every rank must stop at the same step
                    import torch.distributed as dist

                    stop_vote.fill_(0 if stop.signum is None else stop.signum)
                    dist.all_reduce(stop_vote, op=dist.ReduceOp.MAX, group=stop_group)
                    if stop_vote.item() and stop.signum is None:
                        stop.signum = int(stop_vote.item())
                last = run.step >= run.total or stop.signum is not None
                run.after_step(last)
                bar.set_postfix(run.postfix, refresh=False)
                if last:
                    interrupted = stop.signum
                    break
            bar.close()
            if run.step == steps_before:
                raise RuntimeError(f"the data feeder yielded no batch for epoch {run.epoch}")
    out, step = run.out, run.step
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        say(f"{name} at step {step}: checkpoint saved to {out / CHECKPOINT_NAME} and generator to "
            f"{prep.params_path}; continue with: python train.py --resume --out {out} (the continued run equals "
            f"an uninterrupted one bit for bit on CPU; on a GPU only with --deterministic)", file=sys.stderr)
        return SIGNAL_EXIT.get(interrupted, 1)
    say(f"done: {step} steps; generator -> {prep.params_path}, checkpoint and samples -> {out}")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
