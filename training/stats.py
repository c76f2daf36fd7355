"""What a run reports: the metrics read one log interval late, metrics.jsonl,
the loss plot, the fixed-noise sample grids and progress.gif made of them,
and, when asked, the same rows and grids as TensorBoard events.

    metrics = Metrics(device, world_size, batch_size=128)
    metrics.add(trainer.step(real))           # every step: device tensors, no host sync
    rows = metrics.log({"step": 50, "epoch": 0.4}, close=True, now=False)
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from torch import nn

import utils
from utils import UserError

METRIC_KEYS = ("loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2")
# fp16: D and G steps the loss scaler skipped (inf/NaN gradients); a row holds the interval's count, not a mean
SKIP_KEYS = ("skipped_d", "skipped_g")


class Metrics:
    """The step's losses summed on the device, read one log interval late, and
    the images per second of the training steps alone.

    ``close`` ends an interval: its means are all-reduced across ranks and
    copied to pinned host memory without blocking, an event behind the copy.
    Closed intervals are read on the next plain log step, when the copy has
    long finished, so logging never stalls the GPU. Steps that read the device
    anyway (save, samples, FID) read at once, so the NaN check comes before
    every save. ``pause`` / ``resume`` bracket the maintenance work (samples,
    FID, checkpoints) so img/s times the training steps only. Keys in
    SKIP_KEYS are counted: the row holds their sum over the interval."""

    def __init__(self, device: torch.device, world_size: int, batch_size: int, keys: tuple[str, ...] = METRIC_KEYS):
        self.device, self.world_size, self.batch_size, self.keys = device, world_size, batch_size, keys
        self.sums = torch.zeros(len(keys), device=device)
        self.counted = torch.tensor([k in SKIP_KEYS for k in keys], device=device)  # (K,) sum, not mean
        self.steps = 0
        self.seconds, self.started = 0.0, perf_counter()  # training time in this interval
        self.pending: list[tuple[dict, float, torch.Tensor, object]] = []  # (step/epoch, img/s, host means, event)

    def add(self, out: dict) -> None:
        self.sums += torch.stack([out[k] for k in self.keys]).float()
        self.steps += 1

    def pause(self, sync: bool) -> None:
        """Stop the training clock; ``sync``: first wait for the queued steps (on a
        GPU), because the maintenance that follows would wait for them anyway."""
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += perf_counter() - self.started

    def resume(self) -> None:
        self.started = perf_counter()

    def log(self, head: dict, close: bool, now: bool) -> list[dict]:
        """``close``: end this interval (its numbers start their way to the host).
        -> the rows whose numbers are there: every closed one when ``now``, else
        the ones closed before this call."""
        rows = [] if now else self.read()
        if close:
            self.close(head)
        return self.read() if now else rows

    def close(self, head: dict) -> None:
        if self.steps == 0:
            return
        img_per_s = self.steps * self.batch_size / max(self.seconds, 1e-9)
        means = torch.where(self.counted, self.sums, self.sums / self.steps)
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
        self.steps, self.seconds = 0, 0.0

    def read(self) -> list[dict]:
        rows = []
        for head, img_per_s, host, event in self.pending:
            if event is not None:
                event.synchronize()
            values = {k: round(v) if k in SKIP_KEYS else v for k, v in zip(self.keys, host.tolist())}
            rows.append({**head, **values, "img_per_s": img_per_s})
        self.pending.clear()
        return rows


def check_finite(row: dict, out: Path) -> None:
    """A NaN/inf loss stops the run before anything is saved. Under fp16 an
    inf/NaN in the (scaled) gradients is expected now and then: the scaler
    skips that step and lowers its scale (``skipped_d`` / ``skipped_g``), the
    losses stay finite and the run goes on; a non-finite loss comes from the
    forward pass, which no loss scale mends, so it still stops the run."""
    values = [row[k] for k in METRIC_KEYS]
    if not all(math.isfinite(v) for v in values):
        raise UserError(
            f"the loss became NaN/inf by step {row['step']} (loss_D {values[0]:.4g}, loss_G {values[1]:.4g}); "
            f"stopped without saving these weights, the last good checkpoint in {out} is kept. "
            f"Try a lower --lr (e.g. 1e-4), --precision fp32, a smaller --batch-size, "
            f"or --resume from that checkpoint"
        )


def progress_postfix(row: dict) -> dict:
    """The numbers the progress bar shows after a log row."""
    postfix = {"D": f"{row['loss_D']:.3f}", "G": f"{row['loss_G']:.3f}", "img_s": f"{row['img_per_s']:.0f}"}
    if "aug_p" in row:
        postfix["p"] = f"{row['aug_p']:.2f}"
    if "skipped_d" in row:  # fp16: steps the loss scaler skipped in this interval, D/G
        postfix["skip"] = f"{row['skipped_d']}/{row['skipped_g']}"
    return postfix


class History:
    """metrics.jsonl: one JSON row per log interval (and per FID), appended as
    it comes; on rank 0 only (elsewhere it keeps nothing)."""

    def __init__(self, path: Path, lead: bool):
        self.path, self.lead = path, lead
        self.rows: list[dict] = []

    def resume(self, step: int) -> None:
        """Keep the rows up to the checkpoint's ``step``; drop what was logged after it."""
        if not (self.lead and self.path.exists()):
            return
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                self.rows.append(row)
        with utils.atomic_path(self.path) as tmp:
            Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict) -> None:
        if self.lead:
            self.rows.append(row)
            utils.append_jsonl(row, self.path)


