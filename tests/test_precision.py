"""--precision fp16 (autocast float16 with a loss scaler per optimiser) and
--precision auto's choice: every D and G term is scaled, a step with
inf/NaN gradients is skipped, counted and leaves the weights alone, the
scalers resume exactly, and a resume may switch between fp16 and bf16/fp32.
CPU (autocast fp16 and GradScaler("cpu") run there), tiny nets, seconds."""
import json
import re

import pytest
import torch

import train
import utils
from conftest import make_trainer
from training import augment, stats
from training.device import resolve_precision

TINY = ["--ngf", "8", "--ndf", "8", "--nz", "16", "--batch-size", "8", "--device", "cpu"]
TINY_CONFIG = {"ngf": 8, "ndf": 8, "nz": 16}
# every option that adds a D or G term: R1 (every step), LeCam, top-k, with ADA, SN and the EMA
EVERY_TERM = {**TINY_CONFIG, "augment": augment.DEFAULT_POLICY, "loss": "hinge", "sn": True, "r1": 1.0,
              "r1_every": 1, "ema": 0.9, "ada": 0.05, "ada_kimg": 0.01, "lecam": 0.3, "topk": 0.5}
ALL_OPTIONS = ["--augment", "--loss", "hinge", "--sn", "--r1", "1.0", "--r1-every", "3", "--ema", "0.9",
               "--ada", "0.05", "--ada-kimg", "0.05", "--lecam", "0.3", "--topk", "0.5"]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(tmp_path, n=32, size=64):
    import numpy as np

    path = tmp_path / f"faces_{size}.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def argv(tmp_path, data, *extra, out="run", params="generator.params"):
    return ["--data", str(data), *TINY, "--out", str(tmp_path / out), "--params", str(tmp_path / params), *extra]


def batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(8, 3, 64, 64, generator=gen) * 2 - 1 for _ in range(n)]


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class SmallScaler(torch.amp.GradScaler):
    """A scaler that starts at 2^20 (fp16 overflows, so the first steps are
    skipped) and grows every 3 clean steps: its state moves within a few steps."""

    def __init__(self, device, enabled=True):
        super().__init__(device, init_scale=2.0**20, growth_interval=3, enabled=enabled)


# --------------------------------------------------------------------------- #
# --precision auto
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("capability, name, expected", [
    ((7, 5), "Tesla T4", "fp16"), ((7, 0), "Tesla V100-SXM2-16GB", "fp16"), ((6, 1), "GeForce GTX 1080", "fp16"),
    ((8, 0), "NVIDIA A100-SXM4-40GB", "bf16"), ((8, 6), "NVIDIA GeForce RTX 3090", "bf16"),
    ((9, 0), "NVIDIA H100", "bf16"),
])
def test_auto_is_fp16_before_ampere_and_bf16_from_ampere(capability, name, expected):
    precision, why = resolve_precision("auto", "cuda", capability, name)
    assert precision == expected
    assert why.startswith(f"auto: {name}, compute capability {capability[0]}.{capability[1]}")
    assert ("no native bf16" in why) == (expected == "fp16")


def test_auto_is_fp32_off_cuda_and_a_typed_precision_wins():
    assert resolve_precision("auto", "cpu") == ("fp32", "auto: cpu")
    assert resolve_precision("auto", "mps") == ("fp32", "auto: mps")
    assert resolve_precision("fp16", "cpu") == ("fp16", "as typed")
    assert resolve_precision("fp32", "cuda", (7, 5), "Tesla T4") == ("fp32", "as typed")
    precision, why = resolve_precision("bf16", "cuda", (7, 5), "Tesla T4")  # allowed, with the reason it is slow
    assert precision == "bf16" and "no native bf16" in why and "--precision fp16" in why
    assert resolve_precision("bf16", "cuda", (8, 0), "A100") == ("bf16", "as typed")
    with pytest.raises(utils.UserError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", "cpu")


def test_the_start_line_says_the_precision_and_why(tmp_path, capsys):
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, "--max-steps", "1")) == 0
    assert "precision fp32 (auto: cpu)" in capsys.readouterr().out
    assert train.main(argv(tmp_path, data, "--max-steps", "1", "--precision", "fp16", out="b")) == 0
    assert "precision fp16 (as typed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "b/config.json").read_text())["precision"] == "fp16"


# --------------------------------------------------------------------------- #
# The fp16 step
# --------------------------------------------------------------------------- #
def test_fp16_runs_every_option_on_cpu_with_finite_losses():
    torch.manual_seed(0)
    trainer = make_trainer(EVERY_TERM, "cpu", precision="fp16", steps_per_epoch=1)
    for real in batches(4):
        out = trainer.step(real)
    assert all(torch.isfinite(v) for v in out.values())
    assert set(out) >= {"skipped_d", "skipped_g"} and out["skipped_g"].shape == ()
    assert all(p.dtype == torch.float32 for p in trainer.netD.parameters())  # fp32 master weights
    assert trainer.scalerD is not trainer.scalerG and trainer.scalerD.get_scale() <= 2.0**16


