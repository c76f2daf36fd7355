"""The training loop: one function, read top to bottom.

    from training.training_loop import training_loop
    training_loop(data="data/celeba_64.npy", ngf=32, ndf=32, max_steps=2000, augment="color,translation",
                  ema=0.999, ema_bn_recompute=True, out="runs/try")

train.py turns the command line into these arguments; any Python caller can
pass them directly. Its signature is the one place the defaults are written
(``DEFAULTS``): the classic DCGAN recipe. The run folder (``out``) gets
config.json, checkpoint.pt, metrics.jsonl, loss.png, reals.png,
samples/step_NNNNNN.png, progress.gif (those grids, animated) and, with
``tensorboard``, TensorBoard event files of the metrics and grids; ``params``
is the small export generator.py and evaluate.py read. Returns 0, or 130 /
143 when SIGINT / SIGTERM stopped it (after saving).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import dataloader
import utils
from metrics import features, inception
from network import save_generator_params
from training import checkpoint, distributed, stats
from training.device import default_channels_last, device_capability, resolve_precision
from training.trainer import Trainer
from utils import UserError

DEFAULT_EPOCHS = 5  # when neither epochs nor max_steps is given
MIN_BN_BATCH = 32  # per-process batch below which per-rank BatchNorm statistics get noisy


def training_loop(
    # ---- data and networks
    data=None,                      # uint8 image array from preprocess.py (None: data/celeba_{size}.npy)
    size=64,                        # image size in pixels (64 or 128)
    nz=100,                         # latent size
    ngf=64,                         # generator width (32 trains ~4x faster on CPU)
    ndf=64,                         # discriminator width
    nc=3,                           # image channels
    # ---- how long: totals across resumes
    epochs=None,                    # epochs (None: max_steps alone decides, or DEFAULT_EPOCHS without it)
    max_steps=None,                 # steps; with epochs too, the smaller wins
    # ---- optimisation
    batch_size=128,                 # GLOBAL batch (split across DDP ranks)
    lr=2e-4,                        # Adam learning rate of G and D
    lr_g=None,                      # G's rate (None: lr); TTUR: lr_d > lr_g
    lr_d=None,                      # D's rate (None: lr)
    beta1=0.5,                      # Adam beta1
    beta2=0.999,                    # Adam beta2
    # ---- the recipe: these defaults are the classic DCGAN
    recipe="classic",               # the name train.py --recipe filled the options below from (a record)
    loss="bce",                     # bce (non-saturating) or hinge
    sn=False,                       # spectral norm on D's convs, no BatchNorm in D
    augment="none",                 # DiffAugment policy on every image D sees, e.g. "color,translation"
    ada=0.0,                        # adaptive augmentation target for E[sign D(real)] (0: off)
    ada_kimg=10.0,                  # ADA: thousands of images for p to go from 0 to 1 at the fastest
    r1=0.0,                         # R1 penalty gamma (0: off)
    r1_every=16,                    # lazy R1: every k steps, scaled by k
    lecam=0.0,                      # LeCam regulariser weight (0: off)
    topk=0.0,                       # top-k: least share of fakes G learns from (0: off)
    ema=0.0,                        # EMA decay of G's weights (0: off)
    ema_bn_recompute=False,         # re-estimate the EMA's BatchNorm statistics before sampling and export
    flip=False,                     # random horizontal flips of the reals
    # ---- reproducibility and speed
    seed=0,                         # weights, noise and data order
    deterministic=False,            # deterministic kernels: a resumed GPU run then equals an uninterrupted one
    channels_last=None,             # memory format (None: on for CUDA and CPU)
    device="auto",                  # auto, cpu, cuda, cuda:N or mps
    precision="auto",               # auto (bf16 on Ampere+ CUDA, fp16 on older CUDA, fp32 elsewhere), fp32, bf16, fp16
    compile=False,                  # torch.compile G and D
    # ---- the run folder and what happens at intervals
    out=None,                       # run folder (None: runs/<size>px-<data>-<date-time>, or the newest on resume)
    params="generator.params",      # the generator export
    resume=False,                   # continue from out's checkpoint.pt
    log_every=50,                   # steps between metrics lines, NaN checks and (under torchrun) stop votes
    sample_every=500,               # steps between samples/step_NNNNNN.png grids
    checkpoint_every=1000,          # steps between checkpoint.pt + params saves (always at the end)
    num_samples=64,                 # images in each fixed-noise grid
    fid_every=0,                    # steps between FID evaluations (0: off)
    fid_n=5000,                     # generated images per FID
    tensorboard=False,              # also write the metrics rows and sample grids as TensorBoard events into out
) -> int:
    options = dict(locals())  # every argument, before any other name is bound

    # ---- Processes, device, the run's config ----------------------------- #
    if deterministic:  # before CUDA starts: cuBLAS reads it once, when it makes its handle
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic matmuls
    device = distributed.init(device)
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    lead, say = rank == 0, distributed.print0
    precision, precision_why = resolve_precision(precision, device.type, *device_capability(device))
    config = {k: v for k, v in options.items() if k not in RUN_KEYS}  # what checkpoints and exports keep
    config["data"] = data = data or f"data/celeba_{size}.npy"

    # ---- Inputs, checked before anything is written ---------------------- #
    ckpt_path = checkpoint.find(out) if resume else None
    state = checkpoint.load(ckpt_path) if resume else None
    images, config["data_fingerprint"] = open_data(Path(data), size, batch_size, world_size)
    if state is not None and state.get("data_fingerprint") not in (None, config["data_fingerprint"]):
        say(f"warning: {data} differs from the data this run started on; the data order will not "
            f"match the original run", file=sys.stderr)
    out = ckpt_path.parent if resume else Path(out) if out else default_out(size, data)
    params = Path(params)
    check_writable(out, "run folder")
    check_writable(params.parent if str(params.parent) else Path("."), "params folder")
    if not resume and (out / checkpoint.NAME).exists():
        raise UserError(f"{out} already holds a {checkpoint.NAME}; pass --resume to continue it, "
                        f"or choose another --out")
    board = stats.TensorBoard(out if tensorboard else None, lead, purge_after=state["step"] if state else None)

    # ---- FID reference (rank 0), before any DDP module exists ------------ #
    # the other ranks wait on a Gloo barrier with a long timeout, not inside NCCL collectives
    inception_net = real_stats = None
    if fid_every:
        if lead:  # no Inception weights offline is a UserError here, before any output
            inception_net = inception.load_inception(device)
            real_stats = features.real_statistics(data, device, model=inception_net)
        distributed.wait_for_rank0()

    # ---- Data feeder, networks, optimisers, loss; a resumed run's state -- #
    channels_last = default_channels_last(device) if channels_last is None else bool(channels_last)
    config["channels_last"] = channels_last  # resolved, so a resume keeps it
    feeder = dataloader.DeviceFeeder(images, batch_size=batch_size, device=device, seed=seed, flip=flip,
                                     channels_last=channels_last, rank=rank, world_size=world_size)
    per_epoch = len(feeder)  # also top-k's schedule
    checkpoint.seed_everything(seed + rank)  # weights init; DDP then copies rank 0's weights to all ranks
    trainer = Trainer(config, device, precision=precision, compile=compile, channels_last=channels_last,
                      world_size=world_size, rank=rank, steps_per_epoch=per_epoch)
    step = epoch = batch_in_epoch = 0
    best_fid = scaler_note = None
    if state is not None:
        trainer.load_state_dict(state["trainer"], source=str(ckpt_path))
        scaler_note = precision_change_note(state["trainer"], precision)
        step, epoch, batch_in_epoch, best_fid = state["step"], state["epoch"], state["batch_in_epoch"], \
            state.get("best_fid")
        batch_in_epoch = batch_in_epoch * state["config"]["batch_size"] // batch_size  # same place, in images
        fixed_noise = state["fixed_noise"]
        if world_size == 1:
            checkpoint.set_rng_state(state["rng"], device)
        else:  # each rank draws its own noise; exact resume is a single-process promise
            checkpoint.seed_everything(seed + 1_000_003 * rank + step)
        del state
    else:
        fixed_noise = torch.randn(num_samples, nz, 1, 1, generator=torch.Generator().manual_seed(seed))
    total, length_note = total_steps(epochs, max_steps, per_epoch)

    # ---- The run folder --------------------------------------------------- #
    run_config = {**config, "out": str(out), "params": str(params), "device": str(device), "precision": precision,
                  "compile": compile, "world_size": world_size, "steps_per_epoch": per_epoch, "total_steps": total,
                  "log_every": log_every, "sample_every": sample_every, "checkpoint_every": checkpoint_every,
                  "fid_every": fid_every, "fid_n": fid_n, "tensorboard": tensorboard,
                  "num_images": int(images.shape[0])}
    say(("resuming" if resume else "training") + " with " + json.dumps(run_config, indent=2))
    say(f"precision {precision} ({precision_why})")
    for note in (length_note, small_batch_warning(batch_size, world_size), scaler_note):
        if note:
            say(note, file=sys.stderr)
    history = stats.History(out / "metrics.jsonl", lead)
    if lead:
        utils.save_json(run_config, out / "config.json")
        if resume:
            history.resume(step)  # drop metrics lines logged after the checkpoint
        else:
            utils.save_grid(np.asarray(images[:num_samples]), out / "reals.png")
    metric_keys = stats.METRIC_KEYS + (() if trainer.augment.ada is None else ("aug_p",)) \
        + (stats.SKIP_KEYS if precision == "fp16" else ())
    metrics = stats.Metrics(device, world_size, batch_size, metric_keys)

    def export(path: Path) -> None:
        ema_net = trainer.sampling_ema()  # the EMA, or its BN-recomputed copy
        save_generator_params(path, {**config, "step": step}, trainer.netG.state_dict(),
                              None if ema_net is None else ema_net.state_dict())

    # ---- Train ------------------------------------------------------------ #
    from tqdm import tqdm

    postfix, stop = {}, None
    metrics.resume()  # the training clock starts
    with distributed.StopFlag() as flag, deterministic_kernels(deterministic), board:  # board: closed on any exit
        while step < total and stop is None:
            bar = tqdm(total=per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{-(-total // per_epoch)}",
                       disable=not lead, dynamic_ncols=True, leave=True)
            steps_before = step
            for real in feeder.epoch(epoch, start_batch=batch_in_epoch):
                metrics.add(trainer.step(real))
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                if batch_in_epoch == per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                bar.update(1)

                # ---- Maintenance, in this order: stop vote, log line, samples, FID, checkpoint
                done = step >= total
                if world_size == 1 or step % log_every == 0 or done:  # every rank votes at the same steps
                    stop = distributed.should_stop(flag.signum)
                last = done or stop is not None
                save = step % checkpoint_every == 0 or last
                sample = step % sample_every == 0 or last
                fid = fid_every and (step % fid_every == 0 or last)
                close = step % log_every == 0 or save
                if not (close or sample or fid):
                    continue
                metrics.pause(sync=bool(save or sample or fid))
                head = {"step": step, "epoch": round(epoch + batch_in_epoch / per_epoch, 4)}
                for row in metrics.log(head, close=close, now=bool(save or sample or fid)):
                    stats.check_finite(row, out)
                    postfix.update(stats.progress_postfix(row))
                    history.append(row)
                    board.add_row(row)
                if sample and lead:
                    grid = out / "samples" / f"step_{step:06d}.png"
                    stats.sample_grid(trainer.netG, fixed_noise, grid)
                    if trainer.netG_ema is not None:
                        grid = grid.with_name(f"step_{step:06d}_ema.png")
                        stats.sample_grid(trainer.sampling_ema(), fixed_noise, grid)
                    stats.progress_gif(out / "samples", out / "progress.gif", ema=trainer.netG_ema is not None)
                    board.add_grid(step, grid)  # the EMA's grid when there is one
                if fid:
                    if lead:  # of the EMA (else raw) generator; generator_best.params keeps the best
                        net = trainer.sampling_generator()
                        was_training = net.training
                        fid_start = time.perf_counter()
                        value = float(features.generator_fid(net.eval(), nz, real_stats, fid_n, device, seed=seed,
                                                             model=inception_net))
                        fid_seconds = time.perf_counter() - fid_start  # the sample, feature and distance time
                        net.train(was_training)
                        row = {**head, "fid": value, "fid_n": fid_n, "fid_seed": seed, "fid_s": round(fid_seconds, 3),
                               "fid_model": "raw" if trainer.netG_ema is None else "ema",
                               "fid_weights": inception_net.weights_label}
                        history.append(row)
                        board.add_row(row)
                        postfix["fid"] = f"{value:.2f}"
                        if best_fid is None or value < best_fid:
                            best_fid = value
                            export(params.with_name("generator_best.params"))
                    best_fid = distributed.broadcast_object(best_fid)
                if save and lead:
                    checkpoint.save({
                        "config": config, "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                        "trainer": trainer.state_dict(), "fixed_noise": fixed_noise,
                        "rng": checkpoint.rng_state(device), "best_fid": best_fid,
                        "data_fingerprint": config["data_fingerprint"]}, out / checkpoint.NAME)
                    export(params)
                    stats.plot_losses(history.rows, out / "loss.png")
                    board.flush()
                bar.set_postfix(postfix, refresh=False)
                metrics.resume()  # img/s times the training steps only
                if last:
                    break
            bar.close()
            if step == steps_before:
                raise RuntimeError(f"the data feeder yielded no batch for epoch {epoch}")

    # ---- Done --------------------------------------------------------------- #
    if stop is not None:
        say(f"{signal.Signals(stop).name} at step {step}: checkpoint saved to {out / checkpoint.NAME} and generator "
            f"to {params}; continue with: python train.py --resume --out {out} (the continued run equals "
            f"an uninterrupted one bit for bit on CPU; on a GPU only with --deterministic)", file=sys.stderr)
        return distributed.SIGNAL_EXIT.get(stop, 1)
    say(f"done: {step} steps; generator -> {params}, checkpoint and samples -> {out}")
    return 0


DEFAULTS = {name: p.default for name, p in inspect.signature(training_loop).parameters.items()}
# What kind of option each one is, where it is more than a setting kept in the run's config:
#   run     belongs to one invocation: not kept in checkpoints, so not restored on --resume
#   recipe  set by train.py --recipe unless typed
#   arch    fixes the networks' shapes: --resume refuses a change
OPTION_KINDS = {
    "size": "arch", "nz": "arch", "ngf": "arch", "ndf": "arch", "nc": "arch",
    "lr_g": "recipe", "lr_d": "recipe", "loss": "recipe",
    "sn": "recipe arch",  # no BatchNorm in D: it changes D's layers
    "augment": "recipe", "r1": "recipe", "lecam": "recipe", "topk": "recipe", "ema": "recipe",
    "ema_bn_recompute": "recipe",
    "device": "run", "precision": "run", "compile": "run", "out": "run", "params": "run", "resume": "run",
    "log_every": "run", "sample_every": "run", "checkpoint_every": "run", "num_samples": "run",
    "fid_every": "run", "fid_n": "run", "tensorboard": "run",
}
RUN_KEYS, RECIPE_KEYS, ARCH_KEYS = (tuple(k for k, kinds in OPTION_KINDS.items() if kind in kinds.split())
                                    for kind in ("run", "recipe", "arch"))


# --------------------------------------------------------------------------- #
# Setup helpers
# --------------------------------------------------------------------------- #
def open_data(path: Path, size: int, batch_size: int, world_size: int) -> tuple[np.ndarray, str]:
    """-> (the image array, its fingerprint), or a one-line UserError."""
    if not path.is_file():
        raise UserError(f"data file not found: {path} (make it with: python preprocess.py --sizes {size})")
    if path.stat().st_size == 0:
        raise UserError(f"data file {path} is empty (0 bytes); run preprocess.py again")
    images = dataloader.load_images(path, size=size)
    if batch_size > images.shape[0]:
        raise UserError(f"--batch-size {batch_size} is larger than the data set ({images.shape[0]} images in {path})")
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
    return images, dataloader.data_fingerprint(path)


def precision_change_note(trainer_state: dict, precision: str) -> str | None:
    """A resume across fp16 and bf16/fp32 (precision is chosen per invocation):
    what happens to fp16's loss scales."""
    saved = trainer_state.get("scalers")
    if saved and precision != "fp16":
        return (f"note: the checkpoint's fp16 loss scales (D {saved['D']['scale']:g}, G {saved['G']['scale']:g}) "
                f"are not used under --precision {precision}")
    if not saved and precision == "fp16":
        return "note: the checkpoint has no fp16 loss scales (it trained in bf16 or fp32): they start at 65536"
    return None


