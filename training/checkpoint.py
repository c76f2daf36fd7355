"""The resume checkpoint: its format, the RNG states it carries, and finding a run.

A checkpoint (``RUN/checkpoint.pt``) holds the resolved config, the step,
epoch and position in the epoch, the Trainer's state (G, D, both Adam
optimisers, EMA, ADA, the Loss's state, fp16's two loss scalers), the fixed
sample noise, every RNG state and the best FID so far. It is written
atomically in format 2 and read with ``weights_only=True``; format 1 (the
Loss's state flat in the Trainer's) is read too. The loss scalers are an
optional entry (None outside fp16); a checkpoint without them resumes with
fresh scalers.

    state = load(Path("runs/64px-celeba-20260101-120000/checkpoint.pt"))
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

import utils
from utils import UserError

FORMAT = "dcgan-train-checkpoint/2"
READABLE = ("dcgan-train-checkpoint/1", FORMAT)  # 1: the Loss's state sat flat in the Trainer's
NAME = "checkpoint.pt"


def save(state: dict, path: Path) -> None:
    utils.torch_save({"format": FORMAT, **state}, path)


def load(path: Path) -> dict:
    blob = utils.torch_load(path, what="checkpoint")
    if not isinstance(blob, dict) or blob.get("format") not in READABLE:
        raise UserError(f"{path} is not a train.py checkpoint (a generator.params file cannot be resumed)")
    return blob


def newest_run(root: Path = Path("runs")) -> Path:
    """The run folder under ``root`` whose checkpoint was written last."""
    runs = sorted(root.glob(f"*/{NAME}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"--resume found no run with a {NAME} under {root}/; pass --out RUN_FOLDER")
    return runs[-1].parent


def find(out: str | None) -> Path:
    """--resume's checkpoint: in ``out``, else in the newest run."""
    folder = Path(out) if out else newest_run()
    path = folder / NAME
    if not path.is_file():
        raise UserError(f"--resume: no {NAME} in {folder} (run without --resume to start it)")
    return path


# --------------------------------------------------------------------------- #
# RNG state: torch, numpy, Python and CUDA, as plain tensors and numbers
# --------------------------------------------------------------------------- #
def rng_state(device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


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