def test_fp16_scales_every_d_and_g_term():
    """With autocast off, scaling a loss by 2^16 and unscaling the gradients is
    exact, so a step through the scalers equals the fp32 step bit for bit only
    if every term that reaches D's and G's gradients (R1, LeCam, top-k, the
    losses) went through its scaler: one unscaled term would be 2^-16 off."""
    trainers = []
    for precision in ("fp32", "fp16"):
        torch.manual_seed(0)
        trainer = make_trainer(EVERY_TERM, "cpu", precision=precision, steps_per_epoch=1)
        if precision == "fp16":
            trainer.amp_dtype = None  # the scalers stay on, autocast goes off
        torch.manual_seed(1)
        for real in batches(3):
            out = trainer.step(real)
        trainers.append(trainer)
    fp32, scaled = trainers
    assert scaled.scalerD.is_enabled() and scaled.scalerD.get_scale() == scaled.scalerG.get_scale() == 2.0**16
    assert out["skipped_d"] == out["skipped_g"] == 0
    assert tensors_equal(fp32.netD.state_dict(), scaled.netD.state_dict())
    assert tensors_equal(fp32.netG.state_dict(), scaled.netG.state_dict())


@pytest.mark.parametrize("net", ["D", "G"])
def test_an_inf_gradient_skips_the_step_counts_it_and_keeps_the_weights(net):
    torch.manual_seed(0)
    trainer = make_trainer(TINY_CONFIG, "cpu", precision="fp16")
    # 2^8: no overflow of its own in these steps, so the one forced below is the only skip
    trainer.scalerD, trainer.scalerG = (torch.amp.GradScaler("cpu", init_scale=2.0**8) for _ in "DG")
    metrics = stats.Metrics(torch.device("cpu"), 1, 8, stats.METRIC_KEYS + stats.SKIP_KEYS)
    real = batches(3)
    metrics.add(trainer.step(real[0]))
    module, optimizer, scaler = {"D": (trainer.netD, trainer.optD, trainer.scalerD),
                                 "G": (trainer.netG, trainer.optG, trainer.scalerG)}[net]
    weight = next(module.parameters())
    hook = weight.register_hook(lambda grad: grad * float("inf"))  # as an fp16 overflow would
    before, adam_before, scale = weight.detach().clone(), optimizer.state[weight]["exp_avg"].clone(), \
        scaler.get_scale()
    out = trainer.step(real[1])
    hook.remove()
    assert (out["skipped_d"].item(), out["skipped_g"].item()) == ((1.0, 0.0) if net == "D" else (0.0, 1.0))
    assert torch.equal(weight, before) and torch.equal(optimizer.state[weight]["exp_avg"], adam_before)
    assert scaler.get_scale() == scale / 2 and torch.isfinite(out["loss_D"]) and torch.isfinite(out["loss_G"])
    metrics.add(out)
    metrics.add(trainer.step(real[2]))  # a clean step again
    assert not torch.equal(weight, before)
    (row,) = metrics.log({"step": 3}, close=True, now=True)
    assert (row["skipped_d"], row["skipped_g"]) == ((1, 0) if net == "D" else (0, 1))  # counts, not means
    stats.check_finite(row, None)  # a skipped step is no reason to stop


def test_metrics_count_skips_per_interval_and_average_the_rest():
    keys = ("loss_D", "skipped_d")
    metrics = stats.Metrics(torch.device("cpu"), 1, 4, keys)
    for loss, skipped in ((1.0, 1.0), (3.0, 1.0), (2.0, 0.0)):
        metrics.add({"loss_D": torch.tensor(loss), "skipped_d": torch.tensor(skipped)})
    (row,) = metrics.log({"step": 3}, close=True, now=True)
    assert row["loss_D"] == 2.0 and row["skipped_d"] == 2 and isinstance(row["skipped_d"], int)
    assert stats.progress_postfix({**row, "loss_G": 0.0, "img_per_s": 1.0, "skipped_g": 0})["skip"] == "2/0"


def test_a_skipped_run_logs_its_skips_and_a_non_finite_loss_still_stops(tmp_path, monkeypatch):
    """Overflowing scales (2^40: every fp16 gradient inf) skip every step of
    the run: metrics.jsonl counts them and the run finishes with D never
    stepped; a NaN loss stops the run as in fp32."""
    class HugeScaler(torch.amp.GradScaler):
        def __init__(self, device, enabled=True):
            super().__init__(device, init_scale=2.0**40, enabled=enabled)

    monkeypatch.setattr(torch.amp, "GradScaler", HugeScaler)
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, "--precision", "fp16", "--max-steps", "6", "--log-every", "3")) == 0
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_d"], r["skipped_g"]) for r in rows] == [(3, 3, 3), (6, 3, 3)]
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert ckpt["trainer"]["optD"]["state"] == {} and ckpt["trainer"]["optG"]["state"] == {}  # Adam never stepped
    assert ckpt["trainer"]["scalers"]["D"]["scale"] == 2.0**34  # halved at each of the 6 skips
    with pytest.raises(utils.UserError, match="the loss became NaN/inf by step 3"):
        stats.check_finite({**rows[0], "loss_D": float("nan")}, tmp_path)


