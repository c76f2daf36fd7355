"""The ONNX export: onnxruntime makes the images PyTorch makes (max |difference|
<= 1e-4 at batch 1 and 7, in [-1, 1]), for the shipped generator and a tiny
random one; the JSON beside it; one-line errors; the explorer's runtimes."""
import json
import time

import numpy as np
import pytest
import torch

from explorer import core
from editing.directions import load_directions
from export import onnx_export, onnx_runtime
from export.onnx_export import export_onnx
from network import Generator, load_generator, recompute_bn_stats, save_generator_params
from utils import UserError
from utils.paths import PRETRAINED_PARAMS

pytestmark = pytest.mark.skipif(
    onnx_runtime.onnxruntime is None or not onnx_export.onnx_installed(),
    reason="needs onnx, onnxscript and onnxruntime (pip install -r requirements-export.txt)")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped generator, its directions, and its export (faces.onnx + faces.json)."""
    generator, config = load_generator(PRETRAINED_PARAMS)
    directions = load_directions(PRETRAINED_PARAMS, generator, config["weights"])
    path = tmp_path_factory.mktemp("onnx") / "faces.onnx"
    generator.train()  # the export is of eval mode whatever the module's mode, which it leaves alone
    assert export_onnx(generator, config, dict(zip(directions.names, directions.vectors)), path) == path
    assert generator.training
    return generator.eval(), config, directions, path


def assert_same_images(generator, onnx_generator, nz):
    for batch in (1, 7):
        z = torch.randn(batch, nz, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = generator(z)
        images = onnx_generator(z)
        assert images.shape == expected.shape and images.dtype == torch.float32
        assert (images - expected).abs().max().item() <= TOLERANCE
        assert images.min() >= -1 and images.max() <= 1
        assert torch.equal(onnx_generator(z.numpy()), images)  # an array is taken as a tensor is


def test_the_shipped_generator_gives_the_same_images_in_onnxruntime(shipped):
    generator, config, _, path = shipped
    onnx_generator = onnx_runtime.OnnxGenerator(path)
    assert (onnx_generator.nz, onnx_generator.size, onnx_generator.nc) == (100, 64, 3)
    assert_same_images(generator, onnx_generator, config["nz"])


def test_the_json_beside_it_has_nz_size_config_and_the_directions(shipped):
    _, config, directions, path = shipped
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["nz"], meta["size"], meta["input"], meta["output"]) == (100, 64, "z", "images")
    assert meta["config"] == config
    assert list(meta["directions"]) == directions.names
    assert np.array_equal(np.array(list(meta["directions"].values()), dtype=np.float32), directions.vectors.numpy())


def test_a_tiny_random_generator_exported_in_another_process_gives_the_same_images(tmp_path):
    torch.manual_seed(0)
    generator = recompute_bn_stats(Generator(size=32, nz=8, ngf=4), n=64, batch_size=16)  # BN stats not 0 / 1
    save_generator_params(tmp_path / "tiny.params", {"size": 32, "nz": 8, "ngf": 4, "nc": 3}, generator.state_dict())
    onnx_generator = onnx_runtime.OnnxGenerator(onnx_export.onnx_bytes_apart(tmp_path / "tiny.params"))
    assert (onnx_generator.nz, onnx_generator.size) == (8, 32)
    assert_same_images(generator, onnx_generator, 8)


def test_bad_exports_and_bad_files_are_one_line_and_write_nothing(tmp_path):
    generator = Generator(size=32, nz=8, ngf=4).eval()
    config = {"size": 32, "nz": 8, "ngf": 4, "nc": 3}
    with pytest.raises(UserError, match="'Smiling' has 3 values"):
        export_onnx(generator, config, {"Smiling": [1.0, 2.0, 3.0]}, tmp_path / "g.onnx")
    with pytest.raises(UserError, match="ends in .onnx"):
        export_onnx(generator, config, None, tmp_path / "g.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="not found"):
        onnx_runtime.OnnxGenerator(tmp_path / "missing.onnx")
    (tmp_path / "fake.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not an ONNX model") as err:
        onnx_runtime.OnnxGenerator(tmp_path / "fake.onnx")
    assert "\n" not in str(err.value)


def test_the_explorer_renders_the_same_faces_with_either_runtime(shipped, monkeypatch, capsys):
    generator, config, _, path = shipped
    monkeypatch.setattr(core, "onnx_bytes_apart", lambda params, use_ema: path.read_bytes())  # exported above
    faces = {}
    for runtime in ("torch", "onnx"):
        explorer = core.Explorer.load(PRETRAINED_PARAMS, classifier=None, runtime=runtime)
        name = "onnxruntime" if runtime == "onnx" else "PyTorch"
        assert explorer.runtime == name and f"rendered by {name};" in explorer.summary()
        faces[runtime] = explorer.faces("0-6")[1].astype(int)
    assert np.abs(faces["torch"] - faces["onnx"]).max() <= 1  # 1e-6 apart before rounding to uint8
    explorer = core.Explorer.load(PRETRAINED_PARAMS, classifier=None, runtime="auto")  # made in a thread
    for _ in range(200):
        if not explorer.onnx_pending:
            break
        time.sleep(0.05)
    assert explorer.runtime == "onnxruntime" and "now rendered by onnxruntime" in capsys.readouterr().out

    def failing(params, use_ema):
        raise UserError("the export failed")
    monkeypatch.setattr(core, "onnx_bytes_apart", failing)  # auto: PyTorch goes on; onnx: the one line
    explorer = core.Explorer.load(PRETRAINED_PARAMS, classifier=None, runtime="auto", background=False)
    assert explorer.runtime == "PyTorch" and "the export failed); rendering with PyTorch" in capsys.readouterr().err
    with pytest.raises(UserError, match="the export failed"):
        core.Explorer.load(PRETRAINED_PARAMS, classifier=None, runtime="onnx")
    monkeypatch.setattr(core, "onnxruntime", None)  # without onnxruntime: auto is PyTorch, onnx says what to install
    monkeypatch.setattr(onnx_runtime, "onnxruntime", None)
    assert not core.wants_onnx("auto", "cpu") and not core.wants_onnx("torch", "cpu")
    with pytest.raises(UserError, match="needs onnxruntime: pip install -r requirements-export.txt"):
        core.wants_onnx("onnx", "cpu")
    with pytest.raises(UserError, match="--runtime onnx runs on the CPU"):
        core.wants_onnx("onnx", "cuda")
