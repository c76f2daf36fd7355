"""bench_quality.py: the fixed held-out split, snapshots by exact resume, and
the report (table, curve, grid beside real faces) -- tiny nets, no Inception."""
import json

import numpy as np
from PIL import Image

import bench_quality
import utils


def image_folder(tmp_path, n=12):
    folder = tmp_path / "faces"
    folder.mkdir(parents=True)
    for k in range(n):  # each image one flat colour: its value tells which file it came from
        Image.fromarray(np.full((70, 70, 3), 10 * k, np.uint8)).save(folder / f"{k:06d}.png")
    return folder


def test_the_last_files_by_name_are_held_out_and_never_trained_on(tmp_path):
    train, heldout = bench_quality.split_data(image_folder(tmp_path), "t", 64, 4, tmp_path / "out")
    train_images, heldout_images = np.load(train), np.load(heldout)
    assert [int(img[32, 32, 0]) for img in heldout_images] == [80, 90, 100, 110]  # files 8..11
    assert [int(img[32, 32, 0]) for img in train_images] == list(range(0, 80, 10))
    mtime = heldout.stat().st_mtime_ns
    assert bench_quality.split_data(image_folder(tmp_path / "x"), "t", 64, 4, tmp_path / "out")[1] == heldout
    assert heldout.stat().st_mtime_ns == mtime  # written once


def test_train_only_makes_one_snapshot_per_point_by_resuming(tmp_path, one_thread):
    argv = ["--src", str(image_folder(tmp_path)), "--name", "t", "--holdout", "4", "--steps", "4",
            "--eval-every", "2", "--ngf", "4", "--ndf", "4", "--batch-size", "4", "--out", str(tmp_path / "out"),
            "--device", "cpu", "--train-only"]
    assert bench_quality.main(argv) == 0
    run = tmp_path / "out" / "t64-classic-g4d4b4"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step_000002.params", "step_000004.params"]
    assert utils.torch_load(run / "checkpoint.pt")["step"] == 4
    before = (run / "snapshots" / "step_000004.params").stat().st_mtime_ns
    assert bench_quality.main(argv) == 0  # done already: nothing retrained
    assert (run / "snapshots" / "step_000004.params").stat().st_mtime_ns == before


def test_report_draws_the_curve_and_the_grid_beside_real_faces(tmp_path, one_thread):
    out, assets = tmp_path / "out", tmp_path / "assets"
    src = image_folder(tmp_path)
    base = ["--src", str(src), "--name", "t", "--holdout", "4", "--ngf", "4", "--ndf", "4", "--batch-size", "4",
            "--out", str(out), "--device", "cpu", "--assets", str(assets)]
    assert bench_quality.main(base + ["--steps", "2", "--eval-every", "2", "--train-only"]) == 0
    snapshot = out / "t64-classic-g4d4b4" / "snapshots" / "step_000002.params"
    for weights, fid in (("ema", 300.0), ("raw", 320.0)):
        utils.append_jsonl({"variant": "classic", "data": "t", "size": 64, "ngf": 4, "ndf": 4, "batch_size": 4,
                            "step": 2, "images_seen": 8, "weights": weights, "fid": fid, "kid": 0.3,
                            "kid_std": 0.01, "fid_n": 10, "real_n": 4, "params": str(snapshot)},
                           out / "quality.jsonl")
    assert bench_quality.main(base + ["--report"]) == 0
    assert (assets / "quality_t_64.png").is_file()
    grid = np.asarray(Image.open(assets / "quality_t_64_classic_grid.png"))
    assert grid.shape[1] > 2 * grid.shape[0] * 0.9  # samples and real faces side by side
    rows = bench_quality.table([json.loads(x) for x in (out / "quality.jsonl").read_text().splitlines()])
    assert "| t | 64 | classic | 4/4, 4 | 2 | 8 | ema | 300.0 |" in rows
