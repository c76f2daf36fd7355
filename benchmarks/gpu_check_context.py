"""What a stage function of the GPU check gets (``Stage``): its settings,
the first stage's results, the time it has left, ``save`` for figures that
outlive a kill, train.py and the other commands run as a user runs them, and
the recompiles and graph breaks TORCH_LOGS wrote into its log.

    st.save(steps=4); st.train(["--data", st.data(64), "--max-steps", 4]); st.log_counts()
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import utils
from benchmarks import harness
from benchmarks.gpu_check_registry import FIRST_STAGE, SIZES
from utils import UserError
from utils.paths import ROOT

LOG_COUNTS = {"recompiles": re.compile(r"\[__recompiles\] Recompiling function"),
              "graph_breaks": re.compile(r"\[__graph_breaks\] Graph break")}
ROW_MARK = "@@gpu_check row: "


class Stage:
    """What a stage function gets: its settings, the first stage's results,
    the time it has left, ``save`` for figures that outlive a kill, and
    train.py and the other commands run as a user runs them."""

    def __init__(self, name: str, out: Path, dry: bool, limit: float, images: str | None = None,
                 hub: str | None = None):
        self.name, self.out, self.dry = name, out, dry
        self.images, self.hub = images, hub or str(out / "no-hub")  # what the first stage reads
        self.deadline = time.monotonic() + limit
        self.s = SIZES["dry" if dry else "gpu"]
        self.device = "cpu" if dry else "cuda"
        self.backend = "aot_eager" if dry else None  # the dry run's torch.compile: no C++/Triton codegen
        self.figures: dict = {}
        setup = out / "stages" / f"{FIRST_STAGE}.json"
        self.setup = json.loads(setup.read_text()) if name != FIRST_STAGE and setup.is_file() else {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, **figures) -> None:
        self.figures.update(figures)
        utils.save_json({"status": "running", **self.figures}, self.out / "stages" / f"{self.name}.json")

    def data(self, size: int) -> str:
        if not self.setup.get(f"data_{size}"):
            raise UserError(f"the {FIRST_STAGE} stage made no data; see logs/{FIRST_STAGE}.log")
        return self.setup[f"data_{size}"]

    def run(self, argv: list, what: str) -> float:
        """A script of this project in a subprocess (output into this log); -> seconds. Fails on a non-zero exit."""
        start = time.monotonic()
        code = subprocess.run([sys.executable, *map(str, argv)], cwd=self.out, timeout=max(self.left() - 3, 1)).returncode
        if code != 0:
            raise UserError(f"{what} exited with {code}")
        return time.monotonic() - start

    def train_command(self) -> list:
        """train.py, or on the dry run train.py with torch.compile on its backend, for a train.py subprocess."""
        return (["-m", "benchmarks.gpu_check", "train", "--backend", self.backend, "--"] if self.backend
                else [ROOT / "train.py"])

    def train(self, argv: list) -> int:
        """train.py ARGV --device DEVICE in this process, as ``python train.py`` runs it
        (torch.compile on the dry run's backend) -> its exit code. In-process, as the
        stage process has torch loaded already: a subprocess per run would pay its imports again."""
        with harness.default_compile_backend(self.backend):
            return harness.run_script("train.py", [*map(str, argv), "--device", self.device])

    def mark_row(self, row: str) -> None:
        """Mark the log where ``row`` starts, for ``log_counts(after_mark=row)``."""
        print(ROW_MARK + row, file=sys.stderr, flush=True)

    def log_counts(self, after_mark: str | None = None) -> dict:
        """Recompiles and graph breaks TORCH_LOGS wrote into this stage's log (after a row mark)."""
        text = (self.out / "logs" / f"{self.name}.log").read_text(errors="replace")
        if after_mark is not None:
            text = text.rsplit(ROW_MARK + after_mark + "\n", 1)[-1]
        return {key: len(pattern.findall(text)) for key, pattern in LOG_COUNTS.items()}
