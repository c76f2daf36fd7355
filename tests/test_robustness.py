"""Exact resume, signals, SIGKILL, NaN stop, full disk, the bad-input
table, and a 2-process Gloo run through torchrun. CPU, tiny nets, seconds."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import network
import train
import utils
from conftest import torchrun
from training import checkpoint
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--ngf", "8", "--ndf", "8", "--nz", "16", "--batch-size", "8", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(tmp_path, n=32, size=64, name="faces_64.npy", dtype=np.uint8, shape=None):
    path = tmp_path / name
    array = np.random.default_rng(0).integers(0, 256, shape or (n, size, size, 3)).astype(dtype)
    np.save(path, array)
    return path


def argv(tmp_path, data, *extra, out="run", params="generator.params"):
    return ["--data", str(data), *TINY, "--out", str(tmp_path / out), "--params", str(tmp_path / params), *extra]


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli(args, cwd, **kw):
    """Run train.py as a user does; PYTHONPATH only so it finds the repo from tmp_path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


# --------------------------------------------------------------------------- #
# Exact resume
# --------------------------------------------------------------------------- #
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """--max-steps 10 in one go == --max-steps 5, then --resume --max-steps 10.
    Bit-identical on CPU (torch.equal, no tolerance): the checkpoint restores
    weights, BN buffers, both Adam states, the EMA and its warm-up count, the
    torch/numpy/python RNGs, and the data order (epoch + batch, mid-epoch here)."""
    data = make_data(tmp_path)
    common = ["--ema", "0.9", "--flip", "--log-every", "3", "--sample-every", "4"]
    assert train.main(argv(tmp_path, data, *common, "--max-steps", "10", out="a", params="a.params")) == 0
    assert train.main(argv(tmp_path, data, *common, "--max-steps", "5", out="b", params="b.params")) == 0
    # resume repeats no architecture flag: it comes from the checkpoint
    resumed = ["--resume", "--out", str(tmp_path / "b"), "--params", str(tmp_path / "b.params"), "--max-steps", "10",
               "--device", "cpu"]
    assert train.main(resumed) == 0
    a, b = utils.torch_load(tmp_path / "a.params"), utils.torch_load(tmp_path / "b.params")
    assert tensors_equal(a["generator"], b["generator"]) and tensors_equal(a["generator_ema"], b["generator_ema"])
    ca, cb = utils.torch_load(tmp_path / "a/checkpoint.pt"), utils.torch_load(tmp_path / "b/checkpoint.pt")
    assert tensors_equal(ca["trainer"]["netD"], cb["trainer"]["netD"])
    assert torch.equal(ca["trainer"]["optD"]["state"][0]["exp_avg_sq"], cb["trainer"]["optD"]["state"][0]["exp_avg_sq"])
    assert (cb["step"], cb["epoch"], cb["batch_in_epoch"]) == (10, 2, 2)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 10


# --------------------------------------------------------------------------- #
# Signals, SIGKILL, NaN, full disk
# --------------------------------------------------------------------------- #
def signal_on_step(monkeypatch, signum, at):
    original, calls = Trainer.step, {"n": 0}

    def step(self, real):
        out = original(self, real)
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signum)  # arrives mid-run, like a Ctrl-C
        return out

    monkeypatch.setattr(Trainer, "step", step)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_exits(tmp_path, monkeypatch, capsys, signum, code):
    signal_on_step(monkeypatch, signum, at=3)
    data = make_data(tmp_path)
    assert train.main(argv(tmp_path, data, "--max-steps", "50")) == code
    err = capsys.readouterr().err
    assert "checkpoint saved to" in err and "--resume" in err
    assert utils.torch_load(tmp_path / "run/checkpoint.pt")["step"] == 3
    assert network.load_generator(tmp_path / "generator.params")[1]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is not None  # handlers restored, pytest still interruptible
    # and it continues from there
    monkeypatch.undo()
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--max-steps", "5",
                       "--params", str(tmp_path / "generator.params")]) == 0
    assert utils.torch_load(tmp_path / "run/checkpoint.pt")["step"] == 5


def wait_for(predicate, proc, limit=120):
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < limit, "training never got there"
        time.sleep(0.2)


