"""bench.py smoke run: tiny synthetic data, tiny nets, CPU, 3 steps. Checks the
JSON contract a reader of BENCHMARKS.md relies on (not speed)."""
import json

import pytest

import bench
from utils import UserError


def test_smoke_run_prints_one_json_line_with_positive_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--data", str(tmp_path / "no-such-folder"), "--synthetic", "160", "--sizes", "64", "--small",
                "--steps", "3", "--warmup", "1", "--batch-size", "32", "--workers", "1", "--feeder-batches", "3",
                "--eval-n", "2", "--eval-batch-size", "2", "--device", "cpu", "--out-json", str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result == json.loads(out.read_text())
    assert {"date", "command", "machine", "device", "data", "rows", "ratio"} <= set(result)
    assert result["device"] == "cpu" and result["machine"]["cores"] >= 1
    rows = result["rows"]
    assert {"preprocess", "feeder 64", "train classic 64", "train ours 64", "evaluate features 64"} <= set(rows)
    for name, row in rows.items():
        assert row["status"] in ("ok", "unavailable", "failed"), name
        assert row["rss_mb"] > 0 and row["tree_pss_mb"] >= row["rss_mb"] * 0.2, name
        if row["status"] == "ok":
            assert row["img_s"] > 0, name
        else:
            assert row["reason"], name
    if rows["feeder 64"]["status"] == "ok":  # batches in the training path's memory format (channels_last on CPU)
        assert rows["feeder 64"]["channels_last"] is rows["train ours 64"].get("channels_last", True) is True
    classic = rows["train classic 64"]
    assert classic["status"] == "ok" and classic["images"] == 3 * 32
    if rows["train ours 64"]["status"] == "ok":
        assert rows["train ours 64"]["images"] == 3 * 32
        assert result["ratio"]["64"] > 0


def test_bad_values_are_one_line_errors_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--sizes 48"):
        bench.main(["--sizes", "48", "--data", str(tmp_path)])
    with pytest.raises(UserError, match="--steps"):
        bench.main(["--steps", "0", "--data", str(tmp_path)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="ImageFolder layout"):
        bench.main(["--data", str(empty), "--steps", "1"])
