"""preprocess.py and its parts in preprocessing/ on real (tiny) JPEG / PNG files made in tmp_path."""
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import preprocess
from preprocessing import decode, writer
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
RED, GREEN, BLUE = (220, 0, 0), (0, 200, 0), (0, 0, 230)


def celeba_like(seed: int = 0) -> Image.Image:
    """178x218 red image; the 140 px CelebA crop box (19, 39, 159, 179) holds a
    green left half and a blue right half."""
    array = np.zeros((218, 178, 3), np.uint8)
    array[:] = RED
    array[39:179, 19:89] = GREEN
    array[39:179, 89:159] = BLUE
    array[5, 5 + seed] = 255  # files differ a little (outside the box)
    return Image.fromarray(array)


def make_celeba(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    for k in range(n):
        celeba_like(k).save(folder / f"{k + 1:06d}.jpg", quality=95, subsampling=0)
    return folder


def run(*args):
    return preprocess.main([str(a) for a in args] + ["--workers", "1"])


def assert_crop(images: np.ndarray) -> None:
    """Left half green, right half blue, no red border inside the output."""
    s = images.shape[1]
    m = max(1, s // 8)
    left = images[:, m:-m, m : s // 2 - m].reshape(-1, 3).mean(0)
    right = images[:, m:-m, s // 2 + m : -m].reshape(-1, 3).mean(0)
    assert np.abs(left - GREEN).max() < 25, left
    assert np.abs(right - BLUE).max() < 25, right
    assert images[..., 0].max() < 100, "red from outside the crop box leaked in: the box is wrong"


def test_crop_box_is_centred():
    assert decode.crop_box(178, 218, 140) == (19, 39, 159, 179)
    assert decode.crop_box(178, 218, 108) == (35, 55, 143, 163)
    assert decode.crop_box(178, 218, "square") == (0, 20, 178, 198)
    assert decode.crop_box(101, 50, "square") == (25, 0, 75, 50)
    assert decode.crop_box(60, 80, 140) == (0, 10, 60, 70)  # smaller than N: largest centred square
    assert "(19, 39, 159, 179)" in preprocess.build_parser().format_help().replace("\n", " ")


@pytest.mark.parametrize("sizes", [[16], [16, 64], [150]])  # JPEG draft 1/8, 1/2, none (upscale)
def test_celeba_folder_shapes_crop_and_range(tmp_path, sizes):
    src = make_celeba(tmp_path / "img_align_celeba")
    out = tmp_path / "out"
    assert run("--src", src, "--out", out, "--sizes", *sizes) == 0
    for s in sizes:
        images = np.load(out / f"celeba_{s}.npy", mmap_mode="r")
        assert images.shape == (3, s, s, 3) and images.dtype == np.uint8
        assert_crop(np.asarray(images))
        meta = json.loads((out / f"celeba_{s}.json").read_text())
        assert meta["count"] == 3 and meta["size"] == s and meta["skipped"] == []
        assert meta["crop"]["side"] == 140 and meta["filter"].startswith("lanczos")
        assert meta["source"] == str(src.resolve()) and len(meta["fingerprint"]) >= 16
        with Image.open(out / f"celeba_{s}_preview.png") as preview:
            assert preview.format == "PNG" and preview.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"celeba_{s}{ext}" for s in sizes for ext in (".npy", ".json", "_preview.png"))


def test_aligned_celeba_recognised_by_its_178x218_images_whatever_the_name(tmp_path, capsys):
    src = make_celeba(tmp_path / "my_faces")  # CelebA's images in a folder named otherwise
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"photos/{f.name}")
    for source, name in ((src, "my_faces"), (archive, "faces_zip")):
        capsys.readouterr()
        run("--src", source, "--out", tmp_path / "out", "--sizes", "16")
        out = capsys.readouterr().out
        images = np.load(tmp_path / "out" / f"{name}_16.npy")
        assert images.shape == (3, 16, 16, 3)
        assert_crop(images)  # the 140 px face box, not the largest square (which holds red)
        meta = json.loads((tmp_path / "out" / f"{name}_16.json").read_text())
        assert meta["crop"]["side"] == 140 and meta["crop"]["aligned_celeba"] == "by 178:218 images"
        assert "shape of aligned CelebA" in out
        assert "3 images, 0 skipped, crop 140 (19, 39, 159, 179) of 178x218, " in out.splitlines()[-1]


def test_other_sizes_get_the_largest_square_and_the_summary_says_so(tmp_path, capsys):
    src = tmp_path / "img_rect"
    src.mkdir()
    for k in range(2):
        Image.fromarray(np.full((218, 180, 3), 90 + k, np.uint8)).save(src / f"{k}.png")
    run("--src", src, "--out", tmp_path / "out", "--sizes", "8")
    out = capsys.readouterr().out
    assert "CelebA" not in out
    assert "2 images, 0 skipped, crop square (0, 19, 180, 199) of 180x218, " in out.splitlines()[-1]
    assert json.loads((tmp_path / "out" / "img_rect_8.json").read_text())["crop"]["aligned_celeba"] is False
    celeba = make_celeba(tmp_path / "renamed")  # 178x218, but the user's --crop wins
    run("--src", celeba, "--out", tmp_path / "out", "--sizes", "8", "--crop", "square")
    out = capsys.readouterr().out
    assert "aligned CelebA" not in out and "crop square (0, 20, 178, 198) of 178x218" in out


def test_each_size_independent_of_the_others_requested(tmp_path):
    src = make_celeba(tmp_path / "img_align_celeba")
    run("--src", src, "--out", tmp_path / "a", "--sizes", "16")
    run("--src", src, "--out", tmp_path / "b", "--sizes", "16", "128")
    assert (tmp_path / "a" / "celeba_16.npy").read_bytes() == (tmp_path / "b" / "celeba_16.npy").read_bytes()


def test_zip_read_in_place_matches_folder(tmp_path):
    src = make_celeba(tmp_path / "img_align_celeba")
    archive = tmp_path / "zipped" / "img_align_celeba.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"img_align_celeba/{f.name}")
    run("--src", src, "--out", tmp_path / "a", "--sizes", "32")
    run("--src", archive, "--out", tmp_path / "b", "--sizes", "32")
    a, b = np.load(tmp_path / "a" / "celeba_32.npy"), np.load(tmp_path / "b" / "celeba_32.npy")
    assert b.shape == (3, 32, 32, 3) and np.array_equal(a, b)
    assert os.listdir(archive.parent) == ["img_align_celeba.zip"]  # nothing extracted


def test_any_folder_recursive_with_mode_conversions(tmp_path):
    src = tmp_path / "pets"
    (src / "sub" / "deeper").mkdir(parents=True)
    Image.new("L", (40, 30), 77).save(src / "a_gray.png")
    Image.new("CMYK", (30, 40), (0, 255, 255, 0)).save(src / "sub" / "b_cmyk.jpg", quality=95)
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(src / "sub" / "c_palette.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(src / "sub" / "deeper" / "d_transparent.png")
    Image.new("RGB", (24, 24), (5, 6, 250)).save(src / "e.bmp")
    Image.new("RGB", (24, 24), (250, 6, 5)).save(src / "f.webp", lossless=True)
    (src / "notes.txt").write_text("not an image, ignored")
    run("--src", src, "--out", tmp_path / "out", "--sizes", "8")
    images = np.load(tmp_path / "out" / "pets_8.npy")
    meta = json.loads((tmp_path / "out" / "pets_8.json").read_text())
    assert images.shape == (6, 8, 8, 3) and meta["crop"]["side"] == "square" and meta["skipped"] == []
    centre = images[:, 4, 4].astype(int)  # sorted by relative path: a, e, f, sub/b, sub/c, sub/deeper/d
    assert np.all(np.abs(centre[0] - 77) <= 1)  # grey on all three channels
    assert np.abs(centre[1] - (5, 6, 250)).max() <= 2 and np.abs(centre[2] - (250, 6, 5)).max() <= 2
    assert centre[3][0] > 200 and centre[3][1] < 60 and centre[3][2] < 60  # CMYK (0, 255, 255, 0) is red
    assert np.abs(centre[4] - (10, 200, 30)).max() <= 2  # palette
    assert np.all(centre[5] == 255)  # transparent -> white
    assert meta["ignored_non_image_files"] == 1


def test_corrupt_and_truncated_files_skipped_and_reported(tmp_path):
    src = make_celeba(tmp_path / "img_align_celeba", n=3)
    good = (src / "000001.jpg").read_bytes()
    (src / "000004.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (src / "000005.jpg").write_text("this is not a jpeg")  # corrupt
    out = tmp_path / "out"
    preprocess.main(["--src", str(src), "--out", str(out), "--sizes", "16", "--workers", "2"])  # the pool path
    images = np.load(out / "celeba_16.npy")
    meta = json.loads((out / "celeba_16.json").read_text())
    assert images.shape == (3, 16, 16, 3) and meta["count"] == 3
    assert_crop(images)
    reasons = dict(meta["skipped"])
    assert set(reasons) == {"000004.jpg", "000005.jpg"}
    assert "truncated" in reasons["000004.jpg"].lower()
    assert "identify" in reasons["000005.jpg"].lower()


def test_empty_folder_is_one_line_error_exit_2_no_output(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "preprocess.py"), "--src", str(tmp_path / "empty"),
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(tmp_path / "empty") in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_bad_inputs_raise_user_error_before_any_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="missing"):
        run("--src", tmp_path / "missing", "--out", out)
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(UserError, match="bad.zip"):
        run("--src", tmp_path / "bad.zip", "--out", out)
    src = make_celeba(tmp_path / "img_align_celeba", n=1)
    with pytest.raises(UserError, match="list_eval_partition"):
        run("--src", src, "--out", out, "--split", "test")
    with pytest.raises(UserError, match="--sizes"):
        run("--src", src, "--out", out, "--sizes", "0")
    assert not out.exists()
    monkeypatch.chdir(tmp_path / "img_align_celeba")  # no data/ here: the default search fails with advice
    with pytest.raises(UserError, match=r"data/celeba/img_align_celeba.*--download"):
        run()


def test_download_failure_gives_the_same_advice(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to establish a new connection: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CelebA", offline)
    with pytest.raises(UserError) as err:
        run("--download", "--out", tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and "gdown" in message and "img_align_celeba.zip" in message
    assert not (tmp_path / "out").exists()


def test_drive_quota_refusal_says_so_in_one_line(tmp_path, monkeypatch):
    import torchvision

    def quota(*args, **kwargs):  # gdown's message: the reason comes on a later line
        raise RuntimeError("Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file "
                           "recently. Please try accessing the file again later.\n\nYou may still be able to ...")

    monkeypatch.setattr(torchvision.datasets, "CelebA", quota)
    with pytest.raises(UserError) as err:
        run("--download", "--out", tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and "quota" in message and "img_align_celeba.zip" in message
    assert "--download" not in message  # trying again now would meet the same quota
    assert not (tmp_path / "out").exists()


def test_split_uses_partition_file(tmp_path):
    src = make_celeba(tmp_path / "celeba" / "img_align_celeba", n=3)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n000003.jpg 2\n")
    run("--src", src, "--out", tmp_path / "out", "--sizes", "8", "--split", "test")
    meta = json.loads((tmp_path / "out" / "celeba_test_8.json").read_text())
    assert meta["count"] == 2 and meta["split"] == "test"


def test_idempotent_rerun_force_and_changed_options(tmp_path, capsys):
    src = make_celeba(tmp_path / "img_align_celeba")
    out = tmp_path / "out"
    run("--src", src, "--out", out, "--sizes", "8")
    stamp = (out / "celeba_8.npy").stat().st_mtime_ns, (out / "celeba_8.json").read_text()
    capsys.readouterr()
    run("--src", src, "--out", out, "--sizes", "8")
    assert "up to date" in capsys.readouterr().out
    assert ((out / "celeba_8.npy").stat().st_mtime_ns, (out / "celeba_8.json").read_text()) == stamp
    run("--src", src, "--out", out, "--sizes", "8", "--force")
    assert (out / "celeba_8.npy").stat().st_mtime_ns != stamp[0]
    fingerprint = json.loads(stamp[1])["fingerprint"]
    assert json.loads((out / "celeba_8.json").read_text())["fingerprint"] == fingerprint  # same content
    run("--src", src, "--out", out, "--sizes", "8", "--crop", "100")  # another option: rebuilt
    assert json.loads((out / "celeba_8.json").read_text())["crop"]["side"] == 100
    celeba_like(9).save(src / "000009.jpg")  # new input file: rebuilt
    run("--src", src, "--out", out, "--sizes", "8", "--crop", "100")
    assert np.load(out / "celeba_8.npy").shape[0] == 4


def test_failed_run_leaves_previous_output_and_no_temp_files(tmp_path, monkeypatch):
    src = make_celeba(tmp_path / "img_align_celeba", n=4)
    out = tmp_path / "out"
    run("--src", src, "--out", out, "--sizes", "8", "16")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = decode.decode_task, []

    def dies_midway(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("simulated crash after two images were written")
        return real(task)

    monkeypatch.setattr(decode, "decode_task", dies_midway)
    with pytest.raises(RuntimeError, match="simulated"):
        run("--src", src, "--out", out, "--sizes", "8", "16", "--force")
    assert len(calls) == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, same bytes, no temps


def test_synthetic_faces_deterministic_and_varied(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        preprocess.main(["--synthetic", "6", "--seed", str(seed), "--sizes", "32", "--out", str(tmp_path / name),
                         "--workers", "1"])
    a, b, c = (np.load(tmp_path / n / "synthetic_32.npy") for n in "abc")
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert min(np.abs(a[i].astype(int) - a[j]).mean() for i in range(6) for j in range(i)) > 10  # all differ
    meta = json.loads((tmp_path / "a" / "synthetic_32.json").read_text())
    assert meta["count"] == 6 and meta["seed"] == 1 and meta["fingerprint"]


def smaller_celeba(folder: Path, size: tuple[int, int], n: int = 3) -> Path:
    """``make_celeba``'s images reduced to ``size``, as the half- and quarter-size copies of CelebA circulate."""
    folder.mkdir(parents=True)
    for k in range(n):
        celeba_like(k).resize(size, Image.LANCZOS).save(folder / f"{k + 1:06d}.png")
    return folder


def test_face_box_scales_with_celeba_at_any_size():
    assert decode.face_box(178, 218, 140, True) == (19, 39, 159, 179)  # full size: the integer box
    assert decode.face_box(89, 109, 140, True) == (9.5, 19.5, 79.5, 89.5)
    assert decode.face_box(89, 109, 108, True) == (17.5, 27.5, 71.5, 81.5)  # --crop counts full-size pixels
    assert decode.face_box(44, 54, 140, True) == pytest.approx(tuple(v * 44 / 178 for v in (19, 39, 159, 179)))
    assert decode.face_box(89, 109, "square", True) == decode.crop_box(89, 109, "square")
    assert decode.face_box(89, 109, 140, False) == decode.crop_box(89, 109, 140)  # not CelebA
    assert decode.face_box(100, 100, 140, True) == decode.crop_box(100, 100, 140)  # not CelebA's shape


@pytest.mark.parametrize("size", [(89, 109), (44, 54)])
@pytest.mark.parametrize("folder", ["img_align_celeba", "small_faces"])  # by name, or by the images' shape
def test_half_and_quarter_size_celeba_get_the_full_size_face(tmp_path, size, folder):
    full, small = make_celeba(tmp_path / "full" / "img_align_celeba"), smaller_celeba(tmp_path / folder, size)
    run("--src", full, "--out", tmp_path / "a", "--sizes", "32")
    run("--src", small, "--out", tmp_path / "b", "--sizes", "32")
    name = "celeba" if folder == "img_align_celeba" else folder
    images = np.load(tmp_path / "b" / f"{name}_32.npy")
    assert_crop(images)  # the face box, not the largest square (which holds red)
    assert np.abs(images.astype(int) - np.load(tmp_path / "a" / "celeba_32.npy")).mean() < 12  # the same face
    crop = json.loads((tmp_path / "b" / f"{name}_32.json").read_text())["crop"]
    scale = size[0] / 178
    assert crop["scaled_with_the_image"] and crop["first_image_box"] == pytest.approx([19 * scale, 39 * scale,
                                                                                      159 * scale, 179 * scale])


def test_evaluate_frames_a_half_size_folder_as_preprocess_does(tmp_path):
    from metrics import features

    small = smaller_celeba(tmp_path / "img_align_celeba", (89, 109))
    run("--src", small, "--out", tmp_path / "out", "--sizes", "32")
    assert np.array_equal(features.load_folder(small, size=32), np.load(tmp_path / "out" / "celeba_32.npy"))


def write_attrs(path: Path, rows: dict, names=("Smiling", "Male", "Eyeglasses"), count=None) -> Path:
    lines = [str(len(rows) if count is None else count), " ".join(names)]
    lines += [f"{file} " + " ".join(f"{v:2d}" for v in values) for file, values in rows.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = {"000001.jpg": (1, -1, -1), "000003.jpg": (-1, 1, 1), "009999.jpg": (1, 1, 1)}  # no row for 000002


@pytest.mark.parametrize("layout", ["beside", "Anno", "inside", "flag"])
def test_attribute_labels_in_the_arrays_order(tmp_path, layout, capsys):
    root = tmp_path / "celeba"
    src = make_celeba(root / "Img" / "img_align_celeba" if layout == "Anno" else root / "img_align_celeba")
    place = {"beside": root / "list_attr_celeba.txt", "Anno": root / "Anno" / "list_attr_celeba.txt",
             "inside": src / "list_attr_celeba.txt", "flag": tmp_path / "labels.txt"}[layout]
    write_attrs(place, ROWS)
    run("--src", src, "--out", tmp_path / "out", "--sizes", "16", "32", *(["--attrs", place] if layout == "flag" else []))
    assert "labels: 2 of 3 images have a row" in capsys.readouterr().out
    for s in (16, 32):
        attrs = np.load(tmp_path / "out" / f"celeba_{s}.attrs.npz")
        assert list(attrs["names"]) == ["Smiling", "Male", "Eyeglasses"] and attrs["labels"].dtype == np.int8
        assert list(attrs["files"]) == ["000001.jpg", "000002.jpg", "000003.jpg"]
        assert attrs["labels"].tolist() == [[1, -1, -1], [0, 0, 0], [-1, 1, 1]]
        meta = json.loads((tmp_path / "out" / f"celeba_{s}.json").read_text())["attributes"]
        assert meta["images_with_a_row"] == 2 and meta["rows_without_an_image"] == 1


def test_attribute_rows_follow_skipped_images_and_the_file_rebuilds(tmp_path, capsys):
    src = make_celeba(tmp_path / "celeba" / "img_align_celeba")
    (src / "000002.jpg").write_text("not a jpeg")  # skipped: its row must go with it
    labels = write_attrs(tmp_path / "celeba" / "list_attr_celeba.txt", {"000001.jpg": (1, 1, 1), "000002.jpg": (-1, -1, -1), "000003.jpg": (1, -1, 1)})
    run("--src", src, "--out", tmp_path / "out", "--sizes", "16")
    attrs = np.load(tmp_path / "out" / "celeba_16.attrs.npz")
    assert list(attrs["files"]) == ["000001.jpg", "000003.jpg"] and attrs["labels"].tolist() == [[1, 1, 1], [1, -1, 1]]
    assert len(np.load(tmp_path / "out" / "celeba_16.npy")) == 2
    run("--src", src, "--out", tmp_path / "out", "--sizes", "16")
    assert "up to date" in capsys.readouterr().out
    labels.unlink()  # labels gone: the outputs are rebuilt without them, and the old label file goes too
    run("--src", src, "--out", tmp_path / "out", "--sizes", "16")
    assert not (tmp_path / "out" / "celeba_16.attrs.npz").exists()
    assert "attributes" not in json.loads((tmp_path / "out" / "celeba_16.json").read_text())


@pytest.mark.parametrize("text, line", [
    ("3\nSmiling Male\n000001.jpg 1 -1\n000002.jpg 1\n000003.jpg 1 1\n", 4),  # a value missing
    ("3\nSmiling Male\n000001.jpg 1 -1\n000002.jpg 1 2\n000003.jpg 1 1\n", 4),  # not 1 / -1
    ("3\nSmiling Male\n000001.jpg 1 -1\n000001.jpg 1 1\n000003.jpg 1 1\n", 4),  # a second row
    ("Smiling Male\n000001.jpg 1 -1\n", 1),  # no count line
    ("5\nSmiling Male\n000001.jpg 1 -1\n", 1),  # the count is wrong
])
def test_a_malformed_attribute_file_names_its_line_and_writes_nothing(tmp_path, text, line):
    src = make_celeba(tmp_path / "celeba" / "img_align_celeba")
    (tmp_path / "celeba" / "list_attr_celeba.txt").write_text(text)
    with pytest.raises(UserError, match=f"list_attr_celeba.txt line {line}: "):
        run("--src", src, "--out", tmp_path / "out", "--sizes", "16")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    result = subprocess.run([sys.executable, "preprocess.py", "--src", str(src), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and f"line {line}:" in result.stderr


def test_several_sources_make_one_array_with_their_labels(tmp_path, capsys):
    full = make_celeba(tmp_path / "sample" / "img_align_celeba", n=2)  # no label file
    half = smaller_celeba(tmp_path / "half" / "img_align_celeba", (89, 109), n=3)
    write_attrs(tmp_path / "half" / "list_attr_celeba.txt", {k.replace(".jpg", ".png"): v for k, v in ROWS.items()})
    with pytest.raises(UserError, match="--name"):
        run("--src", full, "--src", half, "--out", tmp_path / "out", "--sizes", "16")
    run("--src", full, "--src", half, "--name", "faces", "--out", tmp_path / "out", "--sizes", "16")
    assert "labels: 2 of 5 images have a row" in capsys.readouterr().out
    images = np.load(tmp_path / "out" / "faces_16.npy")
    assert images.shape == (5, 16, 16, 3)
    assert_crop(images)  # each source cut with its own face box
    attrs = np.load(tmp_path / "out" / "faces_16.attrs.npz")
    assert attrs["labels"].tolist() == [[0, 0, 0], [0, 0, 0], [1, -1, -1], [0, 0, 0], [-1, 1, 1]]
    assert [Path(f).name for f in attrs["files"]] == ["000001.jpg", "000002.jpg", "000001.png", "000002.png", "000003.png"]
    meta = json.loads((tmp_path / "out" / "faces_16.json").read_text())
    assert meta["source"] == [str(full.resolve()), str(half.resolve())] and meta["counts_per_source"] == [2, 3]
    assert [c["scaled_with_the_image"] for c in meta["crop"]] == [False, True]
    run("--src", full, "--src", half, "--name", "faces", "--out", tmp_path / "out", "--sizes", "16")
    assert "up to date" in capsys.readouterr().out
    run("--src", full, "--src", half, "--name", "faces", "--out", tmp_path / "out", "--sizes", "16", "--limit", "3")
    assert len(np.load(tmp_path / "out" / "faces_16.npy")) == 3  # --limit counts across the sources, in order
    assert json.loads((tmp_path / "out" / "faces_16.json").read_text())["counts_per_source"] == [2, 1]


def test_real_half_size_celeba_with_labels(tmp_path, celeba_half):
    run("--src", celeba_half, "--out", tmp_path, "--sizes", "64", "--limit", "50")
    attrs = np.load(tmp_path / "celeba_64.attrs.npz")
    assert attrs["labels"].shape == (50, 40) and set(np.unique(attrs["labels"])) == {-1, 1}
    assert "Smiling" in list(attrs["names"]) and attrs["files"][0] == "000001.jpg"
    assert json.loads((tmp_path / "celeba_64.json").read_text())["crop"]["first_image_box"] == [9.5, 19.5, 79.5, 89.5]


def test_real_celeba_sample(tmp_path, celeba_sample):
    before = sorted(os.listdir(celeba_sample.parent))
    run("--src", celeba_sample, "--out", tmp_path, "--sizes", "32", "--limit", "64")
    images = np.load(tmp_path / "celeba_32.npy", mmap_mode="r")
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert 0 <= images.min() and images.max() == 255 and 60 < images.mean() < 200
    assert sorted(os.listdir(celeba_sample.parent)) == before  # nothing written beside the shared data


def test_stream_writer_header_shrinks_in_place(tmp_path):
    path = tmp_path / "x.npy"
    stream = writer.NpyStreamWriter(str(path), capacity=10**7, size=4)  # room for 10 million, 3 written
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    for image in images:
        stream.append(image.tobytes())
    stream.close()
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == (3, 4, 4, 3) and np.array_equal(loaded, images)
    assert loaded.offset % 64 == 0 and path.stat().st_size == loaded.offset + images.nbytes
