"""Shared test setup: the repo root on sys.path, a quiet matplotlib backend,
and a path to the optional real data in ../shared (skipped when absent)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")
SHARED = ROOT.parent / "shared" / "data"


def shared_images(name: str) -> Path:
    """``../shared/data/<name>/img_align_celeba`` beside the checkout, or skip."""
    path = SHARED / name / "img_align_celeba"
    if not path.is_dir():
        pytest.skip(f"needs ../shared/data/{name} (not part of a user's clone)")
    return path


@pytest.fixture
def celeba_sample():
    """The real CelebA sample (178x218, 200 people)."""
    return shared_images("celeba_sample")


@pytest.fixture
def celeba_half():
    """The half-size CelebA faces with their attribute labels."""
    return shared_images("celeba_half")


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny nets: on 2 shared cores, OpenMP
    threads spinning against other jobs make tiny convs several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun(script, *args, cwd):
    """``torchrun --standalone --nproc_per_node 2 script args`` (Gloo on CPU), finished."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def make_trainer(config: dict, *args, **kwargs):
    """A Trainer from a partial config: training_loop's defaults (the classic recipe) plus ``config``."""
    from training.trainer import Trainer
    from training.training_loop import DEFAULTS

    return Trainer({**DEFAULTS, **config}, *args, **kwargs)
