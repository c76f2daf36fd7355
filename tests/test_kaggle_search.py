"""preprocess.py with no --src finds CelebA where a Kaggle notebook mounts it
(the mount root monkeypatched to a fake /kaggle/input in tmp_path)."""
import json

import numpy as np
import pytest

from preprocessing import celeba
from utils import UserError

from test_preprocess import assert_crop, make_celeba, run


@pytest.fixture
def kaggle_input(tmp_path, monkeypatch):
    """An empty working folder (no data/) and an empty fake Kaggle input root."""
    root = tmp_path / "kaggle" / "input"
    root.mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(celeba, "KAGGLE_INPUT", root)
    return root


def test_preprocess_finds_the_kaggle_celeba_dataset(kaggle_input, tmp_path):
    """jessicali9530/celeba-dataset's layout: the images one folder deeper, CSVs beside it."""
    src = make_celeba(kaggle_input / "celeba-dataset" / "img_align_celeba" / "img_align_celeba", n=3)
    (kaggle_input / "celeba-dataset" / "list_attr_celeba.csv").write_text("image_id,Smiling\n000001.jpg,1\n")
    run("--out", tmp_path / "out", "--sizes", "16")
    meta = json.loads((tmp_path / "out" / "celeba_16.json").read_text())
    assert meta["source"] == str(src) and meta["count"] == 3
    images = np.load(tmp_path / "out" / "celeba_16.npy")
    assert images.shape == (3, 16, 16, 3)
    assert_crop(images)  # recognised as aligned CelebA: the 140 px face box, not the centred square


def test_search_order_local_data_then_kaggle_then_advice(kaggle_input, tmp_path):
    with pytest.raises(UserError, match=r"no CelebA found.*/kaggle/input/celeba-dataset.*Kaggle, attach CelebA"):
        run("--out", tmp_path / "out")
    other = make_celeba(kaggle_input / "my-celeba-upload" / "img_align_celeba", n=1)  # another slug
    assert celeba.find_default_source() == other
    nested = make_celeba(kaggle_input / "celeba-dataset" / "img_align_celeba" / "img_align_celeba", n=1)
    assert celeba.find_default_source() == nested  # the common data set first
    local = make_celeba(tmp_path / "work" / "data" / "celeba" / "img_align_celeba", n=1)
    assert celeba.find_default_source().resolve() == local  # the user's own copy beats an attached one
