"""train.py and training/: the Trainer step bench.py reuses, the CLI contract
(defaults, --dry-run), and the run folder a short CPU run leaves behind (tiny
nets, random 64 px data)."""
import io
import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
import torch

import network
import train
import utils
from conftest import make_trainer
from training import distributed, stats, training_loop
from training.config import resolve_config, typed_options
from training.trainer import Trainer

TINY = ["--ngf", "8", "--ndf", "8", "--nz", "16", "--batch-size", "8", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(tmp_path, n=32, size=64, name="faces_64.npy"):
    rng = np.random.default_rng(0)
    path = tmp_path / name
    np.save(path, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def run(tmp_path, *extra, data=None, out="run", params="generator.params"):
    data = data or make_data(tmp_path)
    argv = ["--data", str(data), *TINY, "--out", str(tmp_path / out), "--params", str(tmp_path / params), *extra]
    return train.main(argv)


def resolved(flags):
    return resolve_config(typed_options(train.build_parser().parse_args(flags)))


def test_parser_defaults_are_the_classic_dcgan_settings():
    args = resolved([])
    epochs = training_loop.total_steps(args["epochs"], args["max_steps"], 1)[0]  # None + None: the default epochs
    assert (args["size"], epochs, args["batch_size"], args["lr"], args["beta1"], args["beta2"]) == \
        (64, 5, 128, 2e-4, 0.5, 0.999)
    assert (args["nz"], args["ngf"], args["ndf"], args["seed"], args["device"], args["precision"]) == \
        (100, 64, 64, 0, "auto", "auto")
    assert (args["ema"], args["params"], args["max_steps"], args["compile"], args["resume"]) == \
        (0.0, "generator.params", None, False, False)
    assert args["data"] == "data/celeba_64.npy" and resolved(["--size", "128"])["data"] == "data/celeba_128.npy"
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--size", "96"])


def test_help_tells_every_default_and_where_a_left_out_option_comes_from():
    text = " ".join(train.build_parser().format_help().split())
    for phrase in ("--lr LR Adam learning rate for G and D (default: 0.0002; on --resume the checkpoint's)",
                   "(default: 0.0; 0.999 with --recipe best; on --resume the checkpoint's)",  # --ema
                   "--sample-every SAMPLE_EVERY steps between samples/step_NNNNNN.png grids (default: 500)",
                   "(default: data/celeba_{size}.npy; on --resume the checkpoint's)",
                   "--augment [POLICY]", "(default: none; color,translation with --recipe best;"):
        assert phrase in text, phrase
    parser = train.build_parser()
    documented = {a.dest for a in parser._actions if a.help and "default:" in a.help}
    options = {a.dest for a in parser._actions if a.option_strings} - {"help", "dry_run", "resume"}
    assert options <= documented, options - documented
    assert options | {"resume"} == set(training_loop.DEFAULTS) - {"nc"}  # every loop argument but nc is a flag
    kinds = training_loop.OPTION_KINDS  # the one table RUN_KEYS, RECIPE_KEYS and ARCH_KEYS come from
    assert set(kinds) <= set(training_loop.DEFAULTS) and {k for v in kinds.values() for k in v.split()} == \
        {"run", "recipe", "arch"}
    assert "sn" in training_loop.ARCH_KEYS and "sn" in training_loop.RECIPE_KEYS


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--recipe", "best", "--lr", "3e-4", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    config = json.loads(printed[printed.index("{"):])
    assert (config["augment"], config["ema"], config["lr"], config["lr_g"]) == ("color,translation", 0.999, 3e-4, 3e-4)
    assert config == {**training_loop.DEFAULTS, **config} and set(config) == set(training_loop.DEFAULTS)
    assert not out.exists() and not (tmp_path / "generator.params").exists()


def test_training_loop_is_callable_from_python_without_argv(tmp_path):
    data = make_data(tmp_path)
    code = training_loop.training_loop(data=str(data), ngf=8, ndf=8, nz=16, batch_size=8, max_steps=2, device="cpu",
                                       out=str(tmp_path / "py"), params=str(tmp_path / "py.params"), recipe="best",
                                       augment="translation", ema=0.9)
    assert code == 0
    config = utils.torch_load(tmp_path / "py/checkpoint.pt")["config"]
    assert (config["augment"], config["ema"], config["max_steps"]) == ("translation", 0.9, 2)
    assert network.load_generator(tmp_path / "py.params")[1]["weights"] == "ema"


def test_one_step_changes_both_nets_and_returns_device_scalars():
    torch.manual_seed(0)
    trainer = make_trainer({"ngf": 8, "ndf": 8, "nz": 16, "ema": 0.99}, "cpu")
    before_g = [p.detach().clone() for p in trainer.netG.parameters()]
    before_d = [p.detach().clone() for p in trainer.netD.parameters()]
    real = torch.rand(8, 3, 64, 64) * 2 - 1
    out = trainer.step(real)
    assert set(out) == {"loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2"}
    assert all(v.dim() == 0 and v.device.type == "cpu" and not v.requires_grad for v in out.values())
    assert all(0 <= out[k].item() <= 1 for k in ("D_x", "D_G_z1", "D_G_z2"))
    assert all(not torch.equal(a, b) for a, b in zip(before_g, trainer.netG.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before_d, trainer.netD.parameters()))
    # the EMA moved towards G but is not G (decay warm-up: first update weight 1 - 2/11)
    ema_w, g_w = trainer.netG_ema.main[0].weight, trainer.netG.main[0].weight
    assert not torch.equal(ema_w, g_w) and not torch.equal(ema_w, before_g[0])
    torch.testing.assert_close(ema_w, before_g[0] + (g_w - before_g[0]) * (1 - 2 / 11))


def test_trainer_state_dict_round_trips_without_wrapper_prefixes():
    a = make_trainer({"ngf": 8, "ndf": 8, "nz": 16}, "cpu")
    a.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    b = make_trainer({"ngf": 8, "ndf": 8, "nz": 16}, "cpu")
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.netG.state_dict().values(), b.netG.state_dict().values()))
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in a.state_dict()["netG"])
    assert b.optD.state_dict()["state"][0]["step"] == 1


