"""The GPU check: training, resuming, sampling and scoring on one CUDA GPU,
each stage timed and checked, in one command and a fixed time budget; the
targets it judges are docs/gpu_check.md's table.

    python bench.py --gpu-check --out gpu_check                  # one CUDA GPU; the plan and its limits print first
    python bench.py --gpu-check --dry-run --out /tmp/gpu_check   # every stage on the CPU, tiny (the test suite runs it)
    python bench.py --gpu-check --out gpu_check --stages speed   # again, some stages only (setup always runs)

Stages (gpu_check_registry.py, each with its share of --budget): setup (GPU,
driver, torch; the FID Inception weights found offline; the data at 64 and
128 px), sync (a host-sync probe over every training option), train64
(--recipe best --compile with samples, a checkpoint and --fid-every), train128
(--compile, SIGINT, then --resume), resume (exact resume with every option
under --deterministic), sample (generator.py, evaluate.py --kid), speed (img/s
eager and compiled, batch 128 and a large batch, the classic loop, FID
features, peak memory).

This module is the runner: it plans the stages and runs each as its own
process (``python -m benchmarks.gpu_check stage NAME``, the stage's function
in gpu_check_stages.py) killed at its limit, so a CUDA error or a hang in one
leaves the others running; its output, TORCH_LOGS=recompiles,graph_breaks
included, goes to DIR/logs/NAME.log. After every stage DIR/gpu_check.json and
DIR/gpu_check.md (gpu_check_report.py: the table for BENCHMARKS.md, each
target marked pass or FAIL) are rewritten atomically. ``--dry-run`` runs the
same code on the CPU with tiny nets, torch.compile on the aot_eager backend,
random Inception weights unless the real ones are cached, and limits
DRY_RUN_SLACK times as long (at least DRY_RUN_FLOOR s): it tests the plumbing,
on a machine that may be busy, not the speed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import utils
from benchmarks import harness
from benchmarks.gpu_check_context import Stage
from benchmarks.gpu_check_registry import DEFAULT_BUDGET, FIRST_STAGE, STAGE_SPECS, STAGES
from benchmarks.gpu_check_report import markdown, read_targets, summary, targets
from utils import UserError
from utils.paths import ROOT

__all__ = ["DEFAULT_BUDGET", "STAGES", "plan", "run_check", "run_stage"]
DRY_RUN_SLACK, DRY_RUN_FLOOR = 3, 120  # a dry run's limits: tiny work on a CPU that other jobs may share


# --------------------------------------------------------------------------- #
# The parent: plan, one process per stage, the report after each
# --------------------------------------------------------------------------- #
def plan(budget: float, names: list | None, dry_run: bool = False) -> list[tuple[str, float, str]]:
    """-> [(name, limit in seconds, what)] of the stages to run, in order: each
    its share of ``budget`` (on a dry run DRY_RUN_SLACK times it, at least DRY_RUN_FLOOR)."""
    chosen = set(names or STAGE_SPECS) | {FIRST_STAGE}
    stages = []
    for name, seconds, what in STAGES:
        limit = round(seconds * budget / DEFAULT_BUDGET)
        if name in chosen:
            stages.append((name, max(limit * DRY_RUN_SLACK, DRY_RUN_FLOOR) if dry_run else limit, what))
    return stages


def run_check(args) -> int:
    """bench.py --gpu-check: run the stages, write DIR/gpu_check.json and .md."""
    import torch  # here, not at the top: bench.py's spawned rows re-import the modules that import this one

    if not args.dry_run and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UserError(f"--gpu-check needs a CUDA GPU, but torch {torch.__version__} ({build}) sees none; "
                        f"--dry-run runs the same stages on the CPU")
    if args.budget < 60:
        raise UserError(f"--budget must be at least 60 seconds (got {args.budget})")
    read_targets()  # a missing or unreadable targets table stops the check before any stage
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    stages = plan(args.budget, args.stages, args.dry_run)
    mode = "dry run on the CPU, tiny nets" if args.dry_run else "CUDA"
    print(f"gpu check ({mode}): {len(stages)} stages, at most {sum(s for _, s, _ in stages)} s in all; "
          f"writing {out}/gpu_check.json and gpu_check.md")
    for name, limit, what in stages:
        print(f"  {name:<9}{limit:>5} s  {what}")
    report = new_report(args, stages, out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_HOME": str(out / "torch_home"),
           "TORCH_LOGS": "recompiles,graph_breaks", "PYTHONPATH": os.pathsep.join(
               [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    started = time.monotonic()
    for k, (name, limit, _) in enumerate(stages, 1):
        argv = [sys.executable, "-m", "benchmarks.gpu_check", "stage", name, "--out", str(out), "--limit", str(limit)]
        argv += ["--dry-run"] if args.dry_run else []
        argv += ["--data", str(args.data), "--hub", torch.hub.get_dir()] if STAGE_SPECS[name].first else []
        result = run_stage(name, argv, limit, out, env)
        report["stages"][name] = result
        if STAGE_SPECS[name].first and result.get("machine"):
            report["machine"].update(result.pop("machine"))
        write_report(report, out)
        figures = summary(name, result)
        print(f"[{k}/{len(stages)}] {name}: {result['status']} in {result['seconds']:.0f} s (limit {limit} s)"
              f"{': ' + figures if figures else ''}{'' if result['status'] == 'ok' else ' -- ' + result['reason']}",
              flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(report, out)
    failed = [n for n, r in report["stages"].items() if r["status"] != "ok"]
    print(f"gpu check done in {report['seconds']:.0f} s: {len(report['stages']) - len(failed)} ok"
          f"{', failed: ' + ', '.join(failed) if failed else ''}; table: {out / 'gpu_check.md'}")
    return 1 if failed else 0


def new_report(args, stages: list, out: Path) -> dict:
    """The report before any stage ran: the command, the machine, the limits, and the
    stages an earlier check of the same kind (dry run or not) left in DIR."""
    report_path = out / "gpu_check.json"
    previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return {"command": "python bench.py " + " ".join(args.argv), "dry_run": args.dry_run,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "budget_s": args.budget, "machine": harness.machine(gpu=False), "limits": {n: s for n, s, _ in stages},
            "stages": {k: v for k, v in previous.get("stages", {}).items() if previous.get("dry_run") == args.dry_run}}


def run_stage(name: str, argv: list, limit: float, out: Path, env: dict) -> dict:
    """One stage in its own process group, killed at ``limit``; -> its entry."""
    log = out / "logs" / f"{name}.log"
    result_path = out / "stages" / f"{name}.json"
    result_path.unlink(missing_ok=True)
    start = time.monotonic()
    reason = None
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=out, env=env,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code, reason = None, f"time limit {limit:.0f} s reached (see the log)"
        except KeyboardInterrupt:
            code, reason = None, "interrupted"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # the stage and everything it started
                process.wait()
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if reason is None and code != 0:
        reason = f"exit code {code}: {last_line(log)}"
    if reason is None and result.get("status") != "ok":
        reason = result.get("reason") or "no result written"
    if reason == "interrupted":
        raise KeyboardInterrupt
    entry = {"status": "ok" if reason is None else "failed", **({"reason": reason} if reason else {}),
             **{k: v for k, v in result.items() if k not in ("status", "reason")},
             "seconds": round(time.monotonic() - start, 1), "limit_s": limit,
             "log": str(log.relative_to(out))}
    return entry


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").replace("\r", "\n").splitlines()
             if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def write_report(report: dict, out: Path) -> None:
    report["targets"] = targets(report)
    utils.save_json(report, out / "gpu_check.json")
    with utils.atomic_path(out / "gpu_check.md") as tmp:
        Path(tmp).write_text(markdown(report))


# --------------------------------------------------------------------------- #
# The stage process: the registered stage function in its context
# --------------------------------------------------------------------------- #
def run_stage_process(args) -> int:
    """``stage NAME``: the registered function of stage NAME; DIR/stages/NAME.json gets
    its figures and ok, or failed with the first line of the error."""
    out = Path(args.out)
    st = Stage(args.name, out, args.dry_run, args.limit, args.data, args.hub)
    st.save()
    try:
        harness.resolve(STAGE_SPECS[args.name].run)(st)
    except BaseException as err:  # the stage fails, with its figures so far; the parent carries on
        traceback.print_exc()
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        utils.save_json({**st.figures, "status": "failed", "reason": f"{type(err).__name__}: {reason}"},
                        out / "stages" / f"{args.name}.json")
        return 1
    utils.save_json({**st.figures, "status": "ok"}, out / "stages" / f"{args.name}.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The stages of bench.py --gpu-check, one per process: "
                                                 "python -m benchmarks.gpu_check stage NAME --out DIR; or train.py "
                                                 "with torch.compile on another backend: python -m "
                                                 "benchmarks.gpu_check train --backend aot_eager -- TRAIN_ARGS",
                                     formatter_class=utils.HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one stage", formatter_class=utils.HelpFormatter)
    stage.add_argument("name", choices=list(STAGE_SPECS))
    stage.add_argument("--out", required=True, help="the check's folder")
    stage.add_argument("--limit", type=float, default=600, help="seconds the stage may take")
    stage.add_argument("--dry-run", action="store_true", help="CPU, tiny nets and steps")
    stage.add_argument("--data", default=None, help=f"{FIRST_STAGE}: image folder (synthetic faces if absent)")
    stage.add_argument("--hub", default=None,
                       help=f"{FIRST_STAGE}: the torch hub folder that may cache the Inception weights")
    train = sub.add_parser("train", help="train.py with torch.compile on --backend", formatter_class=utils.HelpFormatter)
    train.add_argument("--backend", default="aot_eager", help="torch.compile backend for calls that name none")
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="train.py's arguments, after --")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        with harness.default_compile_backend(args.backend):
            return harness.run_script("train.py", args.train_args[1:] if args.train_args[:1] == ["--"]
                                      else args.train_args)
    return run_stage_process(args)


if __name__ == "__main__":
    utils.run_cli(main)
