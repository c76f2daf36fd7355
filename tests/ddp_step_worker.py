"""Run by tests/test_robustness.py under torchrun (2 Gloo processes): the DDP
step of training.trainer.Trainer against the plain DDP step (DDP's defaults
around the classic step: D's gradients reduced on all three backwards,
buffers broadcast on every forward), on the same weights, batches and noise. Each rank saves its
parameters, rank 0's buffers, and how many times D's gradients were reduced."""
import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_trainer  # noqa: E402
from test_recipes import classic_step  # noqa: E402

CONFIG = {"ngf": 8, "ndf": 8, "nz": 16}
STEPS = 3


def counting_hook(counter: list):
    def hook(state, bucket):
        counter.append(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    return hook


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    trainer = make_trainer(CONFIG, "cpu", world_size=2, rank=rank)
    torch.manual_seed(0)
    plain = make_trainer(CONFIG, "cpu")
    plain.G, plain.D = DDP(plain.netG), DDP(plain.netD)  # DDP's defaults
    reduced = {"trainer": [], "plain": []}
    trainer.D.register_comm_hook(None, counting_hook(reduced["trainer"]))
    plain.D.register_comm_hook(None, counting_hook(reduced["plain"]))
    for k in range(STEPS):
        real = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(100 * k + rank)) * 2 - 1
        torch.manual_seed(10 * k + rank)
        trainer.step(real)
        torch.manual_seed(10 * k + rank)
        classic_step(plain, real)
    torch.save({
        "reduced": reduced,
        "trainer": {"G": trainer.netG.state_dict(), "D": trainer.netD.state_dict()},
        "plain": {"G": plain.netG.state_dict(), "D": plain.netD.state_dict()},
    }, Path(out) / f"rank{rank}.pt")
    del trainer, plain  # free DDP before its process group (freed at exit, after it, it may abort)
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
