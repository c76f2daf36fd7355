"""preprocessing.sources without the command line: a --src opened into a typed
``Source``, --limit across several of them, and their joint signature."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocessing import celeba
from preprocessing.sources import Source, limited_names, open_source, signature_and_meta
from utils import UserError


def folder_of(path: Path, size: tuple[int, int], n: int) -> Path:
    path.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 10 * k, np.uint8)).save(path / f"{k:03d}.png")
    return path


def test_open_source_is_a_typed_record_of_what_the_folder_holds(tmp_path):
    (folder_of(tmp_path / "photos", (40, 30), 3) / "notes.txt").write_text("ignored")
    source = open_source(tmp_path / "photos")
    assert isinstance(source, Source) and dataclasses.is_dataclass(source)
    assert source.names == ["000.png", "001.png", "002.png"] and source.other == 1
    assert (source.celeba, source.aligned, source.crop, source.scaled) == (False, False, "square", False)
    assert source.first_size == (40, 30) and source.attributes_path is None
    assert source.crop_text == "crop square (5, 0, 35, 30) of 40x30"
    with pytest.raises(dataclasses.FrozenInstanceError):
        source.crop = 140


def test_half_size_celeba_by_its_shape_gets_the_scaled_face_box(tmp_path, capsys):
    source = open_source(folder_of(tmp_path / "faces", (89, 109), 2))
    assert source.aligned and not source.celeba and source.crop == celeba.CELEBA_CROP and source.scaled
    assert "shape of aligned CelebA" in capsys.readouterr().out
    signature, meta = source.signature_and_meta(source.names)
    assert signature["face_box"] == "celeba, scaled with the image"
    assert meta["crop"]["first_image_box"] == [9.5, 19.5, 79.5, 89.5]
    assert meta["crop"]["aligned_celeba"] == "by 178:218 images"


def test_limit_counts_across_sources_and_signatures_list_each(tmp_path):
    sources = [open_source(folder_of(tmp_path / name, (20, 20), n), crop=16) for name, n in (("a", 2), ("b", 3))]
    parts = limited_names(sources, 3)
    assert parts == [["000.png", "001.png"], ["000.png"]]
    assert limited_names(sources, None) == [s.names for s in sources]
    signature, meta = signature_and_meta(sources, parts)
    assert signature["source"] == [str((tmp_path / name).resolve()) for name in "ab"]
    assert signature["crop"] == [16, 16] and meta["counts_per_source"] == [2, 1]


def test_open_source_errors_before_any_output(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        open_source(tmp_path / "empty")
    with pytest.raises(UserError, match="list_eval_partition"):
        open_source(folder_of(tmp_path / "img_align_celeba", (178, 218), 1), split="test")
