"""The measured rows of the speed bench and the GPU check, each run inside its
own fresh process by ``harness.isolated("benchmarks.rows:measure_ours", ...)``:
our training step, the classic DCGAN loop, the feeder and FID features; and
the Trainer built as train.py builds it (``make_trainer``: the same precision
rule). Imports torch: the processes that only plan and report never load it.

    row = isolated("benchmarks.rows:measure_ours", npy="data/celeba_64.npy", size=64, device="cuda",
                   batch_size=128, steps=50, warmup=3, precision="auto", compile=True, channels_last="auto",
                   small=False, profile=False)
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torchvision.datasets as dset
import torchvision.transforms as T
from torch import nn, profiler

import dataloader
import utils
from benchmarks.harness import default_compile_backend, unavailable
from metrics import features, inception
from network import DEFAULT_CONFIG, SIZES, build_discriminator, build_generator
from training import trainer as trainer_module
from training.config import recipe_options
from training.device import default_channels_last, device_capability, resolve_precision
from training.training_loop import DEFAULTS

__all__ = ["SIZES", "make_trainer", "measure_classic", "measure_evaluate", "measure_feeder",
           "measure_ours", "random_fid_weights", "row_channels_last", "row_precision"]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def maybe_profile(enabled: bool, label: str):
    if not enabled:
        yield
        return
    activities = [profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(profiler.ProfilerActivity.CUDA)
    with profiler.profile(activities=activities) as prof:
        yield
    key = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    print(f"\n--- profile: {label} (sorted by {key}) ---")
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def endless(feeder):
    """The feeder's batches, epoch after epoch, for as many steps as a row times."""
    epoch = 0
    while True:
        yield from feeder.epoch(epoch)
        epoch += 1


# --------------------------------------------------------------------------- #
# Our training path, as train.py sets it up
# --------------------------------------------------------------------------- #
def net_config(size: int, small: bool) -> dict:
    width = 8 if small else 64
    return {**DEFAULT_CONFIG, "size": size, "ngf": width, "ndf": width}


def row_precision(requested: str, device) -> tuple[str, str]:
    """``--precision`` (auto, fp32, bf16, fp16) on ``device`` -> (precision, why),
    by train.py's rule: bf16 on CUDA with native bf16, fp16 on older CUDA GPUs, fp32 elsewhere."""
    device = torch.device(device)
    return resolve_precision(requested, device.type, *device_capability(device))


def row_channels_last(option: str, device) -> bool:
    """``--channels-last`` auto / on / off -> the memory format train.py would use."""
    return {"auto": default_channels_last(device), "on": True, "off": False}[option]


def make_trainer(config: dict, device, precision: str = "auto", compile: bool = False, channels_last: bool = True,
                 steps_per_epoch: int | None = None):
    """The Trainer as train.py builds it: ``precision`` resolved by train.py's rule
    (``row_precision``); ``steps_per_epoch``: the feeder's batches (top-k's schedule)."""
    precision, _ = row_precision(precision, device)
    return trainer_module.Trainer(config, device, precision=precision, compile=compile, channels_last=channels_last,
                                  steps_per_epoch=steps_per_epoch)


# --------------------------------------------------------------------------- #
# The rows (each runs inside its own process)
# --------------------------------------------------------------------------- #
def measure_classic(image_root: str, size: int, device: str, batch_size: int, steps: int, warmup: int,
                    workers: int, small: bool, profile: bool) -> dict:
    """The tutorial-style loop: ImageFolder + Resize/CenterCrop, DataLoader
    workers, fp32, Sigmoid + BCELoss, .item() every step."""
    device = utils.resolve_device(device)
    config = net_config(size, small)
    dataset = dset.ImageFolder(
        root=image_root,
        transform=T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                             T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    netG = build_generator(config).to(device)
    netD = nn.Sequential(build_discriminator(config), nn.Sigmoid()).to(device)  # the tutorial's D ends in Sigmoid
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    history = []

    def step(real_cpu):
        real = real_cpu.to(device)
        b = real.size(0)
        # D: real batch labelled 1, then G's batch (detached) labelled 0, one Adam step
        netD.zero_grad()
        target = torch.full((b,), 1.0, device=device)
        out = netD(real).view(-1)
        loss_real = criterion(out, target)
        loss_real.backward()
        d_x = out.mean().item()
        z = torch.randn(b, config["nz"], 1, 1, device=device)
        fake = netG(z)
        target.fill_(0.0)
        out = netD(fake.detach()).view(-1)
        loss_fake = criterion(out, target)
        loss_fake.backward()
        d_g_z1 = out.mean().item()
        optD.step()
        # G: the same fake batch labelled 1 (non-saturating), one Adam step
        netG.zero_grad()
        target.fill_(1.0)
        out = netD(fake).view(-1)
        loss_g = criterion(out, target)
        loss_g.backward()
        d_g_z2 = out.mean().item()
        optG.step()
        history.append(((loss_real + loss_fake).item(), loss_g.item(), d_x, d_g_z1, d_g_z2))
        return b

    def batches():
        while True:  # a new epoch re-creates the iterator (and its workers), as the tutorial's loop does
            for images, _ in loader:
                yield images

    stream = batches()
    for _ in range(warmup):
        step(next(stream))
    sync(device)
    count = 0
    with maybe_profile(profile, f"classic {size} px"):
        start = time.perf_counter()
        for _ in range(steps):
            count += step(next(stream))
        sync(device)
        seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": count / seconds, "seconds": seconds, "images": count,
            "loss_g_last": history[-1][1]}