def test_short_run_writes_every_artefact(tmp_path, capsys):
    code = run(tmp_path, "--max-steps", "6", "--log-every", "2", "--sample-every", "3", "--ema", "0.9",
               "--num-samples", "16")
    assert code == 0
    out = tmp_path / "run"
    config = json.loads((out / "config.json").read_text())
    assert (config["size"], config["ngf"], config["precision"], config["total_steps"]) == (64, 8, "fp32", 6)
    assert '"ngf": 8' in capsys.readouterr().out  # resolved config printed at start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert set(rows[0]) >= {"step", "epoch", "loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2", "img_per_s"}
    assert rows[-1]["epoch"] == 1.5  # 6 steps of 4 per epoch
    for name in ("loss.png", "reals.png", "samples/step_000003.png", "samples/step_000006.png",
                 "samples/step_000006_ema.png"):
        assert (out / name).stat().st_size > 0, name
    from PIL import Image

    assert Image.open(out / "samples/step_000006.png").size == (4 * 66 + 2, 4 * 66 + 2)  # 16 images, 4 a row
    with Image.open(out / "progress.gif") as gif:  # one frame per sample grid, of the EMA's grids here
        assert (gif.n_frames, gif.size, gif.info["loop"]) == (2, (4 * 66 + 2, 4 * 66 + 2), 0)

    ckpt = utils.torch_load(out / "checkpoint.pt")  # weights_only=True
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (6, 1, 2)
    assert set(ckpt["trainer"]) >= {"netG", "netD", "optG", "optD", "ema"}
    assert set(ckpt["rng"]) == {"torch", "numpy", "python", "cuda"} and ckpt["fixed_noise"].shape == (16, 16, 1, 1)

    raw, cfg = network.load_generator(tmp_path / "generator.params", use_ema=False)
    ema, _ = network.load_generator(tmp_path / "generator.params")
    assert (cfg["size"], cfg["nz"], cfg["ngf"], cfg["ndf"], cfg["step"]) == (64, 16, 8, 8, 6)
    z = torch.randn(2, 16)
    images = raw(z)
    assert images.shape == (2, 3, 64, 64) and images.abs().max() <= 1
    assert not torch.equal(images, ema(z))  # EMA weights exported beside the raw ones


def test_run_folder_is_never_silently_overwritten(tmp_path):
    run(tmp_path, "--max-steps", "1")
    with pytest.raises(utils.UserError, match="--resume"):
        run(tmp_path, "--max-steps", "1")


