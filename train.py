"""Train the DCGAN (Radford et al., 2016) on a preprocessed image array.

    python preprocess.py --synthetic 2000 && python train.py --data data/synthetic_64.npy --ngf 32 --ndf 32 --batch-size 64 --max-steps 1500
    python train.py --size 128 --ema 0.999 --compile          # CelebA 128 px on a GPU (bf16, fused Adam)
    python train.py --resume --out runs/128px-celeba-20260101-120000 --max-steps 20000
    torchrun --nproc_per_node 4 train.py --size 128           # DDP; --batch-size stays the global batch
    python train.py --data data/flowers_64.npy --recipe best  # small folder: DiffAugment, TTUR, EMA (README "Better faces")

The classic algorithm: D takes one Adam step on a real batch (label 1) and on
G's batch detached (label 0); then G takes one Adam step on the same fake batch
with label 1 (the non-saturating loss). D returns logits; the loss is
BCEWithLogits. Beyond that classic recipe (the default), --augment, --loss
hinge, --sn, --lr-g/--lr-d, --r1 and --ema-bn-recompute change the step or D
(see build_parser and README "Better faces"); --recipe best sets the
combination chosen on the quality benchmark (RECIPES, provisional until
measured). A run folder (``--out``) holds config.json, checkpoint.pt (full
resume state), metrics.jsonl, loss.png, reals.png and samples/step_NNNNNN.png;
``--params`` (default generator.params) is the small export generator.py and
evaluate.py read.

Signals: Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves the
checkpoint and generator.params, says where, and exits 130 (SIGINT) or 143
(SIGTERM, 128 + 15, so a scheduler sees the job did not complete). Every file
is written atomically, so a SIGKILL at any moment leaves the previous files
loadable.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import signal
import sys
import time
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
                    "ema_bn_recompute": False}

# --recipe NAME sets these keys unless the same option is typed on the command
# line. "classic" is today's DCGAN (it changes nothing). "best" is the
# combination to beat the classic recipe on small folders; the lead fixes it
# from the quality benchmark (README "Better faces"): until then it is the
# cheap, low-risk set (DiffAugment, EMA with BN statistics recomputed, TTUR).
RECIPES = {
    "classic": {"loss": "bce", "sn": False, "augment": "none", "r1": 0.0, "lr_g": None, "lr_d": None,
                "ema": 0.0, "ema_bn_recompute": False},
    "best": {"loss": "bce", "sn": False, "augment": augment.DEFAULT_POLICY, "r1": 0.0, "lr_g": 1e-4, "lr_d": 4e-4,
             "ema": 0.999, "ema_bn_recompute": True},
}
METRIC_KEYS = ("loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2")
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


# --------------------------------------------------------------------------- #
# One training step, reusable by bench.py
# --------------------------------------------------------------------------- #
class Trainer:
    """G, D, their Adam optimizers, an optional EMA of G, and the step.

    ``config`` needs size, nz, ngf, ndf (nc) and may set lr, beta1, beta2, ema
    and the options of TRAINER_DEFAULTS (lr_g, lr_d, loss, sn, augment, r1,
    r1_every, ema_bn_recompute); left out, each is the classic recipe's.
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
        self.loss = self.config["loss"]
        self.r1_gamma, self.r1_every = float(self.config["r1"] or 0.0), int(self.config["r1_every"])
        self.steps = 0  # steps taken (for the lazy R1 schedule); saved in state_dict
        self.device = device = torch.device(device)
        if precision not in ("fp32", "bf16"):
            raise UserError(f"unknown precision {precision!r} (use fp32 or bf16)")
        self.precision = precision
        cuda = device.type == "cuda"
        # channels_last: faster convs on CUDA (tensor cores) and on CPU (oneDNN), see BENCHMARKS.md
        self.channels_last = device.type in ("cuda", "cpu") if channels_last is None else bool(channels_last)
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

        self.G, self.D = self.netG, self.netD
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Plain per-rank BatchNorm on purpose (no SyncBatchNorm): the classic
            # DCGAN normalises each D call's batch on its own (real and fake never
            # mixed), per-rank batches of 32+ give stable statistics, and SyncBN
            # would add a collective to every BN layer of all three forwards per step.
            ids = [device.index] if cuda else None
            self.G = DDP(self.netG, device_ids=ids)
            self.D = DDP(self.netD, device_ids=ids)
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
        """--augment: DiffAugment on every batch D sees (reals and fakes alike)."""
        return augment.diff_augment(images, self.config["augment"]) if self.augment_policy else images

    def step(self, real: torch.Tensor) -> dict:
        """One D step then one G step on ``real`` (B, 3, S, S) in [-1, 1]."""
        b = real.shape[0]
        z = torch.randn(b, self.config["nz"], 1, 1, device=self.device)

        # D: maximise log D(x) + log(1 - D(G(z))) (bce), or minimise the hinge
        self.optD.zero_grad(set_to_none=True)
        if self.r1_gamma > 0 and self.steps % self.r1_every == 0:
            # lazy R1 (StyleGAN2): every r1_every steps, scaled by r1_every so the
            # average strength is gamma. fp32 outside autocast, through the plain
            # netD (compiled graphs have no double backward); under DDP its
            # gradient is all-reduced with the real-batch gradient below.
            penalty = losses.r1_penalty(self.netD, real, self._augment if self.augment_policy else None)
            (penalty * (0.5 * self.r1_gamma * self.r1_every)).backward()
        with self._autocast():
            out_real = self.D(self._augment(real)).float()
            loss_real = losses.d_loss_real(self.loss, out_real)
        loss_real.backward()
        with self._autocast():
            fake = self.G(z)
            out_fake = self.D(self._augment(fake.detach())).float()
            loss_fake = losses.d_loss_fake(self.loss, out_fake)
        loss_fake.backward()
        self.optD.step()

        # G: maximise log D(G(z)) on the same fake batch (non-saturating), or -D(G(z))
        self.optG.zero_grad(set_to_none=True)
        with self._autocast():
            out_gen = self.D(self._augment(fake)).float()
            loss_g = losses.g_loss(self.loss, out_gen)
        loss_g.backward()
        self.optG.step()
        if self.netG_ema is not None:
            self.update_ema()
        self.steps += 1

        # sigmoid(logit) is the classic D(x); for hinge it is a monitor of the same logits
        return {
            "loss_D": (loss_real + loss_fake).detach(),
            "loss_G": loss_g.detach(),
            "D_x": torch.sigmoid(out_real.detach()).mean(),
            "D_G_z1": torch.sigmoid(out_fake.detach()).mean(),
            "D_G_z2": torch.sigmoid(out_gen.detach()).mean(),
        }

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
            self._sampling_ema = None
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
    p.add_argument("--epochs", type=int, default=5, help="epochs to train (total, across resumes)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many TOTAL steps (counted across resumes); overrides --epochs when smaller")
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
    p.add_argument("--log-every", type=int, default=50, help="steps between metrics lines / loss.png / NaN checks")
    p.add_argument("--sample-every", type=int, default=500, help="steps between samples/step_NNNNNN.png grids")
    p.add_argument("--checkpoint-every", type=int, default=1000,
                   help="steps between checkpoint.pt + --params saves (always saved at the end)")
    p.add_argument("--num-samples", type=int, default=64, help="images in each fixed-noise grid")
    p.add_argument("--fid-every", type=int, default=0, help="steps between FID evaluations (0 = off)")
    p.add_argument("--fid-n", type=int, default=5000, help="generated images per FID evaluation")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="channels_last memory format (auto = on for CUDA and CPU, where it is faster)")

    g = p.add_argument_group("beyond the classic recipe (README 'Better faces'); a typed flag beats --recipe")
    g.add_argument("--recipe", default="classic", choices=tuple(RECIPES),
                   help="classic = the DCGAN paper's recipe (today's numbers, bit for bit); best = "
                        + ", ".join(f"{k} {v}" for k, v in RECIPES["best"].items() if v != RECIPES["classic"][k]))
    g.add_argument("--augment", nargs="?", const=augment.DEFAULT_POLICY, default="none", metavar="POLICY",
                   help=f"DiffAugment every image D sees, real and fake; bare --augment = {augment.DEFAULT_POLICY} "
                        f"(Zhao et al.'s choice for small data sets), or a comma list of "
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
def setup_distributed(device_name: str):
    """-> (device, rank, world_size, stop_group). Under torchrun (WORLD_SIZE > 1)
    joins the process group from the environment: NCCL on CUDA, Gloo on CPU.
    Multi-node works the same way through torchrun's --nnodes/--rdzv-* flags."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return utils.resolve_device(device_name), 0, 1, None
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = utils.resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    # a CPU (Gloo) group for the per-step "stop?" vote, so it never syncs the GPU stream
    stop_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return device, dist.get_rank(), dist.get_world_size(), stop_group


def broadcast_object(obj, world_size: int):
    if world_size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
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
        "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
        "lr": args.lr, "beta1": args.beta1, "beta2": args.beta2, "seed": args.seed, "ema": args.ema,
        "flip": args.flip, "recipe": args.recipe, "loss": args.loss, "sn": args.sn, "augment": args.augment,
        "r1": args.r1, "r1_every": args.r1_every, "lr_g": args.lr_g, "lr_d": args.lr_d,
        "ema_bn_recompute": args.ema_bn_recompute,
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
# main
# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    given = explicit_args(argv if argv is not None else sys.argv[1:])
    validate_args(args)
    device, rank, world_size, stop_group = setup_distributed(args.device)
    try:
        return train(args, given, device, rank, world_size, stop_group)
    finally:
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def train(args, given, device, rank, world_size, stop_group) -> int:
    import dataloader

    lead = rank == 0
    say = print if lead else (lambda *a, **k: None)

    # ---- validate everything before writing anything -------------------- #
    checkpoint, ckpt_path = None, None
    if args.resume:
        out = Path(args.out) if args.out else newest_run()
        ckpt_path = out / CHECKPOINT_NAME
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no {CHECKPOINT_NAME} in {out} (run without --resume to start it)")
        checkpoint = load_checkpoint(ckpt_path)
    config = resolve_config(args, given, checkpoint, ckpt_path)
    data_path = Path(config["data"])
    if not data_path.is_file():
        raise UserError(f"data file not found: {data_path} (make it with: python preprocess.py --size {config['size']})")
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
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
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
    best_path = params_path.with_name("generator_best.params")
    check_writable(out, "run folder")
    check_writable(params_path.parent if str(params_path.parent) else Path("."), "params folder")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise UserError(f"{out} already holds a {CHECKPOINT_NAME}; pass --resume to continue it, "
                        f"or choose another --out")

    seed_everything(config["seed"] + rank)  # weights init; DDP then copies rank 0's weights to all ranks
    trainer = Trainer(config, device, precision=precision, compile=args.compile,
                      channels_last=channels_last, world_size=world_size, rank=rank)
    step, epoch, batch_in_epoch, best_fid = 0, 0, 0, None
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint["trainer"], source=str(ckpt_path))
        step, epoch, batch_in_epoch = checkpoint["step"], checkpoint["epoch"], checkpoint["batch_in_epoch"]
        old_batch = checkpoint["config"]["batch_size"]
        if old_batch != config["batch_size"]:  # keep the position in the epoch, in images
            batch_in_epoch = batch_in_epoch * old_batch // config["batch_size"]
        best_fid = checkpoint.get("best_fid")
        fixed_noise = checkpoint["fixed_noise"]
        if world_size == 1:
            set_rng_state(checkpoint["rng"], device)
        else:  # each rank draws its own noise; exact resume is a single-process promise
            seed_everything(config["seed"] + 1_000_003 * rank + step)
        del checkpoint
    else:
        gen = torch.Generator().manual_seed(config["seed"])
        fixed_noise = torch.randn(args.num_samples, config["nz"], 1, 1, generator=gen)

    feeder = dataloader.DeviceFeeder(images, batch_size=config["batch_size"], device=device, seed=config["seed"],
                                     flip=config["flip"], channels_last=trainer.channels_last, rank=rank,
                                     world_size=world_size)
    per_epoch = len(feeder)
    total = min(config["epochs"] * per_epoch, config["max_steps"] or sys.maxsize)

    real_stats = inception = None
    if args.fid_every and lead:  # before any output: no Inception weights offline is a UserError here
        import evaluate  # only when asked: it loads Inception

        inception = evaluate.load_inception(device)
        real_stats = evaluate.real_statistics(str(data_path), device, model=inception)

    run_config = {**config, "out": str(out), "params": str(params_path), "device": str(device),
                  "precision": precision, "compile": args.compile, "channels_last": trainer.channels_last,
                  "world_size": world_size, "steps_per_epoch": per_epoch, "total_steps": total,
                  "log_every": args.log_every, "sample_every": args.sample_every,
                  "checkpoint_every": args.checkpoint_every, "fid_every": args.fid_every, "fid_n": args.fid_n,
                  "num_images": n_images}
    say(("resuming" if args.resume else "training") + " with " + json.dumps(run_config, indent=2))

    # ---- run folder ------------------------------------------------------- #
    metrics_path = out / "metrics.jsonl"
    history: list[dict] = []
    if lead:
        utils.save_json(run_config, out / "config.json")
        if args.resume and metrics_path.exists():  # drop lines logged after the checkpoint
            for line in metrics_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("step", 0) <= step:
                    history.append(row)
            with utils.atomic_path(metrics_path) as tmp:
                Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in history))
        else:
            utils.save_grid(np.asarray(images[: args.num_samples]), out / "reals.png")

    def save_all(reason: str) -> None:
        if not lead:
            return
        state = trainer.state_dict()
        utils.torch_save({
            "format": CHECKPOINT_FORMAT, "config": config, "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "trainer": state, "fixed_noise": fixed_noise,
            "rng": rng_state(device), "best_fid": best_fid, "data_fingerprint": fingerprint,
        }, out / CHECKPOINT_NAME)
        export_params(params_path, state)

    def export_params(path: Path, state: dict) -> None:
        ema = trainer.sampling_ema()  # state["ema"], or its BN-recomputed copy
        save_generator_params(path, {**config, "step": step}, state["netG"], None if ema is None else ema.state_dict())

    def fid_generator():
        return trainer.sampling_ema() if trainer.netG_ema is not None else trainer.netG

    # ---- loop -------------------------------------------------------------- #
    from tqdm import tqdm

    acc = torch.zeros(len(METRIC_KEYS), device=device)
    acc_steps, t_last, step_last = 0, time.perf_counter(), step
    postfix = {}

    def flush_metrics() -> None:
        """Read the device numbers (the only host sync), check them for NaN/inf,
        append a metrics line and refresh loss.png."""
        nonlocal acc, acc_steps, t_last, step_last
        if acc_steps == 0:
            return
        values = acc / acc_steps
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(values)
            values /= world_size
        values = values.tolist()
        now = time.perf_counter()
        row = {"step": step, "epoch": round(epoch + batch_in_epoch / per_epoch, 4), **dict(zip(METRIC_KEYS, values)),
               "img_per_s": (step - step_last) * config["batch_size"] / max(now - t_last, 1e-9)}
        acc.zero_()
        acc_steps, t_last, step_last = 0, now, step
        if not all(math.isfinite(v) for v in values):
            raise UserError(
                f"the loss became NaN/inf by step {step} (loss_D {values[0]:.4g}, loss_G {values[1]:.4g}); "
                f"stopped without saving these weights, the last good checkpoint in {out} is kept. "
                f"Try a lower --lr (e.g. 1e-4), --precision fp32, a smaller --batch-size, "
                f"or --resume from that checkpoint"
            )
        postfix.update(D=f"{values[0]:.3f}", G=f"{values[1]:.3f}", img_s=f"{row['img_per_s']:.0f}")
        if lead:
            history.append(row)
            utils.append_jsonl(row, metrics_path)
            plot_losses(history, out / "loss.png")

    stop = StopFlag()
    stop_vote = torch.zeros(1)
    interrupted = None
    with stop:
        while step < total and interrupted is None:
            bar = tqdm(total=per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{config['epochs']}",
                       disable=not lead, dynamic_ncols=True, leave=True)
            steps_before = step
            for real in feeder.epoch(epoch, start_batch=batch_in_epoch):
                out_step = trainer.step(real)
                acc += torch.stack([out_step[k] for k in METRIC_KEYS]).float()
                acc_steps += 1
                step += 1
                batch_in_epoch += 1
                bar.update(1)
                if batch_in_epoch == per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                if world_size > 1:  # every rank must stop at the same step
                    import torch.distributed as dist

                    stop_vote.fill_(0 if stop.signum is None else stop.signum)
                    dist.all_reduce(stop_vote, op=dist.ReduceOp.MAX, group=stop_group)
                    if stop_vote.item() and stop.signum is None:
                        stop.signum = int(stop_vote.item())
                last = step >= total or stop.signum is not None
                if step % args.log_every == 0 or last or step % args.checkpoint_every == 0:
                    flush_metrics()
                    bar.set_postfix(postfix, refresh=False)
                if lead and (step % args.sample_every == 0 or last):
                    sample_grid(trainer.netG, fixed_noise, out / "samples" / f"step_{step:06d}.png")
                    if trainer.netG_ema is not None:
                        sample_grid(trainer.sampling_ema(), fixed_noise, out / "samples" / f"step_{step:06d}_ema.png")
                if args.fid_every and (step % args.fid_every == 0 or last):
                    if lead:
                        import evaluate

                        net = fid_generator()
                        was_training = net.training
                        net.eval()
                        fid = float(evaluate.generator_fid(net, config["nz"], real_stats, args.fid_n, device,
                                                           seed=config["seed"], model=inception))
                        net.train(was_training)
                        row = {"step": step, "epoch": round(epoch + batch_in_epoch / per_epoch, 4), "fid": fid, "fid_n": args.fid_n,
                               "fid_seed": config["seed"], "fid_model": "ema" if trainer.netG_ema else "raw"}
                        history.append(row)
                        utils.append_jsonl(row, metrics_path)
                        postfix["fid"] = f"{fid:.2f}"
                        if best_fid is None or fid < best_fid:
                            best_fid = fid
                            export_params(best_path, trainer.state_dict())
                    best_fid = broadcast_object(best_fid, world_size)
                if step % args.checkpoint_every == 0 or last:
                    save_all("checkpoint")
                if last:
                    interrupted = stop.signum
                    break
            bar.close()
            if step == steps_before:
                raise RuntimeError(f"the data feeder yielded no batch for epoch {epoch}")
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        say(f"{name} at step {step}: checkpoint saved to {out / CHECKPOINT_NAME} and generator to {params_path}; "
            f"continue with: python train.py --resume --out {out}", file=sys.stderr)
        return SIGNAL_EXIT.get(interrupted, 1)
    say(f"done: {step} steps; generator -> {params_path}, checkpoint and samples -> {out}")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
