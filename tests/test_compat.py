"""Format-1 checkpoints and their generator.params (tests/fixtures/v1_run,
see its README) still load, sample and resume."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import generator
import network
import train
import utils

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1_run"

pytestmark = pytest.mark.usefixtures("one_thread")


def fixture_data(tmp_path) -> Path:
    """The 16 random images the fixture runs were trained on (see fixtures/v1_run/README.md)."""
    path = tmp_path / "faces_64.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("name", ["classic", "all_options"])
def test_an_old_run_resumes_with_its_config_and_state(tmp_path, name, capsys):
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    old = utils.torch_load(run / "checkpoint.pt")
    assert old["format"] == "dcgan-train-checkpoint/1" and "steps" in old["trainer"]  # the old, flat layout
    data = fixture_data(tmp_path)
    assert train.main(["--resume", "--out", str(run), "--data", str(data), "--params", str(tmp_path / "g.params"),
                       "--max-steps", "5", "--device", "cpu"]) == 0
    assert "differs from the data" not in capsys.readouterr().err  # the same images, by content
    new = utils.torch_load(run / "checkpoint.pt")
    assert new["step"] == 5 and new["trainer"]["loss"]["steps"] == 5  # the Loss's step count carried on from 3
    kept = {k: v for k, v in old["config"].items() if k not in ("data", "max_steps")}  # the two typed now
    assert {k: new["config"][k] for k in kept} == kept  # every option as the old run had it
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 5]  # old rows kept; then --log-every 50: the final save
    if name == "all_options":
        assert new["trainer"]["loss"]["lecam_anchors"] is not None and new["trainer"]["ada"]["p"] >= 0
        assert old["trainer"]["lecam_anchors"] is not None
    assert not all(torch.equal(old["trainer"]["netG"][k], v) for k, v in new["trainer"]["netG"].items())


@pytest.mark.parametrize("name", ["classic", "all_options"])
def test_an_old_generator_params_samples(tmp_path, name):
    G, config = network.load_generator(FIXTURES / name / "generator.params")
    assert (config["size"], config["nz"], config["ngf"], config["step"]) == (64, 8, 4, 3)
    assert config["weights"] == ("ema" if name == "all_options" else "raw")
    assert G(torch.randn(2, 8)).shape == (2, 3, 64, 64)
    assert generator.main(["--params", str(FIXTURES / name / "generator.params"), "-n", "4", "--out",
                           str(tmp_path / "samples"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "samples").glob("*.png"))) >= 4