def read_events(folder):
    """The run's TensorBoard events, read by tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_mirrors_the_metrics_rows_and_sample_grids(tmp_path):
    assert run(tmp_path, "--max-steps", "6", "--log-every", "2", "--sample-every", "3", "--ema", "0.9",
               "--num-samples", "4", "--tensorboard") == 0
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = read_events(out)
    for key, tag in [("loss_D", "loss/loss_D"), ("loss_G", "loss/loss_G"), ("D_x", "D/D_x"), ("D_G_z1", "D/D_G_z1"),
                     ("D_G_z2", "D/D_G_z2"), ("img_per_s", "speed/img_per_s")]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in rows] == [2, 4, 6], tag
        np.testing.assert_allclose([s.value for s in scalars], [r[key] for r in rows], rtol=1e-6)
    grids = events.Images("samples")  # the EMA's grids, pixel for pixel as in samples/
    assert [g.step for g in grids] == [3, 6]
    from PIL import Image

    with Image.open(io.BytesIO(grids[-1].encoded_image_string)) as logged, \
            Image.open(out / "samples/step_000006_ema.png") as written:
        assert np.array_equal(np.asarray(logged.convert("RGB")), np.asarray(written.convert("RGB")))
    assert json.loads((out / "config.json").read_text())["tensorboard"] is True
    assert "tensorboard" not in utils.torch_load(out / "checkpoint.pt")["config"]  # a run option, not restored

    # resumed from a step-2 checkpoint after a try that logged steps 3 and 4: those are dropped
    assert run(tmp_path, "--max-steps", "2", "--tensorboard", out="again") == 0
    shutil.copy(tmp_path / "again/checkpoint.pt", tmp_path / "step2.pt")
    assert run(tmp_path, "--max-steps", "4", "--log-every", "1", "--tensorboard", "--resume", out="again") == 0
    shutil.copy(tmp_path / "step2.pt", tmp_path / "again/checkpoint.pt")
    assert run(tmp_path, "--max-steps", "4", "--log-every", "4", "--tensorboard", "--resume", out="again") == 0
    assert [s.step for s in read_events(tmp_path / "again").Scalars("loss/loss_D")] == [2, 4]


def test_tensorboard_without_the_package_is_one_line_before_any_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(utils.UserError, match="pip install tensorboard") as err:
        run(tmp_path, "--max-steps", "2", "--tensorboard")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "generator.params").exists()
    assert run(tmp_path, "--max-steps", "1") == 0  # without the flag the package is not needed


def test_fid_every_logs_scores_and_keeps_the_best_generator(tmp_path, monkeypatch):
    scores = iter([50.0, 20.0, 35.0])
    calls = {"real": 0, "fid": []}

    def real_statistics(data_path, device, **kw):
        calls["real"] += 1
        return {"mu": np.zeros(2), "sigma": np.eye(2), "n": 32}

    def generator_fid(generator, nz, real_stats, n, device, **kw):
        assert not generator.training and nz == 16 and n == 10 and real_stats["n"] == 32
        calls["fid"].append(generator.main[0].weight.detach().clone())
        return next(scores)

    monkeypatch.setattr(training_loop.inception, "load_inception",
                        lambda device, weights_path=None: types.SimpleNamespace(weights_label="TF-FID weights"))
    monkeypatch.setattr(training_loop.features, "real_statistics", real_statistics)
    monkeypatch.setattr(training_loop.features, "generator_fid", generator_fid)
    assert run(tmp_path, "--max-steps", "6", "--fid-every", "2", "--fid-n", "10", "--tensorboard") == 0
    assert calls["real"] == 1 and len(calls["fid"]) == 3
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    fids = [(r["step"], r["fid"], r["fid_n"]) for r in rows if "fid" in r]
    assert fids == [(2, 50.0, 10), (4, 20.0, 10), (6, 35.0, 10)]
    logged = read_events(tmp_path / "run").Scalars("quality/fid")  # and as TensorBoard scalars
    assert [(s.step, s.value) for s in logged] == [(2, 50.0), (4, 20.0), (6, 35.0)]
    assert {r["fid_weights"] for r in rows if "fid" in r} == {"TF-FID weights"}  # which Inception made each score
    best, cfg = network.load_generator(tmp_path / "generator_best.params")
    assert cfg["step"] == 4
    assert torch.equal(best.main[0].weight, calls["fid"][1])  # the weights that scored 20
    assert utils.torch_load(tmp_path / "run/checkpoint.pt")["best_fid"] == 20.0


def test_max_steps_alone_decides_the_length_and_both_given_say_which_wins(tmp_path, capsys):
    # 32 images / batch 8 = 4 steps an epoch: the default 5 epochs would stop at 20
    assert run(tmp_path, "--max-steps", "22", "--log-every", "11") == 0
    assert utils.torch_load(tmp_path / "run/checkpoint.pt")["step"] == 22
    assert json.loads((tmp_path / "run/config.json").read_text())["epochs"] is None
    assert "the smaller" not in capsys.readouterr().err
    assert run(tmp_path, "--max-steps", "30", "--epochs", "2", out="both") == 0
    assert utils.torch_load(tmp_path / "both/checkpoint.pt")["step"] == 8
    assert "--epochs 2 (8 steps of 4) and --max-steps 30 both given: training stops at step 8" in capsys.readouterr().err
    assert training_loop.total_steps(None, None, 4) == (4 * training_loop.DEFAULT_EPOCHS, None)
    assert "default: 5" in train.build_parser().format_help().replace("\n", " ").replace("  ", " ")


def test_resume_in_another_memory_format_gives_adam_moments_the_parameter_layout(tmp_path):
    """Optimizer.load_state_dict keeps the saved strides; CUDA's
    fused Adam refuses moments laid out unlike their parameter."""
    a = make_trainer({"ngf": 8, "ndf": 8, "nz": 16}, "cpu", channels_last=False)
    a.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    b = make_trainer({"ngf": 8, "ndf": 8, "nz": 16}, "cpu", channels_last=True)
    b.load_state_dict(a.state_dict())
    for opt in (b.optG, b.optD):
        for p in (p for g in opt.param_groups for p in g["params"]):
            assert opt.state[p]["exp_avg"].stride() == p.stride() == torch.empty_like(p).stride()
            assert opt.state[p]["exp_avg_sq"].stride() == p.stride()
    conv = b.netD.main[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(b.optD.state[conv]["exp_avg"], a.optD.state[a.netD.main[0].weight]["exp_avg"])

    # through the CLI: the config keeps --channels-last off on resume, and an explicit switch re-lays the moments
    assert run(tmp_path, "--max-steps", "2", "--channels-last", "off") == 0
    resume = ["--resume", "--out", str(tmp_path / "run"), "--params", str(tmp_path / "g.params")]
    assert train.main(resume + ["--max-steps", "3"]) == 0
    assert json.loads((tmp_path / "run/config.json").read_text())["channels_last"] is False
    assert train.main(resume + ["--max-steps", "4", "--channels-last", "on"]) == 0
    ckpt = utils.torch_load(tmp_path / "run/checkpoint.pt")
    assert ckpt["config"]["channels_last"] is True
    weight = ckpt["trainer"]["netD"]["main.0.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert ckpt["trainer"]["optD"]["state"][0]["exp_avg"].stride() == weight.stride()


def test_small_per_process_batch_warns():
    assert training_loop.small_batch_warning(128, 1) is None and training_loop.small_batch_warning(256, 8) is None
    message = training_loop.small_batch_warning(128, 16)  # the README's old 2 x 8 GPU example
    assert "8 images per process" in message and "--batch-size 512" in message


def test_deterministic_flag_is_recorded_and_leaves_global_settings_as_they_were(tmp_path, monkeypatch):
    seen = []
    original = Trainer.step

    def step(self, real):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, real)

    monkeypatch.setattr(Trainer, "step", step)
    assert run(tmp_path, "--max-steps", "2", "--deterministic") == 0
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()
    assert json.loads((tmp_path / "run/config.json").read_text())["deterministic"] is True


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_sets_cublas_workspace_before_the_device_starts(deterministic, monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when CUDA makes its handle."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # absent now, and again after the test
    seen = []

    class Started(Exception):
        pass

    def init(device):
        seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        raise Started  # stop before any work

    monkeypatch.setattr(distributed, "init", init)
    with pytest.raises(Started):
        training_loop.training_loop(deterministic=deterministic)
    assert seen == [":4096:8" if deterministic else None]


def test_loss_plot_is_drawn_at_saves_not_on_log_steps(tmp_path, monkeypatch):
    """the matplotlib draw + fsync stays off the step loop's log
    steps; metrics lines still come once per --log-every."""
    drawn = []
    monkeypatch.setattr(stats, "plot_losses", lambda history, path: drawn.append([r["step"] for r in history]))
    assert run(tmp_path, "--max-steps", "6", "--log-every", "1", "--checkpoint-every", "3") == 0
    assert drawn == [[1, 2, 3], [1, 2, 3, 4, 5, 6]]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_metrics_are_read_one_interval_late_and_time_the_training_steps_only(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(stats, "perf_counter", lambda: clock[0])
    metrics = stats.Metrics(torch.device("cpu"), world_size=1, batch_size=5)
    out = {k: torch.tensor(float(i)) for i, k in enumerate(stats.METRIC_KEYS)}
    metrics.resume()
    metrics.add(out)
    clock[0] = 1.0  # one step: 1 s
    metrics.pause(sync=True)
    clock[0] = 9.0  # 8 s of samples, FID, saves: not training
    metrics.resume()
    metrics.add(out)
    clock[0] = 10.0
    metrics.pause(sync=False)
    assert metrics.log({"step": 2, "epoch": 0.5}, close=True, now=False) == []  # read one interval late
    assert metrics.steps == 0 and float(metrics.sums.abs().sum()) == 0  # next interval starts from zero
    rows = metrics.read()
    assert rows == [{"step": 2, "epoch": 0.5, **{k: float(i) for i, k in enumerate(stats.METRIC_KEYS)},
                     "img_per_s": 10 / 2.0}]  # 2 steps of 5 images in 2 s of training
    assert metrics.read() == []


@pytest.mark.parametrize("ema", [False, True])
def test_progress_gif_has_one_frame_per_grid_in_step_order(tmp_path, ema):
    from PIL import Image, ImageSequence

    colours = {2: 40, 10: 120, 1_000_000: 200}  # a 7-digit step sorts last, not between 1 and 2
    for step, value in colours.items():
        utils.save_png(np.full((6, 6, 3), value, np.uint8), tmp_path / f"step_{step:06d}.png")
        utils.save_png(np.full((6, 6, 3), value + 1, np.uint8), tmp_path / f"step_{step:06d}_ema.png")
    assert stats.progress_gif(tmp_path, tmp_path / "progress.gif", ema=ema) == 3
    with Image.open(tmp_path / "progress.gif") as gif:
        firsts = [np.asarray(frame.convert("RGB"))[0, 0, 0] for frame in ImageSequence.Iterator(gif)]
    assert firsts == [v + ema for v in colours.values()]
    assert stats.progress_gif(tmp_path / "none", tmp_path / "empty.gif", ema=False) == 0
    assert not (tmp_path / "empty.gif").exists()
    for step in range(3, 9):  # 9 grids, at most 4 frames: evenly spaced, first and newest kept
        utils.save_png(np.full((6, 6, 3), step, np.uint8), tmp_path / f"step_{step:06d}.png")
    assert stats.progress_gif(tmp_path, tmp_path / "capped.gif", ema=False, max_frames=4) == 4
    with Image.open(tmp_path / "capped.gif") as gif:
        firsts = [np.asarray(frame.convert("RGB"))[0, 0, 0] for frame in ImageSequence.Iterator(gif)]
    assert ema or firsts == [40, 5, 7, 200]  # steps 2, 3..8, 10, 1000000: grids 0, 3, 5, 8


def test_img_per_s_in_metrics_leaves_out_samples_and_saves(tmp_path, monkeypatch):
    """Each step takes 1 s on a fake clock and each sample grid / checkpoint
    100 s: the logged rate is batch / 1 s whatever the maintenance costs."""
    clock = [0.0]
    monkeypatch.setattr(stats, "perf_counter", lambda: clock[0])
    original_step, original_grid = Trainer.step, stats.sample_grid

    def step(self, real):
        clock[0] += 1.0
        return original_step(self, real)

    def grid(*args):
        clock[0] += 100.0
        return original_grid(*args)

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(stats, "sample_grid", grid)
    assert run(tmp_path, "--max-steps", "6", "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "3") == 0
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and clock[0] > 300
    assert {r["img_per_s"] for r in rows} == {8.0}


def test_bf16_compile_builds_two_graphs_for_d(monkeypatch):
    """with the real batch cast to bf16, D sees one input dtype:
    one graph for inputs without grad (real, detached fake) and one for G's
    pass (fake with grad), not four. Counted with a backend that only counts
    (no C compiler needed) and runs the traced graph eagerly."""
    import torch._dynamo

    graphs = []
    real_compile = torch.compile

    def counting_compile(module):
        count = []
        graphs.append(count)

        def backend(gm, example_inputs):
            count.append(1)
            return gm.forward

        return real_compile(module, backend=backend)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", counting_compile)
    trainer = make_trainer({"ngf": 8, "ndf": 8, "nz": 16}, "cpu", precision="bf16", compile=True)
    for _ in range(3):
        out = trainer.step(torch.rand(8, 3, 64, 64) * 2 - 1)
    assert all(torch.isfinite(v) for v in out.values())
    g_graphs, d_graphs = map(len, graphs)
    assert (g_graphs, d_graphs) == (1, 2)
    torch._dynamo.reset()