def test_real_ctrl_c_and_sigkill_leave_loadable_files(tmp_path):
    data = make_data(tmp_path)
    # Ctrl-C on a real process: one clear message, exit 130, no traceback
    proc = cli(argv(tmp_path, data, "--max-steps", "100000", "--log-every", "1"), cwd=tmp_path)
    wait_for(lambda: (tmp_path / "run/metrics.jsonl").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved to" in err
    step = utils.torch_load(tmp_path / "run/checkpoint.pt")["step"]
    assert step >= 1

    # SIGKILL while it writes a checkpoint every step: the files on disk still load
    proc = cli(["--resume", "--out", str(tmp_path / "run"), "--max-steps", "100000", "--checkpoint-every", "1",
                "--params", str(tmp_path / "generator.params")], cwd=tmp_path)
    wait_for(lambda: utils.torch_load(tmp_path / "run/checkpoint.pt")["step"] >= step + 3, proc)
    proc.kill()
    proc.communicate(timeout=60)
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    G, config = network.load_generator(tmp_path / "generator.params")
    assert ckpt["step"] >= step + 3 and config["ngf"] == 8


@pytest.mark.parametrize("log_every, nan_step", [(2, 6), (3, 6), (100, 8)])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, log_every,
                                                                          nan_step):
    """The losses are read one log interval late, but every save
    reads them first: the NaN interval closed at step 6 (not yet read) or the
    one the save at step 8 closes itself stops the run before that save."""
    original, calls = Trainer.step, {"n": 0}

    def step(self, real):
        out = original(self, real)
        calls["n"] += 1
        if calls["n"] == 5:  # D's weights blow up after step 5 -> step 6 has NaN losses
            with torch.no_grad():
                self.netD.main[0].weight.fill_(float("nan"))
        return out

    monkeypatch.setattr(Trainer, "step", step)
    data = make_data(tmp_path)
    with pytest.raises(utils.UserError, match=rf"NaN/inf by step {nan_step}.*last good checkpoint.*--lr"):
        train.main(argv(tmp_path, data, "--max-steps", "20", "--log-every", str(log_every),
                        "--checkpoint-every", "4"))
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["trainer"]["netD"].values() if v.is_floating_point())
    G, config = network.load_generator(tmp_path / "generator.params")
    assert config["step"] == 4 and all(torch.isfinite(p).all() for p in G.parameters())


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data = make_data(tmp_path)
    train.main(argv(tmp_path, data, "--max-steps", "2"))
    before = (tmp_path / "run/checkpoint.pt").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(utils.UserError, match="disk full.*intact"):
        train.main(["--resume", "--out", str(tmp_path / "run"), "--max-steps", "4",
                    "--params", str(tmp_path / "generator.params")])
    assert (tmp_path / "run/checkpoint.pt").read_bytes() == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files left


