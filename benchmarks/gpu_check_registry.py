"""Every stage of the GPU check, each registered once: its name, its seconds
of the default budget, what it checks, the function the stage process runs
(named ``"module:function"``, so the parent that plans and reports never
imports torch), the line that sums up its figures, and the measures of its
figures that docs/gpu_check.md's targets judge. In the manner of
StyleGAN2-ADA's metric_main registry; the order of registration is the order
the stages run.

    spec = STAGE_SPECS["sync"]
    spec.seconds, spec.run, spec.summary(result), spec.measures(result, dry_run=False)

Adding a stage: write its function in gpu_check_stages.py, register it here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

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


@dataclasses.dataclass(frozen=True)
class StageSpec:
    name: str
    seconds: int  # its share of the default budget
    what: str  # what it checks, in the plan the check prints first
    run: str  # "module:function" of the stage function, called with the stage's context
    summary: Callable[[dict], str]  # its result -> one line of figures
    measures: Callable[[dict, bool], dict]  # (its result, dry run) -> {measure: (value or None, how it reads)}
    first: bool = False  # always runs, before the others (the rest read its results)


STAGE_SPECS: dict[str, StageSpec] = {}


def register_stage(name: str, seconds: int, what: str, run: str, measures=None, first: bool = False):
    """Decorator for a stage's summary line: registers the stage under ``name``."""
    def register(summary):
        if name in STAGE_SPECS:
            raise ValueError(f"stage {name!r} registered twice")
        STAGE_SPECS[name] = StageSpec(name, seconds, what, run, summary, measures or (lambda r, dry_run: {}), first)
        return summary
    return register


def n(value, digits=0) -> str:
    """A figure with thousands separators and ``digits`` decimals; '-' when it was not measured."""
    return "-" if value is None else f"{value:,.{digits}f}"


# --------------------------------------------------------------------------- #
# The stages, in the order they run
# --------------------------------------------------------------------------- #
@register_stage("setup", 40, "GPU, driver, torch; FID Inception weights offline; data at 64 and 128 px",
                run="benchmarks.gpu_check_stages:stage_setup", first=True)
def setup_summary(r: dict) -> str:
    return (f"{r.get('data', '?')}, {n(r.get('num_images'))} images at 64/128 px "
            f"(preprocess {n(r.get('preprocess_s'), 1)} s); FID Inception: " + fid_weights_line(r))


def fid_weights_line(setup: dict) -> str:
    """The FID Inception weights the setup found: label (source), or why there are none."""
    fid = setup.get("fid", {})
    return f"{fid['label']} ({fid['source']})" if fid.get("available") else fid.get("reason", "?")


def sync_measures(r: dict, dry_run: bool) -> dict:
    syncs, warned = r.get("host_syncs"), r.get("cuda_sync_warnings", "-")
    return {"host_syncs": (None if syncs is None else syncs + (r.get("cuda_sync_warnings") or 0),
                           f"{n(syncs)} in {n(r.get('steps'))} steps, {warned} CUDA warnings")}


@register_stage("sync", 40, "host syncs in training steps with every option",
                run="benchmarks.gpu_check_stages:stage_sync", measures=sync_measures)
def sync_summary(r: dict) -> str:
    text = f"{n(r.get('host_syncs'))} host syncs in {n(r.get('steps'))} steps"
    if r.get("where"):
        text += " at " + "; ".join(f"{k} x{v}" for k, v in list(r["where"].items())[:4])
    if "cuda_sync_warnings" in r:
        text += f"; CUDA sync-debug warnings {r['cuda_sync_warnings']}; 'error' mode: {r.get('error_mode')}"
    return text


def train64_measures(r: dict, dry_run: bool) -> dict:
    return {"fid_cost_pct": (r.get("fid_cost_pct"), f"{n(r.get('fid_cost_pct'), 1)} % (--fid-n {n(r.get('fid_n'))} "
                                                    f"every {FID_COST_EVERY:,} steps)")}


@register_stage("train64", 100, "64 px --recipe best --compile: samples, checkpoint, --fid-every",
                run="benchmarks.gpu_check_stages:stage_train64", measures=train64_measures)
def train64_summary(r: dict) -> str:
    fids = ", ".join(f"{v:.1f}" for v in r.get("fid") or [])
    return (f"{n(r.get('steps'))} steps, {n(r.get('img_s'))} img/s (last interval), {n(r.get('grids'))} grids, "
            f"FID {fids or '-'} (n {n(r.get('fid_n'))}, {r.get('fid_seconds') or '-'} s), "
            f"{n(r.get('recompiles'))} recompiles, {n(r.get('graph_breaks'))} graph breaks")


@register_stage("train128", 100, "128 px --compile, stopped by SIGINT, then --resume",
                run="benchmarks.gpu_check_stages:stage_train128")
