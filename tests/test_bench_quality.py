"""The quality bench (python bench_quality.py; benchmarks/quality.py, quality_report.py): the fixed
held-out split, snapshots by exact resume, and the report (table, curve, grid beside real faces) -- tiny nets, no Inception."""
import json

import numpy as np
from PIL import Image

import pytest

import utils
from benchmarks import quality, quality_report


def image_folder(tmp_path, n=12):
    folder = tmp_path / "faces"
    folder.mkdir(parents=True)
    for k in range(n):  # each image one flat colour: its value tells which file it came from
        Image.fromarray(np.full((70, 70, 3), 10 * k, np.uint8)).save(folder / f"{k:06d}.png")
    return folder


def test_the_last_files_by_name_are_held_out_and_never_trained_on(tmp_path):
    train, heldout = quality.split_data(image_folder(tmp_path), "t", 64, 4, tmp_path / "out")
    train_images, heldout_images = np.load(train), np.load(heldout)
    assert [int(img[32, 32, 0]) for img in heldout_images] == [80, 90, 100, 110]  # files 8..11
    assert [int(img[32, 32, 0]) for img in train_images] == list(range(0, 80, 10))
    mtime = heldout.stat().st_mtime_ns
    assert quality.split_data(image_folder(tmp_path / "x"), "t", 64, 4, tmp_path / "out")[1] == heldout
    assert heldout.stat().st_mtime_ns == mtime  # written once


def test_train_only_makes_one_snapshot_per_point_by_resuming(tmp_path, one_thread):
    argv = ["--src", str(image_folder(tmp_path)), "--name", "t", "--holdout", "4", "--steps", "4",
            "--eval-every", "2", "--ngf", "4", "--ndf", "4", "--batch-size", "4", "--out", str(tmp_path / "out"),
            "--device", "cpu", "--train-only"]
    assert quality.main(argv) == 0
    run = tmp_path / "out" / "t64-classic-g4d4b4"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step_000002.params", "step_000004.params"]
    assert utils.torch_load(run / "checkpoint.pt")["step"] == 4
    before = (run / "snapshots" / "step_000004.params").stat().st_mtime_ns
    assert quality.main(argv) == 0  # done already: nothing retrained
    assert (run / "snapshots" / "step_000004.params").stat().st_mtime_ns == before


def test_report_draws_the_curve_and_the_grids_beside_real_faces_and_classic_beside_best(tmp_path, one_thread, capsys):
    out, assets = tmp_path / "out", tmp_path / "assets"
    src = image_folder(tmp_path)
    base = ["--src", str(src), "--name", "t", "--holdout", "4", "--ngf", "4", "--ndf", "4", "--batch-size", "4",
            "--out", str(out), "--device", "cpu", "--assets", str(assets)]
    argv = base + ["--steps", "2", "--eval-every", "2", "--train-only", "--variants", "classic", "best"]
    assert quality.main(argv) == 0
    for variant, fid in (("classic", 300.0), ("best", 200.0)):
        snapshot = out / f"t64-{variant}-g4d4b4" / "snapshots" / "step_000002.params"
        for weights in ("ema", "raw"):
            utils.append_jsonl({"variant": variant, "data": "t", "size": 64, "ngf": 4, "ndf": 4, "batch_size": 4,
                                "step": 2, "images_seen": 8, "weights": weights, "fid": fid + (weights == "raw"),
                                "kid": 0.3, "kid_std": 0.01, "fid_n": 10, "real_n": 4, "params": str(snapshot)},
                               out / "quality.jsonl")
    assert quality.main(base + ["--report"]) == 0
    # best (EMA, what it exports) against classic as shipped (raw) and classic + EMA
    printed = capsys.readouterr().out
    assert "| 2 | 301.0 (0.3000) | 300.0 (0.3000) | 200.0 (0.3000) | 0.66x | 0.67x |" in printed
    # every variant's EMA against classic's EMA, classic first
    assert "| classic | 300.0 |\n| best | 200.0 (0.67x) |" in printed
    assert (assets / "quality_t_64.png").is_file()
    for name in ("quality_t_64_classic_grid.png", "quality_t_64_best_grid.png"):  # 4 samples | 4 held-out faces
        grid = np.asarray(Image.open(assets / name))
        assert grid.shape[1] > 2 * grid.shape[0] * 0.9
    halves = np.asarray(Image.open(assets / "quality_t_64_classic_vs_best.png"))  # 32 | 32 samples
    width = (halves.shape[1] - 8) // 2
    assert halves[:, :width].shape == halves[:, -width:].shape and halves.shape[0] > width
    assert not np.array_equal(halves[:, :width], halves[:, -width:])  # two different generators
    rows = quality_report.table([json.loads(x) for x in (out / "quality.jsonl").read_text().splitlines()])
    assert "| t | 64 | classic | 4/4, 4 | 2 | 8 | ema | 300.0 |" in rows


