"""The GPU check's report: the targets of docs/gpu_check.md with what each
stage measured against them (pass / FAIL; none on a dry run), and the markdown
table for BENCHMARKS.md: a line per stage (its registered summary), a line per
speed row, a line per target.

    report["targets"] = targets(report)
    text = markdown(report)
"""
from __future__ import annotations

import re
from pathlib import Path

from benchmarks.gpu_check_registry import FIRST_STAGE, STAGE_SPECS, fid_weights_line, n
from utils import UserError
from utils.paths import ROOT

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
    """What the targets compare, from each registered stage's measures of its
    result: measure name -> (value or None, how it reads in the report)."""
    measured = {}
    for name, spec in STAGE_SPECS.items():
        measured.update(spec.measures(report["stages"].get(name, {}), report["dry_run"]))
    return measured


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


def summary(name: str, result: dict) -> str:
    """The figures of one stage, in a line (its registered summary)."""
    return STAGE_SPECS[name].summary(result)


def markdown(report: dict) -> str:
    m, stages = report["machine"], report["stages"]
    setup = stages.get(FIRST_STAGE, {})
    dry = " (DRY RUN: CPU, tiny nets, nothing here is a GPU figure)" if report["dry_run"] else ""
    device = (f"{m.get('gpu', '?')} ({m.get('gpu_memory_gib', '?')} GiB, {m.get('sms', '?')} SMs), driver "
              f"{m.get('driver', '?')}, CUDA {m.get('cuda', '?')}, cuDNN {m.get('cudnn', '?')}"
              if not report["dry_run"] else "CPU")
    lines = [f"### GPU check, {report['date']}{dry}", "",
             f"`{report['command']}` at commit `{m.get('commit', '?')}`{' (uncommitted changes)' if m.get('dirty') else ''}: "
             f"{device}; torch {m.get('torch', '?')}, Python {m.get('python', '?')}, {m.get('cpu', '?')} x "
             f"{m.get('cores', '?')}; budget {report['budget_s']} s, took {n(report.get('seconds'))} s.", "",
             f"Data: {setup.get('data', '?')}{'' if setup.get('real_data', True) else ' (SYNTHETIC faces)'}. "
             f"FID Inception: {fid_weights_line(setup) if setup else '?'}.", "",
             "| stage | status | time (limit) | figures |", "|---|---|---|---|"]
    for name, r in stages.items():
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**: {r.get('reason', '')}"
        lines.append(f"| {name} | {status} | {n(r.get('seconds'))} s ({n(r.get('limit_s'))} s) | "
                     f"{summary(name, r).replace('|', '/')} |")
    rows = {name: row for r in stages.values() for name, row in r.get("rows", {}).items()}  # the speed stage's
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