# the TensorBoard section of each metrics.jsonl key: loss.png's two panels, speed, quality
TENSORBOARD_GROUPS = {"loss_D": "loss", "loss_G": "loss", "D_x": "D", "D_G_z1": "D", "D_G_z2": "D", "aug_p": "D",
                      "img_per_s": "speed", "fid": "quality", "skipped_d": "fp16", "skipped_g": "fp16"}


class TensorBoard:
    """The metrics rows (as scalars, tagged ``group/key``) and the sample grids
    (as the image "samples") in TensorBoard event files in ``folder``, so
    ``tensorboard --logdir runs`` shows every run by its folder name;
    metrics.jsonl stays the record. ``folder`` None: does nothing. The package
    is checked here (a one-line UserError without it); the writer opens at the
    first row on rank 0 (``lead``), so nothing is written before that, and a
    resumed run (``purge_after``: the checkpoint's step) makes TensorBoard drop
    the events an earlier try logged after that step. Closed on leaving ``with``."""

    def __init__(self, folder: Path | None, lead: bool, purge_after: int | None = None):
        self.folder = folder if lead else None
        self.purge_step = None if purge_after is None else purge_after + 1
        self.writer = None
        if folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package, which is not installed: "
                                "pip install tensorboard") from None
            self.summary_writer = SummaryWriter

    def open(self):
        if self.writer is None and self.folder is not None:
            self.writer = self.summary_writer(str(self.folder), purge_step=self.purge_step)
        return self.writer

    def add_row(self, row: dict) -> None:
        if self.open():
            for key, group in TENSORBOARD_GROUPS.items():
                if key in row:
                    self.writer.add_scalar(f"{group}/{key}", row[key], row["step"])

    def add_grid(self, step: int, path: Path) -> None:
        """The sample grid PNG at ``path``, as written."""
        if self.open():
            from PIL import Image

            with Image.open(path) as image:
                self.writer.add_image("samples", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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


def progress_gif(samples: Path, path: Path, ema: bool, max_frames: int = 100) -> int:
    """Write ``path``, a looping GIF with one frame per fixed-noise grid in
    ``samples`` (step_NNNNNN.png, or step_NNNNNN_ema.png when ``ema``) in step
    order: the faces appearing over training. Rewritten whole (atomically) at
    every sample step; past ``max_frames`` grids, that many evenly spaced ones,
    the first and the newest included, so a long run's GIF stays small. -> frames."""
    from PIL import Image

    pattern = re.compile(r"step_(\d+)" + ("_ema" if ema else "") + r"\.png")
    grids = sorted((int(m.group(1)), p) for p in samples.glob("step_*.png") if (m := pattern.fullmatch(p.name)))
    if not grids:
        return 0
    if len(grids) > max_frames:
        grids = [grids[round(i * (len(grids) - 1) / (max_frames - 1))] for i in range(max_frames)]
    frames = []
    for _, grid in grids:
        with Image.open(grid) as image:
            frames.append(np.asarray(image.convert("RGB")))
    utils.save_gif(frames, path, duration_ms=250, last_ms=2000)
    return len(frames)
