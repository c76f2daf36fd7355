"""Run by tests/test_robustness.py under torchrun (2 Gloo processes):
train.main with the stop vote counted; with a step number S, rank 1 alone
gets SIGTERM's flag after step S. Writes votes<rank>.json: the steps at
which this rank voted."""
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import train  # noqa: E402
from training import distributed  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def main(out: str, signal_after: str, argv: list) -> int:
    torch.set_num_threads(1)
    votes, steps = [], [0]
    vote, step = distributed.should_stop, Trainer.step

    def counted_vote(signum):
        votes.append(steps[0])
        return vote(signum)

    def counted_step(self, real):
        result = step(self, real)
        steps[0] += 1
        if signal_after != "none" and steps[0] == int(signal_after) and distributed.get_rank() == 1:
            signal.raise_signal(signal.SIGTERM)  # the StopFlag handler: finish the step, vote, save
        return result

    distributed.should_stop, Trainer.step = counted_vote, counted_step
    rank = int(__import__("os").environ["RANK"])
    try:
        return train.main(argv)
    finally:
        (Path(out) / f"votes{rank}.json").write_text(json.dumps(votes))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