# --------------------------------------------------------------------------- #
# Checkpoints and resume
# --------------------------------------------------------------------------- #
def test_fp16_scalers_round_trip_and_resume_is_bit_identical(tmp_path, monkeypatch):
    """8 fp16 steps in one go == 4, then --resume to 8 (--precision typed
    again: it is chosen per invocation), with every option; the scalers skip,
    back off and grow within those steps, so a lost scale or growth count
    would change the weights."""
    monkeypatch.setattr(torch.amp, "GradScaler", SmallScaler)
    data = make_data(tmp_path)
    fp16 = ["--precision", "fp16", *ALL_OPTIONS]
    assert train.main(argv(tmp_path, data, *fp16, "--max-steps", "8", out="a", params="a.params")) == 0
    assert train.main(argv(tmp_path, data, *fp16, "--max-steps", "4", out="b", params="b.params")) == 0
    mid = utils.torch_load(tmp_path / "b/checkpoint.pt")["trainer"]["scalers"]
    assert train.main(["--resume", "--out", str(tmp_path / "b"), "--params", str(tmp_path / "b.params"),
                       "--max-steps", "8", "--device", "cpu", "--precision", "fp16"]) == 0
    ca, cb = utils.torch_load(tmp_path / "a/checkpoint.pt"), utils.torch_load(tmp_path / "b/checkpoint.pt")
    assert ca["trainer"]["scalers"] == cb["trainer"]["scalers"] != mid
    assert cb["trainer"]["scalers"]["D"]["growth_interval"] == 3
    for key in ("netG", "netD", "ema"):
        assert tensors_equal(ca["trainer"][key], cb["trainer"][key]), key
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    rows = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped_d"] for r in rows) >= 1  # 2^20 overflowed at first


def test_a_resume_switches_between_fp16_and_fp32_with_a_note(tmp_path, capsys):
    data = make_data(tmp_path)
    resume = ["--resume", "--out", str(tmp_path / "run"), "--params", str(tmp_path / "generator.params")]
    assert train.main(argv(tmp_path, data, "--precision", "fp16", "--max-steps", "2")) == 0
    capsys.readouterr()
    assert train.main(resume + ["--max-steps", "3", "--precision", "fp32"]) == 0
    assert re.search(r"fp16 loss scales \(D \d+, G \d+\) are not used under --precision fp32", capsys.readouterr().err)
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["trainer"]["scalers"] is None
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert "skipped_d" in rows[0] and "skipped_d" not in rows[-1]
    assert train.main(resume + ["--max-steps", "4", "--precision", "fp16"]) == 0
    assert "no fp16 loss scales (it trained in bf16 or fp32): they start at 65536" in capsys.readouterr().err
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["trainer"]["scalers"]["G"]["_growth_tracker"] <= 1


DDP_FP16_SCRIPT = """
import gc, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from conftest import make_trainer
from training import distributed
torch.set_num_threads(1)
device = distributed.init("cpu")
rank, world = distributed.get_rank(), distributed.get_world_size()
config = {"ngf": 8, "ndf": 8, "nz": 16, "augment": "color,translation", "loss": "hinge", "r1": 1.0, "r1_every": 2,
          "lecam": 0.3, "topk": 0.5}
trainer = make_trainer(config, device, precision="fp16", world_size=world, rank=rank, steps_per_epoch=1)
torch.manual_seed(100 + rank)  # each rank its own reals, noise and augmentation
skipped = []
for step in range(5):
    hook = None
    if step == 2 and rank == 1:  # an overflow on one rank only: the reduced gradient carries it to both
        hook = next(trainer.netD.parameters()).register_hook(lambda grad: grad * float("inf"))
    out = trainer.step(torch.rand(4, 3, 64, 64) * 2 - 1)
    if hook is not None:
        hook.remove()
    skipped.append((out["skipped_d"].item(), out["skipped_g"].item()))
state = torch.tensor([trainer.scalerD.get_scale(), trainer.scalerG.get_scale()] + [v for s in skipped for v in s])
params = torch.cat([state] + [p.detach().flatten() for net in (trainer.netD, trainer.netG) for p in net.parameters()])
gathered = [torch.zeros_like(params) for _ in range(world)]
dist.all_gather(gathered, params)
assert torch.equal(gathered[0], gathered[1]), "ranks differ"
assert skipped[2][0] == 1.0, skipped
print("ok", rank, skipped, flush=True)
del trainer  # free DDP before its process group (freed at exit, after it, it may abort)
gc.collect()
dist.destroy_process_group()
"""


def test_fp16_under_ddp_skips_on_every_rank_together_and_keeps_ranks_identical(tmp_path):
    """Two Gloo processes, each its own data: an inf in one rank's D gradient
    reaches both through the all-reduce, so both skip that step and halve
    their scale; weights, scales and skip counts stay identical on both ranks
    (R1, LeCam and top-k on)."""
    from conftest import ROOT, torchrun

    script = tmp_path / "ddp_fp16.py"
    script.write_text(DDP_FP16_SCRIPT)
    proc = torchrun(script, str(ROOT), cwd=tmp_path)
    assert proc.stdout.count("ok") == 2