def train128_summary(r: dict) -> str:
    return (f"SIGINT at step {n(r.get('stopped_at'))} -> exit {r.get('exit_code')} in {n(r.get('stop_s'), 1)} s; "
            f"--resume to {n(r.get('resumed_to'))}; {n(r.get('img_s'))} img/s; "
            f"{n(r.get('recompiles'))} recompiles, {n(r.get('graph_breaks'))} graph breaks")


def resume_measures(r: dict, dry_run: bool) -> dict:
    return {"resume_differ": (r.get("differ_count"), f"{n(r.get('differ_count'))} tensors differ")}


@register_stage("resume", 50, "every option, --deterministic: N steps equal N/2 + --resume to N",
                run="benchmarks.gpu_check_stages:stage_resume", measures=resume_measures)
def resume_summary(r: dict) -> str:
    return (f"{n(r.get('steps'))} steps straight vs {n(r.get('split_at'))} + --resume: "
            f"{n(r.get('tensors_compared'))} tensors, {n(r.get('differ_count'))} differ")


def sample_measures(r: dict, dry_run: bool) -> dict:
    return {"evaluate_img_s": (r.get("evaluate_img_s"), f"{n(r.get('evaluate_img_s'))} img/s")}


@register_stage("sample", 40, "generator.py -n 64; evaluate.py --kid from the exported params",
                run="benchmarks.gpu_check_stages:stage_sample", measures=sample_measures)
def sample_summary(r: dict) -> str:
    return (f"{n(r.get('pngs'))} PNGs in {n(r.get('generator_s'), 1)} s; FID {n(r.get('fid'), 2)}, "
            f"KID {n(r.get('kid'), 4)} (n {n(r.get('n'))}, {n(r.get('evaluate_inner_s'), 1)} s, "
            f"{n(r.get('evaluate_img_s'))} img/s end to end)")


def fastest_row(rows: dict, dry_run: bool, path: str, size: int, compiled=None, recipe="classic") -> tuple:
    """-> (name, row) of the fastest ok speed row that matches at the check's batch, or (None, None)."""
    batch = SIZES["dry" if dry_run else "gpu"]["batch"]
    found = [(k, v) for k, v in rows.items() if v.get("status") == "ok" and v.get("path") == path
             and v.get("size") == size and v.get("batch") == batch
             and (compiled is None or v.get("compile") is compiled) and v.get("recipe", "classic") == recipe]
    return max(found, key=lambda kv: kv[1]["img_s"], default=(None, None))


def speed_measures(r: dict, dry_run: bool) -> dict:
    rows = r.get("rows", {})
    name64, ours64 = fastest_row(rows, dry_run, "ours", 64)
    _, classic64 = fastest_row(rows, dry_run, "classic", 64)
    name128, ours128 = fastest_row(rows, dry_run, "ours", 128)
    _, best = fastest_row(rows, dry_run, "ours", 64, compiled=True, recipe="best")
    _, plain = fastest_row(rows, dry_run, "ours", 64, compiled=True)
    feats = rows.get("FID features") if rows.get("FID features", {}).get("status") == "ok" else None
    img_s64 = ours64 and ours64["img_s"]
    vs_classic = img_s64 and classic64 and img_s64 / classic64["img_s"]
    vs_plain = best and plain and best["img_s"] / plain["img_s"]
    return {
        "ours64_img_s": (img_s64, f"{n(img_s64)} img/s ({name64})"),
        "ours64_vs_classic": (vs_classic, f"{n(vs_classic, 1)}x ({n(classic64 and classic64['img_s'])} img/s)"),
        "ours128_img_s": (ours128 and ours128["img_s"], f"{n(ours128 and ours128['img_s'])} img/s ({name128})"),
        "features_img_s": (feats and feats["img_s"], f"{n(feats and feats['img_s'])} img/s"),
        "best_vs_classic": (vs_plain, f"{n(vs_plain, 2)}x"),
    }


@register_stage("speed", 200, "img/s eager / compiled, two batches, the classic loop, FID features",
                run="benchmarks.gpu_check_stages:stage_speed", measures=speed_measures)
def speed_summary(r: dict) -> str:
    rows = r.get("rows", {})
    done = [k for k, v in rows.items() if v.get("status") == "ok"]
    return f"{len(done)} of {len(rows)} rows measured (table below)"


STAGES = tuple((spec.name, spec.seconds, spec.what) for spec in STAGE_SPECS.values())  # (name, seconds, what)
DEFAULT_BUDGET = sum(spec.seconds for spec in STAGE_SPECS.values())  # 570 s: one 10-minute device command with room
FIRST_STAGE = next(spec.name for spec in STAGE_SPECS.values() if spec.first)
