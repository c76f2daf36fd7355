"""The speed bench (python bench.py): a smoke run on tiny synthetic data, tiny
nets, CPU, 3 steps, checking the JSON contract a reader of BENCHMARKS.md relies
on (not speed); --precision auto picks what train.py picks."""
import json

import pytest
import torch

from benchmarks import rows, speed
from utils import UserError


def test_smoke_run_prints_one_json_line_with_positive_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    speed.main(["--data", str(tmp_path / "no-such-folder"), "--synthetic", "160", "--sizes", "64", "--small",
                "--steps", "3", "--warmup", "1", "--batch-size", "32", "--workers", "1", "--feeder-batches", "3",
                "--eval-n", "2", "--eval-batch-size", "2", "--device", "cpu", "--out-json", str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result == json.loads(out.read_text())
    assert {"date", "command", "machine", "device", "data", "rows", "ratio"} <= set(result)
    assert result["device"] == "cpu" and result["machine"]["cores"] >= 1 and result["precision"] == "fp32"
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
        speed.main(["--sizes", "48", "--data", str(tmp_path)])
    with pytest.raises(UserError, match="--steps"):
        speed.main(["--steps", "0", "--data", str(tmp_path)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="ImageFolder layout"):
        speed.main(["--data", str(empty), "--steps", "1"])


@pytest.mark.parametrize("capability, name, expected", [((7, 5), "Tesla T4", "fp16"), ((7, 0), "Tesla V100", "fp16"),
                                                        ((8, 0), "A100", "bf16"), ((9, 0), "H100", "bf16")])
def test_auto_precision_of_the_bench_rows_is_train_pys_choice(monkeypatch, capability, name, expected):
    """A T4 or V100 has no native bf16: the rows train in fp16, as train.py would, not in emulated bf16."""
    from training import trainer as trainer_module

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    built = {}

    class FakeTrainer:  # records what the row would build on that GPU (there is none here)
        def __init__(self, config, device, **kwargs):
            built.update(kwargs, device=device)
            self.precision = kwargs["precision"]

    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    trainer = rows.make_trainer({}, torch.device("cuda"), "auto", steps_per_epoch=7)
    assert built["precision"] == trainer.precision == expected and built["steps_per_epoch"] == 7
    precision, why = rows.row_precision("auto", "cuda")
    assert precision == expected and name in why
    assert rows.row_precision("auto", "cpu")[0] == "fp32" and rows.row_precision("fp16", "cpu")[0] == "fp16"
    assert speed.build_parser().parse_args(["--precision", "fp16"]).precision == "fp16"



def test_the_bench_modules_load_without_torch():
    """Each row runs in a spawned process that re-imports the bench; the
    preprocess row's peak memory must be preprocessing's, not torch's."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys, bench, benchmarks.speed, benchmarks.harness, benchmarks.explorer_load; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