def measure_ours(npy: str, size: int, device: str, batch_size: int, steps: int, warmup: int,
                 precision: str, compile: bool, channels_last: str, small: bool, profile: bool,
                 recipe: str = "classic", compile_backend: str | None = None) -> dict:
    """training.trainer.Trainer's real step fed by dataloader.DeviceFeeder,
    with train.py's --recipe options; warmup_s includes torch.compile's work."""
    device = utils.resolve_device(device)
    config = {**DEFAULTS, **recipe_options(recipe), **net_config(size, small), "batch_size": batch_size}
    channels_last = row_channels_last(channels_last, device)
    feeder = dataloader.DeviceFeeder(npy, batch_size=batch_size, device=device, seed=0,
                                     channels_last=channels_last)
    if len(feeder) < 1:
        return unavailable(f"{feeder.num_images} images are fewer than one batch of {batch_size}")
    with default_compile_backend(compile_backend):
        trainer = make_trainer(config, device, precision, compile, channels_last, steps_per_epoch=len(feeder))

    stream = endless(feeder)
    out = None
    start = time.perf_counter()
    for _ in range(warmup):
        out = trainer.step(next(stream))
    sync(device)
    warmup_s = time.perf_counter() - start
    count = 0
    with maybe_profile(profile, f"ours {size} px"):
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(stream)
            out = trainer.step(batch)
            count += batch.shape[0]
        loss_g = float(out["loss_G"])  # one host read at the end (also a device sync)
        sync(device)
        seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": count / seconds, "seconds": seconds, "images": count, "warmup_s": warmup_s,
            "precision": trainer.precision, "compile": compile, "recipe": recipe, "channels_last": channels_last,
            "loss_g_last": loss_g}


def measure_feeder(npy: str, device: str, batch_size: int, batches: int, channels_last: str = "auto") -> dict:
    """DeviceFeeder batches in the memory format the training rows use."""
    device = utils.resolve_device(device)
    channels_last = row_channels_last(channels_last, device)
    start_setup = time.perf_counter()
    feeder = dataloader.DeviceFeeder(npy, batch_size=batch_size, device=device, seed=0, flip=True,
                                     channels_last=channels_last)
    setup = time.perf_counter() - start_setup
    if len(feeder) < 1:
        return unavailable(f"{feeder.num_images} images are fewer than one batch of {batch_size}")

    it = endless(feeder)
    next(it)  # warm-up
    sync(device)
    start = time.perf_counter()
    last = None
    for _ in range(batches):
        last = next(it)
    sync(device)
    seconds = time.perf_counter() - start
    return {"status": "ok", "batches_s": batches / seconds, "img_s": batches * batch_size / seconds,
            "setup_s": setup, "batch_shape": list(last.shape), "dtype": str(last.dtype),
            "channels_last": channels_last}


def random_fid_weights(path: Path) -> None:
    """A randomly initialised FID Inception state_dict (for timing only: speed
    does not depend on the weight values), built by pytorch-fid's own code
    with its download replaced by nothing."""
    from pytorch_fid import inception as fid_inception  # an optional dependency (pip install pytorch-fid)

    with mock.patch.object(fid_inception, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", return_value=None):
        net = fid_inception.fid_inception_v3()
    utils.torch_save(net.state_dict(), path)


def measure_evaluate(npy: str, device: str, n: int, batch_size: int, tmp: str) -> dict:
    """evaluate.py's feature extraction alone: load_inception once, warm up,
    then time array_features (uint8 -> device -> 299 px Inception pool3)."""
    device = utils.resolve_device(device)
    hub = inception.hub_weights_path()
    if hub.is_file():
        weights, kind = hub, "FID Inception (hub cache)"
    else:
        weights, kind = Path(tmp) / "random_inception.pth", "random init (FID weights offline; speed only)"
        if not weights.is_file():
            random_fid_weights(weights)
    model = inception.load_inception(device, weights_path=weights)
    images = np.load(npy, mmap_mode="r")
    n = min(n, len(images))
    batch_size = min(batch_size, n)
    features.array_features(model, images[:batch_size], device, batch_size=batch_size, desc="warm-up")
    sync(device)
    start = time.perf_counter()
    feats = features.array_features(model, images[:n], device, batch_size=batch_size, desc="timed")
    sync(device)
    seconds = time.perf_counter() - start
    return {"status": "ok", "img_s": n / seconds, "seconds": seconds, "images": n, "batch": batch_size,
            "weights": kind, "features": list(feats.shape)}


