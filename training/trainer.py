"""The two networks and everything that updates them: Adam for each, the EMA
of G, DDP and torch.compile wrapping, the D phase and the G phase of a step.

    trainer = Trainer(config, "cuda", precision="bf16", compile=True, steps_per_epoch=len(feeder))
    out = trainer.step(real)        # real (B, 3, S, S) in [-1, 1] -> dict of 0-dim device tensors

``config`` is a complete training config (``training_loop.DEFAULTS`` with
your changes). ``.netG`` / ``.netD`` are the plain modules (what gets saved);
the step runs through ``.G`` / ``.D``, which may be DDP- and/or
compile-wrapped. ``.step`` never synchronises with the host, so on a GPU the
CPU runs ahead; read the numbers when logging. ``precision`` is fp32, bf16
(autocast) or fp16 (autocast with a loss scaler per optimiser; the step also
returns ``skipped_d`` / ``skipped_g``, 1.0 where the scaler skipped it);
``training.device.resolve_precision`` turns ``auto`` into one of them.
``steps_per_epoch`` (the data's batches per epoch) is top-k's schedule,
required when the config has ``topk``.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from network import build_discriminator, build_generator, recompute_bn_stats, strip_prefixes
from training import augment
from training.device import AMP_DTYPES, PRECISIONS, default_channels_last, match_param_layout, wrap_ddp
from training.loss import Loss
from utils import UserError


class Trainer:
    """G, D, their Adam optimisers, an optional EMA of G, the Loss, and the step."""

    def __init__(self, config: dict, device="cpu", precision: str = "fp32", compile: bool = False,
                 channels_last: bool | None = None, world_size: int = 1, rank: int = 0,
                 steps_per_epoch: int | None = None):
        self.config = config = dict(config)
        self.device = device = torch.device(device)
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
        self.precision, self.world_size = precision, world_size
        self.amp_dtype = AMP_DTYPES.get(precision)  # None: fp32, no autocast
        self.channels_last = default_channels_last(device) if channels_last is None else bool(channels_last)
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True

        # ---- Networks and optimisers ---------------------------------------- #
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.netG = build_generator(config).to(device, memory_format=memory_format)
        self.netD = build_discriminator(config).to(device, memory_format=memory_format)
        betas = (config["beta1"], config["beta2"])
        fused = True if cuda else None  # fused Adam: one kernel for all parameters
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=self.lr_g, betas=betas, fused=fused)
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=self.lr_d, betas=betas, fused=fused)
        # fp16: dynamic loss scaling, one scaler per optimiser (a D overflow must not shrink G's scale).
        # Disabled (fp32, bf16) they pass losses and steps through untouched. With fused Adam (CUDA)
        # the skip decision stays on the device; unfused (CPU, MPS) the scaler reads it on the host.
        self.scalerD = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.scalerG = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

        # ---- EMA of G -------------------------------------------------------- #
        self.ema_decay = float(config["ema"] or 0.0)
        self.ema_updates = 0
        self.netG_ema = None
        if self.ema_decay > 0:
            self._make_ema()
        self._sampling_ema = None  # (ema_updates, BN-recomputed copy of netG_ema)

        # ---- Loss and augmentation ------------------------------------------ #
        self.loss = Loss(config["loss"], config["r1"], config["r1_every"], config["lecam"], config["topk"],
                         steps_per_epoch=steps_per_epoch, world_size=world_size)
        # --ada: the augmentation probability follows D's overfitting (None: every image augmented)
        ada_target = float(config["ada"] or 0.0)
        ada = (augment.AdaptiveAugment(ada_target, float(config["ada_kimg"]), device, world_size=world_size)
               if ada_target > 0 else None)
        # D's augmentation: under --compile its arithmetic is compiled too (one graph without and one
        # with grad), its few random draws stay eager so the RNG and the images are eager's
        self.augment = augment.AugmentPipe(config["augment"], ada, compile=compile)

        # ---- DDP and compile wrapping --------------------------------------- #
        self.G, self.D = self.netG, self.netD
        if world_size > 1:
            # Plain per-rank BatchNorm on purpose (no SyncBatchNorm): the classic
            # DCGAN normalises each D call's batch on its own (real and fake never
            # mixed), per-rank batches of 32+ give stable statistics, and SyncBN
            # would add a collective to every BN layer of all three forwards per step.
            ids = [device.index] if cuda else None
            self.G, self.D = wrap_ddp(self.netG, ids), wrap_ddp(self.netD, ids)
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
            recompute_bn_stats(copy_, seed=self.config["seed"])
            self._sampling_ema = (self.ema_updates, copy_)
        return self._sampling_ema[1]

    def sampling_generator(self) -> nn.Module:
        """What samples, FID and exports use: the EMA generator if any, else G."""
        return self.sampling_ema() if self.netG_ema is not None else self.netG

    # -- the step ------------------------------------------------------------ #
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    @staticmethod
    def _scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """``scaler.step`` + ``update``. -> 1.0 if the scaler skipped the step
        (inf/NaN in the unscaled gradients), else 0.0, as a 0-dim device tensor
        (no host sync); None when the scaler is off."""
        scaler.step(optimizer)
        if not scaler.is_enabled():
            return None
        skipped = sum(scaler._found_inf_per_device(optimizer).values())  # read before update() clears it
        scaler.update()
        return skipped

    def _unreduced(self, module):
        """DDP's no_sync for ``module`` (gradients stay local), else nothing."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        inner = getattr(module, "_orig_mod", module)  # under torch.compile
        return inner.no_sync() if isinstance(inner, DDP) else contextlib.nullcontext()

    def step(self, real: torch.Tensor) -> dict:
        """One D step then one G step on ``real`` (B, 3, S, S) in [-1, 1]."""
        b, loss = real.shape[0], self.loss
        z = torch.randn(b, self.config["nz"], 1, 1, device=self.device)
        # D's input in the dtype and layout of G's fakes (a no-op for fp32 feeder batches): under
        # --compile D then builds two graphs (input without / with grad) instead of four
        real = real.to(self.amp_dtype or real.dtype,
                       memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

        # ---- D phase: real batch, then G's batch detached ------------------- #
        # fp16: every term D backpropagates (R1, LeCam's halves) is scaled by scalerD, so
        # scalerD.step unscales D's whole gradient at once (else: pass-through)
        scale_d, scale_g = self.scalerD.scale, self.scalerG.scale
        self.optD.zero_grad(set_to_none=True)
        if loss.r1_due():
            # fp32 outside autocast, through the plain netD (compiled graphs have no double
            # backward); under DDP its local gradient is all-reduced with the fake half's below
            scale_d(loss.r1(self.netD, real, self.augment.eager)).backward()
        with self._unreduced(self.D):  # DDP: the real half's gradients are reduced with the fake half's
            with self._autocast():
                out_real = self.D(self.augment(real)).float()
                loss_real, total = loss.d_real(out_real)
            scale_d(total).backward()
        with self._autocast():
            fake = self.G(z)
            out_fake = self.D(self.augment(fake.detach())).float()
            loss_fake, total = loss.d_fake(out_fake)
        scale_d(total).backward()
        skipped_d = self._scaled_step(self.scalerD, self.optD)
        loss.d_step_done(out_real, out_fake)

        # ---- G phase: the same fake batch through the updated D ------------- #
        self.optG.zero_grad(set_to_none=True)
        with self._unreduced(self.D):  # DDP: D's gradients from G's loss are discarded, so never reduced
            with self._autocast():
                out_gen = self.D(self.augment(fake)).float()
                loss_g, total = loss.g(out_gen)
            scale_g(total).backward()
        skipped_g = self._scaled_step(self.scalerG, self.optG)
        loss.g_step_done()
        if self.netG_ema is not None:
            self.update_ema()
        if self.augment.ada is not None:  # after the step, so all of its D and G calls used one p
            self.augment.ada.observe(out_real.detach())

        # sigmoid(logit) is the classic D(x); for hinge it is a monitor of the same logits
        return {
            "loss_D": (loss_real + loss_fake).detach(),
            "loss_G": loss_g.detach(),
            "D_x": torch.sigmoid(out_real.detach()).mean(),
            "D_G_z1": torch.sigmoid(out_fake.detach()).mean(),
            "D_G_z2": torch.sigmoid(out_gen.detach()).mean(),
            **({} if self.augment.ada is None else {"aug_p": self.augment.p}),
            **({} if skipped_d is None else {"skipped_d": skipped_d, "skipped_g": skipped_g}),  # fp16
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
            "ada": self.augment.state_dict(),
            "loss": self.loss.state_dict(),
            # fp16's loss scales and growth trackers (None otherwise; optional on load)
            "scalers": ({"D": self.scalerD.state_dict(), "G": self.scalerG.state_dict()}
                        if self.precision == "fp16" else None),
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
            self.loss.load_state_dict(state.get("loss", state), self.device)  # format 1: flat in this state
            self.augment.load_state_dict(state.get("ada"))  # None (--ada typed on --resume): p starts at 0
            if self.precision == "fp16" and state.get("scalers"):  # else (bf16/fp32 before) they start afresh
                self.scalerD.load_state_dict(state["scalers"]["D"])
                self.scalerG.load_state_dict(state["scalers"]["G"])
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
