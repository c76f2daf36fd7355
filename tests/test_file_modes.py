"""Outputs get the permissions a plain open() gives a new file under the
user's umask (the group can read a shared data set and weights), not the
0600 of a temp file from tempfile.mkstemp."""
import os
import stat

import numpy as np
import pytest
import torch

import preprocess
import utils
from metrics.features import write_statistics
from network import Generator, save_generator_params


@pytest.fixture
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], indirect=True)
def test_every_output_kind_gets_0666_minus_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    data = tmp_path / "data"
    preprocess.main(["--synthetic", "3", "--sizes", "8", "--workers", "1", "--out", str(data)])
    outputs = [data / "synthetic_8.npy", data / "synthetic_8.json", data / "synthetic_8_preview.png"]

    config = {"size": 64, "nz": 8, "ngf": 4, "nc": 3}
    state = Generator(**config).state_dict()
    save_generator_params(tmp_path / "run" / "generator.params", config, state, state)
    utils.torch_save({"netG": state, "step": 1}, tmp_path / "run" / "checkpoint.pt")
    utils.save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "run" / "samples" / "step_000001.png")
    rng = np.random.default_rng(0)
    write_statistics({"mu": rng.random(4), "sigma": np.eye(4), "n": 10, "size": 8},
                              tmp_path / "data" / "synthetic_8.fid.npz")
    outputs += [tmp_path / "run" / "generator.params", tmp_path / "run" / "checkpoint.pt",
                tmp_path / "run" / "samples" / "step_000001.png", tmp_path / "data" / "synthetic_8.fid.npz"]

    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in outputs} == {
        str(p.relative_to(tmp_path)): oct(expected) for p in outputs}
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "temp files left behind"
    assert torch.load(tmp_path / "run" / "generator.params", weights_only=True)["config"]["ngf"] == 4


def test_overwrite_also_gets_the_umask_mode_and_a_failed_write_leaves_no_temp(tmp_path):
    before = os.umask(0o022)
    try:
        target = tmp_path / "out.json"
        target.write_text("old\n")
        os.chmod(target, 0o600)  # e.g. written by an older version of this code
        utils.save_json({"a": 1}, target)
        assert mode(target) == 0o644
        with pytest.raises(RuntimeError), utils.atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash mid-write")
        assert target.read_text() == '{\n  "a": 1\n}\n'
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    finally:
        os.umask(before)
