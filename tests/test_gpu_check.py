"""bench.py --gpu-check (benchmarks/gpu_check*.py): the dry run of every stage
on the CPU, so the GPU check cannot rot; the host-sync probe must see a planted
.item(); a stage that hangs or crashes fails alone; the targets of
docs/gpu_check.md and their verdicts; no GPU without --dry-run is one line, exit 2.

    python -m pytest -q tests/test_gpu_check.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import utils
from benchmarks import gpu_check, gpu_check_registry, gpu_check_report, host_sync, speed
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_every_stage_ok_and_both_files_well_formed(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--gpu-check", "--dry-run", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, limit, _ in gpu_check.plan(gpu_check.DEFAULT_BUDGET, None, dry_run=True):  # the plan, with limits, first
        assert f"  {name:<9}{limit:>5} s" in done.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and list(report["stages"]) == [n for n, _, _ in gpu_check.STAGES]
    assert {"cpu", "cores", "torch", "python", "device"} <= set(report["machine"])
    for name, stage in report["stages"].items():
        assert stage["status"] == "ok", (name, stage.get("reason"), (out / stage["log"]).read_text()[-3000:])
        assert stage["seconds"] <= stage["limit_s"] and (out / stage["log"]).is_file(), name
    stages = report["stages"]
    assert stages["sync"]["host_syncs"] == 0 and stages["sync"]["steps"] >= 1
    assert stages["train64"]["fid"] and stages["train64"]["files"]["progress.gif"]
    assert len(stages["train64"]["fid_seconds"]) == len(stages["train64"]["fid"]) and stages["train64"]["fid_cost_pct"] > 0
    assert stages["train128"]["exit_code"] == 130 and stages["train128"]["resumed_to"] > stages["train128"]["stopped_at"]
    assert stages["resume"]["differ_count"] == 0 and stages["resume"]["tensors_compared"] > 50
    assert stages["sample"]["pngs"] == 65 and stages["sample"]["fid"] is not None
    rows = stages["speed"]["rows"]
    assert all(row["status"] == "ok" and row["img_s"] > 0 for row in rows.values()), rows
    assert {row["path"] for row in rows.values()} == {"ours", "classic", "evaluate"}
    assert any(row.get("recompiles") for row in rows.values())  # TORCH_LOGS reached the log and was counted
    assert len(report["targets"]) == 9 and all(t["result"] == "-" for t in report["targets"])  # a dry run judges none
    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and md.count("\n| ") >= len(stages) + len(rows) + 9
    for name in stages:
        assert f"| {name} | ok |" in md


def test_each_stage_is_defined_at_one_site_its_registration():
    """The plan, the stage process, the summaries and the measures all come from
    the registry: no stage name is written anywhere else in the GPU check."""
    import ast

    from benchmarks import harness

    specs = gpu_check_registry.STAGE_SPECS
    assert [name for name, _, _ in gpu_check.STAGES] == list(specs)
    assert gpu_check.DEFAULT_BUDGET == sum(spec.seconds for spec in specs.values())
    sites = {name: [] for name in specs}
    for path in sorted((ROOT / "benchmarks").glob("gpu_check*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in sites:
                sites[node.value].append(f"{path.name}:{node.lineno}")
    assert all(len(where) == 1 and where[0].startswith("gpu_check_registry.py:") for where in sites.values()), sites
    for spec in specs.values():  # each names a stage function and sums up and measures even an empty result
        assert callable(harness.resolve(spec.run)) and isinstance(spec.summary({}), str)
        assert all(value is None for value, _ in spec.measures({}, False).values())


def test_sync_probe_finds_a_planted_item_in_a_real_training_step(one_thread):
    from training.trainer import Trainer
    from training.training_loop import DEFAULTS

    config = {**DEFAULTS, "ngf": 8, "ndf": 8, "nz": 16, "batch_size": 4, "augment": "color,translation",
              "ada": 0.6, "lecam": 0.3, "r1": 0.1, "r1_every": 2, "ema": 0.99}
    trainer = Trainer(config, "cpu")
    real = torch.rand(4, 3, 64, 64) * 2 - 1
    trainer.step(real)
    clean = host_sync.probe_host_syncs(lambda: trainer.step(real), 2, "cpu")
    assert clean["host_syncs"] == 0 and clean["where"] == {}

    def planted():
        out = trainer.step(real)
        return out["loss_G"].item()  # the planted host read

    found = host_sync.probe_host_syncs(planted, 3, "cpu")
    assert found["host_syncs"] == 3
    (where, count), = found["where"].items()
    assert count == 3 and where.startswith("tests/test_gpu_check.py:") and "(planted)" in where
    assert "_local_scalar_dense" in where


def test_sync_reasons_cover_data_dependent_shapes_and_blocking_copies():
    aten = torch.ops.aten
    meta, cpu = torch.device("meta"), torch.device("cpu")
    x = torch.empty(4, device=meta)
    reason = host_sync._sync_reason
    assert "nonzero" in reason(aten.nonzero.default, (x,), {}, meta)
    assert "boolean mask" in reason(aten.index.Tensor, (x, [torch.empty(4, dtype=torch.bool, device=meta)]), {}, meta)
    assert reason(aten.index.Tensor, (x, [torch.empty(4, dtype=torch.long, device=meta)]), {}, meta) is None
    assert "blocking copy meta -> cpu" in reason(aten._to_copy.default, (x,), {"device": cpu}, meta)
    assert reason(aten._to_copy.default, (x,), {"device": cpu, "non_blocking": True}, meta) is None
    assert reason(aten.add.Tensor, (x, x), {}, meta) is None
    assert reason(aten._local_scalar_dense.default, (torch.ones(()),), {}, meta) is None  # a host tensor: no sync


def test_a_hanging_or_crashing_stage_fails_alone_with_its_reason(tmp_path):
    (tmp_path / "logs").mkdir()
    hang = gpu_check.run_stage("sync", [sys.executable, "-c", "import time; print('started', flush=True); "
                                                              "time.sleep(60)"], 1.5, tmp_path, dict(os.environ))
    assert hang["status"] == "failed" and "time limit 2 s" in hang["reason"] and hang["seconds"] < 30
    assert "started" in (tmp_path / hang["log"]).read_text()
    crash = gpu_check.run_stage("speed", [sys.executable, "-c", "raise SystemExit('CUDA error: an illegal memory "
                                                                "access')"], 30, tmp_path, dict(os.environ))
    assert crash["status"] == "failed" and "exit code 1: CUDA error: an illegal memory access" in crash["reason"]


def fake_report(**speeds) -> dict:
    def row(path, size, img_s, compile=True, recipe="classic"):
        return {"status": "ok", "path": path, "size": size, "batch": 128, "img_s": img_s, "compile": compile,
                "recipe": recipe}

    rows = {"a": row("ours", 64, speeds["ours64"]), "b": row("classic", 64, speeds["classic64"], False),
            "c": row("ours", 128, 6000.0), "d": row("ours", 64, speeds["best64"], recipe="best"),
            "FID features": {**row("evaluate", 64, 2500.0), "batch": 200}}
    return {"dry_run": False, "date": "today", "command": "python bench.py --gpu-check", "budget_s": 570,
            "machine": {"gpu": "H100"}, "stages": {
                "speed": {"status": "ok", "rows": rows, "seconds": 100, "limit_s": 200, "log": "logs/speed.log"},
                "sync": {"status": "ok", "host_syncs": 0, "steps": 20, "cuda_sync_warnings": 0},
                "resume": {"status": "failed", "reason": "2 of 145 tensors differ", "differ_count": 2},
                "train64": {"status": "ok", "fid_cost_pct": 3.2, "fid_n": 5000}}}


def test_targets_pass_and_fail_against_the_numbers_in_the_doc():
    report = fake_report(ours64=25000.0, classic64=2000.0, best64=21000.0)
    verdicts = {t["target"]: t["result"] for t in gpu_check_report.targets(report)}
    assert verdicts == {
        "64 px training at batch 128 >= 20,000 img/s": "pass", "64 px against the classic loop >= 10 x": "pass",
        "128 px training at batch 128 >= 5,000 img/s": "pass", "FID feature extraction >= 3,000 img/s": "FAIL",
        "--fid-every share of training time, one FID every 5,000 steps < 5 %": "pass",
        "--recipe best --compile against the classic recipe's img/s >= 0.9 x": "FAIL",  # 0.84x
        "evaluate.py end to end >= 3,000 img/s": "-",  # not measured
        "host syncs and CUDA sync warnings in training steps, every option == 0": "pass",
        "tensors that differ between a --deterministic resume and an uninterrupted run == 0": "FAIL"}
    report["stages"]["sync"]["cuda_sync_warnings"] = 1  # a CUDA sync warning fails the host-sync target too
    assert [t["result"] for t in gpu_check_report.targets(report) if t["target"].startswith("host syncs")] == ["FAIL"]
    report["targets"] = gpu_check_report.targets(report)
    md = gpu_check_report.markdown(report)
    assert "| resume | **failed**: 2 of 145 tensors differ |" in md
    assert "| 64 px against the classic loop >= 10 x | 12.5x (2,000 img/s) | pass |" in md


def test_the_doc_targets_are_the_ones_the_check_measures(tmp_path):
    targets = gpu_check_report.read_targets()
    measured = gpu_check_report.measures({"dry_run": False, "stages": {}})
    assert sorted(t["measure"] for t in targets) == sorted(measured)  # every figure judged, none unknown
    assert all(value is None for value, _ in measured.values())  # nothing run: nothing measured
    fid_cost, = [t for t in targets if t["measure"] == "fid_cost_pct"]
    assert f"{gpu_check_registry.FID_COST_EVERY:,} steps" in fid_cost["target"]  # the cadence the check computes with
    doc = tmp_path / "gpu_check.md"
    doc.write_text("# x\n\n## Targets\n\n| target | measure | pass when |\n|---|---|---|\n| fast | `x` | about 3 |\n")
    with pytest.raises(UserError, match="cannot read the target 'about 3'"):
        gpu_check_report.read_targets(doc)
    doc.write_text("# x\n")
    with pytest.raises(UserError, match="no '## Targets' section"):
        gpu_check_report.read_targets(doc)


def test_without_a_gpu_the_check_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        utils.run_cli(speed.main, ["--gpu-check", "--out", str(tmp_path / "check")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --gpu-check needs a CUDA GPU") and "--dry-run" in err
    assert not (tmp_path / "check").exists()
    with pytest.raises(UserError, match="--budget"):
        speed.main(["--gpu-check", "--dry-run", "--budget", "10", "--out", str(tmp_path / "check")])