def default_out(size: int, data: str) -> Path:
    """runs/<size>px-<data name>-<date-time>, the same on every rank."""
    stamp = distributed.broadcast_object(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return Path("runs") / f"{size}px-{Path(data).stem.rsplit('_', 1)[0]}-{stamp}"


def check_writable(folder: Path, what: str) -> None:
    """Fail before any work if ``folder`` cannot be created or written."""
    probe = folder
    while not probe.exists():  # nearest existing ancestor
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot create {what} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {folder}: {probe} is not writable")


def total_steps(epochs: int | None, max_steps: int | None, per_epoch: int) -> tuple[int, str | None]:
    """-> (steps to train in total, across resumes; a note when epochs and
    max_steps both bound it). max_steps alone decides; neither: DEFAULT_EPOCHS."""
    if epochs is None:
        return (max_steps, None) if max_steps else (DEFAULT_EPOCHS * per_epoch, None)
    if max_steps is None or max_steps == epochs * per_epoch:
        return epochs * per_epoch, None
    total = min(epochs * per_epoch, max_steps)
    return total, (f"--epochs {epochs} ({epochs * per_epoch} steps of {per_epoch}) and --max-steps {max_steps} "
                   f"both given: training stops at step {total}, the smaller")


def small_batch_warning(batch_size: int, world_size: int) -> str | None:
    """Each process's BatchNorm normalises its own share of the batch; below
    MIN_BN_BATCH images those statistics are noisy (the classic DCGAN used 128)."""
    local = batch_size // world_size
    if world_size == 1 or local >= MIN_BN_BATCH:
        return None
    return (f"warning: {local} images per process ({batch_size} over {world_size}) for BatchNorm statistics, "
            f"which each process takes from its own share; use --batch-size {MIN_BN_BATCH * world_size} or more")


@contextlib.contextmanager
def deterministic_kernels(enabled: bool):
    """deterministic=True: deterministic algorithms (warn where an op has none),
    cuDNN benchmark off; the previous settings come back afterwards.
    CUBLAS_WORKSPACE_CONFIG is set before this, ahead of CUDA's start."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.benchmark, cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]