# --------------------------------------------------------------------------- #
# Bad-input table: one line, non-zero exit, nothing half-written
# --------------------------------------------------------------------------- #
BAD_DATA = {
    "missing": (None, "not found"),
    "empty": (b"", "empty"),
    "wrong ndim": ((32, 64, 64), "shape"),
    "four channels": ((32, 64, 64, 4), "shape"),
    "float dtype": ("float32", "dtype"),
    "size 32 for --size 64": ((32, 32, 32, 3), "size 64"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_file_is_one_line_and_writes_nothing(tmp_path, case):
    spec, message = BAD_DATA[case]
    data = tmp_path / "data.npy"
    if spec == b"":
        data.write_bytes(b"")
    elif isinstance(spec, tuple):
        make_data(tmp_path, name="data.npy", shape=spec)
    elif spec == "float32":
        make_data(tmp_path, name="data.npy", dtype=np.float32)
    with pytest.raises(utils.UserError, match=message) as err:
        train.main(argv(tmp_path, data, "--max-steps", "1"))
    assert "\n" not in str(err.value) and "data.npy" in str(err.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "generator.params").exists()


def test_batch_larger_than_data_and_unwritable_out(tmp_path):
    data = make_data(tmp_path)
    with pytest.raises(utils.UserError, match=r"--batch-size 64 is larger than the data set \(32 images"):
        train.main(argv(tmp_path, data, "--max-steps", "1") + ["--batch-size", "64"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(utils.UserError, match="afile is a file"):
        train.main(argv(tmp_path, data, "--max-steps", "1", out="afile/run"))
    with pytest.raises(utils.UserError, match="afile is a file"):
        train.main(argv(tmp_path, data, "--max-steps", "1", params="afile/g.params"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "faces_64.npy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_gpu(tmp_path):
    with pytest.raises(utils.UserError, match="no CUDA GPU"):
        train.main(argv(tmp_path, make_data(tmp_path), "--max-steps", "1") + ["--device", "cuda"])


def test_resume_refuses_other_size_architecture_truncated_or_foreign_files(tmp_path):
    data = make_data(tmp_path)
    train.main(argv(tmp_path, data, "--max-steps", "1"))
    resume = ["--resume", "--out", str(tmp_path / "run"), "--params", str(tmp_path / "g2.params")]
    ckpt = tmp_path / "run/checkpoint.pt"
    before = ckpt.read_bytes()
    with pytest.raises(utils.UserError, match=r"--size 128 does not match the checkpoint .*size 64"):
        train.main(resume + ["--size", "128"])
    with pytest.raises(utils.UserError, match=r"--ngf 16 does not match .*ngf 8"):
        train.main(resume + ["--ngf", "16"])
    data32 = make_data(tmp_path, name="small.npy", size=32)
    with pytest.raises(utils.UserError, match="small.npy.*size 64"):
        train.main(resume + ["--data", str(data32)])
    # a checkpoint whose weights are for another architecture than its config says
    blob = utils.torch_load(ckpt)
    blob["config"]["ngf"] = 16
    utils.torch_save(blob, tmp_path / "other/checkpoint.pt")
    with pytest.raises(utils.UserError, match="does not match a 64 px DCGAN with ngf 16"):
        train.main(["--resume", "--out", str(tmp_path / "other"), "--params", str(tmp_path / "g2.params")])
    # a generator.params is not a checkpoint
    (tmp_path / "p").mkdir()
    (tmp_path / "p/checkpoint.pt").write_bytes((tmp_path / "generator.params").read_bytes())
    with pytest.raises(utils.UserError, match="not a train.py checkpoint"):
        train.main(["--resume", "--out", str(tmp_path / "p")])
    # truncated checkpoint and truncated params
    (tmp_path / "t").mkdir()
    (tmp_path / "t/checkpoint.pt").write_bytes(before[: len(before) // 2])
    with pytest.raises(utils.UserError, match="truncated or corrupt"):
        train.main(["--resume", "--out", str(tmp_path / "t")])
    params = (tmp_path / "generator.params").read_bytes()
    (tmp_path / "cut.params").write_bytes(params[: len(params) // 2])
    with pytest.raises(utils.UserError, match="truncated or corrupt"):
        network.load_generator(tmp_path / "cut.params")
    with pytest.raises(utils.UserError, match="no checkpoint.pt in"):
        train.main(["--resume", "--out", str(tmp_path / "nowhere")])
    assert ckpt.read_bytes() == before and not (tmp_path / "g2.params").exists()


class CodeOnLoad:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a
    shared checkpoint could run under a plain torch.load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_everywhere(tmp_path):
    marker = tmp_path / "code-ran"
    evil = {"format": "dcgan-generator-params/1", "config": {"size": 64}, "generator": CodeOnLoad(marker)}
    params = tmp_path / "evil.params"
    torch.save(evil, params)
    (tmp_path / "run").mkdir()
    torch.save({**evil, "format": checkpoint.FORMAT}, tmp_path / "run/checkpoint.pt")
    calls = [lambda: network.load_generator(params),
             lambda: train.main(["--resume", "--out", str(tmp_path / "run"), "--device", "cpu"])]
    generator = pytest.importorskip("generator")
    calls.append(lambda: generator.main(["--params", str(params), "-n", "1", "--out", str(tmp_path / "s")]))
    for call in calls:
        with pytest.raises(utils.UserError, match="refusing to load .*could run code"):
            call()
    assert not marker.exists() and not (tmp_path / "s").exists()


def test_generator_n_zero_is_refused():
    generator = pytest.importorskip("generator")
    with pytest.raises(utils.UserError, match="-n must be at least 1"):
        generator.main(["-n", "0"])


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    data = make_data(tmp_path)
    for args, needle in [(["--data", str(tmp_path / "nope.npy"), "--device", "cpu"], "nope.npy"),
                         (argv(tmp_path, data) + ["--batch-size", "1000"], "larger than the data set")]:
        proc = cli(args, cwd=tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "Traceback" not in err
        assert err.strip().count("\n") == 0 and err.startswith("error: ") and needle in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_file_of_another_kind_is_named_for_what_it_is_by_the_cli(tmp_path):
    """The two mix-ups a new user makes: the image array as --params and the
    preview PNG as --data. Each says what the file is and what to pass."""
    import preprocess

    preprocess.main(["--synthetic", "64", "--sizes", "64", "--out", str(tmp_path / "data")])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cases = [(["generator.py", "--params", "data/synthetic_64.npy", "--out", "s"],
              "data/synthetic_64.npy is a numpy image array (64 images of 64x64 px, from preprocess.py), not a "
              "generator.params file; pass --params generator.params (written by train.py"),
             (["train.py", "--data", "data/synthetic_64_preview.png", "--device", "cpu", "--out", "run"],
              "data/synthetic_64_preview.png is a PNG image, not an image array from preprocess.py; "
              "make one with: python preprocess.py --src FOLDER")]
    for (script, *args), needle in cases:
        proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: " + needle)
    assert not (tmp_path / "s").exists() and not (tmp_path / "run").exists()


def test_file_kinds_from_magic_bytes_whatever_the_name(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "photo.npy", format="JPEG")  # the name lies; the bytes do not
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2))
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as archive:
        archive.writestr("000001.jpg", b"x")
    torch.save({"w": torch.zeros(1)}, tmp_path / "generator.params")
    np.save(tmp_path / "floats.npy", np.zeros((2, 3), np.float32))
    (tmp_path / "junk").write_bytes(b"not a file we know")
    kinds = {name: utils.file_kind(tmp_path / name) for name in
             ("photo.npy", "stats.npz", "faces.zip", "generator.params", "floats.npy", "junk")}
    assert kinds == {"photo.npy": ("image", "a JPEG image"), "stats.npz": ("npz", "a numpy .npz archive"),
                     "faces.zip": ("zip", "a zip archive"),
                     "generator.params": ("torch", "a torch file (a checkpoint or generator.params from train.py)"),
                     "floats.npy": ("npy", "a numpy array (float32, shape (2, 3))"),
                     "junk": ("unknown", "a file of unknown type")}
    for name, needle in [("generator.params", "is a torch file"), ("faces.zip", r"--src .*faces\.zip$"),
                         ("junk", "is a file of unknown type, not an image array")]:
        with pytest.raises(utils.UserError, match=needle):
            train.main(argv(tmp_path, tmp_path / name, "--max-steps", "1"))
    with pytest.raises(utils.UserError, match=r"stats\.npz is a numpy \.npz archive, not a checkpoint$"):
        utils.torch_load(tmp_path / "stats.npz", what="checkpoint")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- #
# DDP: 2 processes, Gloo, CPU
# --------------------------------------------------------------------------- #
def test_torchrun_two_processes_on_cpu_then_resume_on_one(tmp_path):
    data = make_data(tmp_path)
    proc = torchrun(ROOT / "train.py", *argv(tmp_path, data, "--max-steps", "3", "--log-every", "1"), cwd=tmp_path)
    assert "4 images per process (8 over 2)" in proc.stderr  # BatchNorm warning, said once
    assert proc.stderr.count("images per process") == 1
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 8
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone writes
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 3 and not any(k.startswith("module.") for k in ckpt["trainer"]["netG"])
    G, cfg = network.load_generator(tmp_path / "generator.params")
    assert cfg["ngf"] == 8 and G(torch.randn(2, 16)).shape == (2, 3, 64, 64)
    # the unwrapped checkpoint resumes on a single process
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--max-steps", "4", "--device", "cpu",
                       "--params", str(tmp_path / "generator.params")]) == 0
    assert utils.torch_load(tmp_path / "run/checkpoint.pt")["step"] == 4


def test_ddp_step_reduces_d_once_and_matches_the_plain_ddp_step(tmp_path):
    """no_sync on the real half and on G's pass through D, no
    buffer broadcasts: D's gradients are reduced once per step instead of
    three times, and the weights after 3 steps equal the plain DDP step's."""
    torchrun(ROOT / "tests" / "ddp_step_worker.py", str(tmp_path), cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank, result in enumerate(ranks):
        buckets = len(set(result["reduced"]["trainer"]))
        assert len(result["reduced"]["trainer"]) == 3 * buckets and len(result["reduced"]["plain"]) == 9 * buckets
        for net in ("G", "D"):
            ours, plain = result["trainer"][net], result["plain"][net]
            for key, value in ours.items():
                if rank == 0 or key.endswith(("weight", "bias")):  # rank 1's BN running stats are its own
                    torch.testing.assert_close(value, plain[key], atol=1e-6, rtol=0, msg=f"rank {rank} {net} {key}")
    for net in ("G", "D"):  # and the ranks agree on every weight
        for key, value in ranks[0]["trainer"][net].items():
            if key.endswith(("weight", "bias")):
                assert torch.equal(value, ranks[1]["trainer"][net][key])


def test_torchrun_votes_on_stopping_at_log_intervals_only_and_every_rank_stops_together(tmp_path):
    """The stop vote is one blocking Gloo all-reduce: it runs at log intervals
    (steps 2, 4 with --log-every 2), not every step. A SIGTERM on rank 1 alone
    after step 3 stops both ranks at step 4's vote, saved, exit 143."""
    data = make_data(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              str(ROOT / "tests" / "ddp_stop_worker.py"), str(tmp_path)]
    args = argv(tmp_path, data, "--log-every", "2")
    stopped = subprocess.run(common + ["3"] + args + ["--max-steps", "20", "--out", str(tmp_path / "stopped")],
                             cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert stopped.returncode != 0 and "SIGTERM at step 4" in stopped.stderr, stopped.stderr[-3000:]
    votes = [json.loads((tmp_path / f"votes{r}.json").read_text()) for r in (0, 1)]
    assert votes[0] == votes[1] == [2, 4]
    assert utils.torch_load(tmp_path / "stopped/checkpoint.pt")["step"] == 4