def test_a_second_seed_trains_its_own_run_and_the_report_shows_the_spread_not_a_mix(tmp_path, capsys):
    args = quality.build_parser().parse_args(["--out", str(tmp_path), "--ngf", "4", "--ndf", "4", "--seed", "1"])
    assert quality.run_dir(args, "best").name == "celeba64-best-g4d4b128-s1"  # seed 0: no suffix
    results = tmp_path / "rows.jsonl"
    for seed, fid in ((0, 100.0), (1, 140.0), (2, 120.0)):
        utils.append_jsonl({"variant": "best", "data": "celeba", "size": 64, "ngf": 4, "ndf": 4, "batch_size": 4,
                            "step": 2, "images_seen": 8, "weights": "ema", "fid": fid, "kid": 0.1, "kid_std": 0.01,
                            "fid_n": 10, "real_n": 4, "params": "absent.params", **({"seed": seed} if seed else {})},
                           results)
    assert quality.main(["--report", "--results", str(results), "--assets", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| best | 4/4, 4 | ema | 2 | 100.0 (seed 0), 140.0 (seed 1), 120.0 (seed 2) | 120.0 | 33% |" in printed
    assert "| celeba | 64 | best | 4/4, 4 | 2 | 8 | ema | 100.0 |" in printed and "| 140.0 |" not in printed


def test_stride_split_gives_every_class_folder_its_share_of_the_held_out_part_and_selection_set():
    mask = quality.heldout_mask(4317, 800, "stride")  # the flowers: 5 class folders in name order
    assert mask.sum() == 800
    folders = np.repeat(np.arange(5), [764, 1052, 784, 733, 984])
    shares = np.bincount(folders[mask], minlength=5) / np.bincount(folders)
    assert shares.min() > 0.17 and shares.max() < 0.20  # tail would take 800 tulips and no daisy
    assert quality.heldout_mask(10, 3, "tail").tolist() == [False] * 7 + [True] * 3
    # the training faces that stand in for real ones (selection set, floor) are spread the same way
    train_folders = folders[~mask]
    chosen = quality.reference_indices(len(train_folders), 800, "stride")
    assert len(set(chosen.tolist())) == 800 and chosen.max() < len(train_folders)
    assert np.bincount(train_folders[chosen], minlength=5).min() > 120  # first 800 by name: daisies only
    assert quality.reference_indices(3517, 800, "tail").tolist() == list(range(800))


def test_scores_against_the_held_out_and_the_selection_faces_from_one_sample(tmp_path, one_thread):
    """ema-bn: the EMA generator with its BatchNorm statistics recomputed; every row
    has the held-out FID (reported) and the selection-set FID (what variants are chosen on)."""
    import torch

    from metrics import features, inception

    out = tmp_path / "out"
    argv = ["--src", str(image_folder(tmp_path)), "--name", "t", "--holdout", "4", "--steps", "2",
            "--eval-every", "2", "--ngf", "4", "--ndf", "4", "--batch-size", "4", "--out", str(out),
            "--device", "cpu", "--train-only"]
    assert quality.main(argv) == 0
    snapshot = out / "t64-classic-g4d4b4" / "snapshots" / "step_000002.params"
    from test_evaluate import random_fid_inception_state

    model = inception.build_inception(random_fid_inception_state())  # random weights: plumbing only
    feats = torch.randn(20, inception.FEATURE_DIMS, dtype=torch.float64)
    held = features.statistics_from_features(feats[:10])
    select = features.statistics_from_features(feats[10:] + 1)
    rows = {w: quality.score(snapshot, w, {"": held, "_sel": select}, model, 4, "cpu")
            for w in ("ema", "raw", "ema-bn")}
    assert all(rows[w]["weights"] == w and rows[w]["step"] == 2 for w in rows)
    assert all(rows[w]["fid"] != rows[w]["fid_sel"] for w in rows)
    assert len({rows[w]["fid"] for w in rows}) == 3  # three different generators
    assert "recall" not in rows["ema"]  # statistics only: no precision and recall
    with_features = quality.score(snapshot, "ema", {"": {**held, "features": feats[:10].float()}}, model, 4, "cpu")
    assert with_features["fid"] == rows["ema"]["fid"] and 0 <= with_features["recall"] <= 1
    assert 0 <= with_features["precision"] <= 1


def test_floor_row_scores_real_training_faces_with_precision_and_recall_when_the_reals_have_features(tmp_path):
    import argparse

    from metrics import features, inception
    from test_evaluate import random_fid_inception_state, smooth_images

    model = inception.build_inception(random_fid_inception_state())  # random weights: plumbing only
    model.weights_label = "random weights"
    train = tmp_path / "t_train_32.npy"
    np.save(train, smooth_images(8, 32, seed=3))
    feats = features.array_features(model, smooth_images(8, 32, seed=4), "cpu")
    real = {**features.statistics_from_features(feats), "kid_features": feats, "n": 8}
    args = argparse.Namespace(size=32, fid_n=6, split="tail", name="t")
    plain = quality.reference_row(args, train, real, model, "cpu", [])
    scored = quality.reference_row(args, train, {**real, "features": feats}, model, "cpu", [])
    assert "recall" not in plain and scored["fid"] == pytest.approx(plain["fid"])
    assert 0 <= scored["precision"] <= 1 and 0 <= scored["recall"] <= 1
    assert quality.reference_row(args, train, real, model, "cpu", [scored]) is None  # once per size and n


def test_table_shows_precision_and_recall_beside_fid_and_dashes_for_rows_without_them():
    row = {"data": "t", "size": 64, "variant": "classic", "ngf": 4, "ndf": 4, "batch_size": 4, "step": 2,
           "images_seen": 8, "weights": "ema", "fid": 300.0, "kid": 0.3, "kid_std": 0.01}
    text = quality_report.table([{**row, "precision": 0.6, "recall": 0.25}, {**row, "weights": "raw"}])
    assert "| ema | 300.0 | 0.60 | 0.25 | 0.3000 ± 0.0100 |" in text
    assert "| raw | 300.0 | - | - | 0.3000 ± 0.0100 |" in text


def test_report_from_a_committed_rows_file_draws_table_and_curve_and_skips_absent_grids(tmp_path, capsys):
    """--results FILE: the rows BENCHMARKS.md quotes redraw their table and curve
    on a clone that lacks the run folders; the grids are skipped with one line."""
    rows, assets = tmp_path / "rows.jsonl", tmp_path / "assets"
    for variant, step, fid in (("classic", 500, 340.0), ("classic", 1000, 300.0), ("best", 1000, 150.0)):
        scores = {"precision": 0.5, "recall": 0.1} if variant == "best" else {}  # rows without them: no P/R point
        utils.append_jsonl({"variant": variant, "data": "t", "size": 128, "ngf": 4, "ndf": 4, "batch_size": 4,
                            "step": step, "images_seen": 4 * step, "weights": "ema", "fid": fid, "kid": 0.3,
                            "kid_std": 0.01, "fid_n": 10, "real_n": 4, "params": str(tmp_path / "gone.params"),
                            **scores}, rows)
    argv = ["--src", str(tmp_path / "no-such-folder"), "--name", "t", "--size", "128", "--out", str(tmp_path / "out"),
            "--assets", str(assets), "--results", str(rows), "--report"]
    assert quality.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| classic | 340.0 | 300.0 |\n| best | - | 150.0 (0.50x) |" in printed
    assert "sample grids skipped: 1 snapshot(s) not here" in printed
    assert (assets / "quality_t_128.png").is_file() and not (tmp_path / "out").exists()


def test_every_variant_is_a_valid_train_config_and_changes_what_its_name_says():
    import train
    from training.config import resolve_config, typed_options, validate

    def config(options):
        resolved = resolve_config(options)
        validate(resolved)
        return resolved

    configs = {name: config(options) for name, options in quality.VARIANTS.items()}  # a typo fails here
    classic, best = configs["classic"], configs["best"]
    assert best["augment"] == config(typed_options(train.build_parser().parse_args(["--augment"])))["augment"]
    assert best["augment"] == "color,translation"  # bare --augment = best's policy (README)
    for name, options in quality.VARIANTS.items():  # each changes its own options of classic or best
        base = best if options.get("recipe") == "best" else classic
        changed = {k for k in configs[name] if configs[name][k] != base[k]}
        assert name in ("classic", "best") or changed == set(options) - {"recipe"}, (name, changed)
    assert {k for k in best if best[k] != classic[k]} == {"recipe", "augment", "ema", "ema_bn_recompute"}


def test_collapse_check_measures_the_worst_rise_after_each_runs_own_minimum(tmp_path, capsys):
    """The no-collapse target: FID may not climb more than 10 % above
    the run's minimum at any later point; each seed is its own run."""
    assert quality_report.rise_after_minimum({500: 300.0, 1000: 116.0, 1500: 128.8, 2000: 124.0}) == \
        (1000, 116.0, 1500, 128.8 / 116.0 - 1)
    assert quality_report.rise_after_minimum({500: 300.0, 1000: 200.0, 1500: 150.0}) == (1500, 150.0, 1500, 0.0)
    results = tmp_path / "rows.jsonl"
    # seed 0 rises 11 %; seed 1 was scored twice (another machine): the re-run, written last, replaces the first
    runs = [(1, (300.0, 100.0, 150.0)), (0, (300.0, 100.0, 111.0)), (1, (300.0, 100.0, 109.0))]
    for seed, fids in runs:
        for step, fid in zip((500, 1000, 1500), fids):
            utils.append_jsonl({"variant": "best", "data": "celeba", "size": 128, "ngf": 4, "ndf": 4, "batch_size": 4,
                                "step": step, "images_seen": 4 * step, "weights": "ema", "fid": fid, "kid": 0.1,
                                "kid_std": 0.01, "fid_n": 10, "real_n": 4, "params": "absent.params", "seed": seed},
                               results)
    assert quality.main(["--report", "--size", "128", "--results", str(results), "--assets", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| best | 4/4, 4 | ema | 0 | 500-1500 | 100.0 (1000) | 111.0 (1500) | +11.0% | NO |" in printed
    assert "| best | 4/4, 4 | ema | 1 | 500-1500 | 100.0 (1000) | 109.0 (1500) | +9.0% | yes |" in printed


def test_a_retrained_trajectory_is_kept_apart_and_a_rescore_replaces_its_own_row(tmp_path, capsys):
    """Rows carry a hash of the snapshot they score: scoring it again replaces its row,
    a run re-trained elsewhere (another CPU model, other numbers) is kept beside the
    first without moving the quoted number, and the report lists both trajectories."""
    def row(step, fid, snapshot, params="runs/x.params"):
        return {"variant": "best", "data": "celeba", "size": 64, "ngf": 4, "ndf": 4, "batch_size": 4, "step": step,
                "images_seen": 4 * step, "weights": "ema", "fid": fid, "kid": 0.1, "kid_std": 0.01, "fid_n": 10,
                "real_n": 4, "params": params, "seed": 0, "snapshot": snapshot}

    rows = [row(1000, 122.3, "aaa"), row(2000, 93.5, "bbb"), row(1000, 121.0, "aaa"), row(1000, 133.1, "ccc")]
    shown = quality_report.latest_rows(rows)
    assert [(r["step"], r["fid"]) for r in shown] == [(1000, 121.0), (2000, 93.5)]  # first trajectory, re-scored
    assert "| best | 4/4, 4 | ema | 0 | 1000 | 121.0, 133.1 | 10% |" in quality_report.retrained_table(rows)
    assert quality_report.retrained_table(rows[:2]) == ""

    assert quality.is_scored(row(1000, 0.0, "ccc"), rows)  # the same snapshot: not scored again
    assert not quality.is_scored(row(1000, 0.0, "ddd"), rows)  # another trajectory: scored
    assert not quality.is_scored(row(4000, 0.0, "aaa"), rows)  # another cell
    unhashed = [{k: v for k, v in row(1000, 122.3, None, params="runs/s1.params").items() if k != "snapshot"}]
    assert quality.is_scored(row(1000, 0.0, "eee", params="runs/s1.params"), unhashed)  # written once: same file
    assert not quality.is_scored(row(1000, 0.0, "eee", params="elsewhere/s1.params"), unhashed)

    results = tmp_path / "rows.jsonl"
    for r in rows:
        utils.append_jsonl(r, results)
    assert quality.main(["--report", "--size", "64", "--results", str(results), "--assets", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| celeba | 64 | best | 4/4, 4 | 1000 | 4,000 | ema | 121.0 |" in printed
    assert "The same variant and seed re-trained" in printed and "| 121.0, 133.1 | 10% |" in printed


def test_snapshot_id_is_the_file_content(tmp_path):
    a, b, c = tmp_path / "a.params", tmp_path / "b.params", tmp_path / "c.params"
    a.write_bytes(b"weights 1")
    b.write_bytes(b"weights 1")
    c.write_bytes(b"weights 2")
    assert quality.snapshot_id(a) == quality.snapshot_id(b) != quality.snapshot_id(c)


def test_the_default_data_is_the_celeba_sample_beside_the_checkout():
    from benchmarks import speed
    from conftest import SHARED

    assert quality.build_parser().parse_args([]).src == SHARED / "celeba_sample" / "img_align_celeba"
    assert speed.build_parser().parse_args([]).data == str(SHARED / "celeba_sample")
