"""The face explorer under load (python bench.py --explorer): start app.py on
a free 127.0.0.1 port, send it a flood of concurrent ``faces`` requests, then
time single requests one after another; a fixed number of requests, a time
limit, nothing but localhost.

    python bench.py --explorer                                  # 50 x 16 faces at once, then 30 of each kind
    python bench.py --explorer --explorer-requests 10 --explorer-repeats 5 --explorer-params runs/x/generator.params
    python -m benchmarks.explorer_load --soak 2000              # the soak: 2,000 mixed requests, RSS every 200

What it reports (one JSON line, and a table):
  flood    N concurrent ``faces`` requests of F faces each (all released at
           once): how many were answered, refused by the queue (its
           --queue-size; the client is told "Queue is full"), failed
           (anything else: an error, a timeout, a dropped connection); whether
           the server still answers afterwards (the page and a request); its
           RSS before and after.
  latency  p50 / p95 of one face, one edit and one 16-face grid, each asked
           --explorer-repeats times in a row, through Gradio's HTTP API (POST
           /gradio_api/call/NAME, then its event stream): the time a script
           waits for the answer, queue included (not the PNG downloads after).
The server is a separate process (its memory is its own) and is stopped at
the end, whatever happens.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import utils
from benchmarks.harness import fmt, machine
from utils.paths import PRETRAINED_PARAMS, ROOT, shown

SERVING = "serving the face explorer on "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak) of a process in MiB, from /proc (Linux)."""
    out = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out["rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"] = int(line.split()[1]) / 1024
    return out


class Server:
    """``python app.py ARGS`` on a free localhost port, until stop(): its
    output is read by a thread (so it never blocks on a full pipe) and kept."""

    def __init__(self, args, env=None, timeout: float = 180.0, cwd=ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(Path(cwd) / "app.py"), "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise utils.UserError(f"app.py did not start in {timeout:.0f} s: {' | '.join(self.lines[-5:])}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if SERVING in line:
                self.ready.set()
        self.ready.set()  # it ended: nobody waits forever

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def call(http, name: str, *data, timeout: float = 60.0) -> tuple[str, float, str]:
    """One request to endpoint ``name`` through Gradio's HTTP API ->
    (outcome: "answered", "refused" (queue full) or "failed"; seconds; detail: the answer's JSON when answered)."""
    start = time.perf_counter()
    try:
        response = http.post(f"/gradio_api/call/{name}", json={"data": list(data)}, timeout=timeout)
        if response.status_code != 200:
            detail = f"HTTP {response.status_code}: {response.text[:200]}"
            full = response.status_code == 503 and "queue is full" in response.text.lower()
            return ("refused" if full else "failed"), time.perf_counter() - start, detail
        event_id = response.json()["event_id"]
        event, payload = None, ""
        with http.stream("GET", f"/gradio_api/call/{name}/{event_id}", timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    payload = line.split(":", 1)[1].strip()
                    if event in ("complete", "error"):
                        break
    except Exception as err:  # a dropped connection or a timeout is a failure to count, not to raise
        return "failed", time.perf_counter() - start, f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    if event == "complete":
        return "answered", seconds, payload
    if "queue is full" in payload.lower():
        return "refused", seconds, payload
    return "failed", seconds, f"{event}: {payload[:200]}"


def flood(url: str, requests: int, seeds: str, timeout: float) -> dict:
    """``requests`` concurrent faces(seeds) calls, released together -> counts and wall time."""
    import httpx  # the page's HTTP client, installed with gradio (app.py's optional dependency)

    barrier = threading.Barrier(requests)
    limits = httpx.Limits(max_connections=2 * requests, max_keepalive_connections=2 * requests)
    with httpx.Client(base_url=url, limits=limits) as http:
        def one(_):
            barrier.wait(timeout)
            return call(http, "faces", seeds, timeout=timeout)

        start = time.perf_counter()
        with ThreadPoolExecutor(requests) as pool:
            futures = [pool.submit(one, k) for k in range(requests)]
            done, late = wait(futures, timeout=timeout + 10)
        results = [f.result() for f in done if f.exception() is None]
    outcomes = [outcome for outcome, _, _ in results]
    details = sorted({detail for outcome, _, detail in results if outcome == "failed"})
    answered = [seconds for outcome, seconds, _ in results if outcome == "answered"]
    return {"requests": requests, "answered": outcomes.count("answered"), "refused": outcomes.count("refused"),
            "failed": outcomes.count("failed") + len(late) + sum(f.exception() is not None for f in done),
            "seconds": time.perf_counter() - start, "slowest_answer_s": max(answered, default=None),
            "failures": details[:5]}


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) of values, linearly interpolated (numpy's default)."""
    values = sorted(values)
    rank = (len(values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def latencies(url: str, repeats: int, deadline: float) -> dict:
    """p50 / p95 in ms of one face, one edit and one 16-face grid, ``repeats`` each, after one warm-up each."""
    import httpx

    kinds = {"one face": ("faces", "7"), "one edit": ("edit", 7.0, "Smiling=+2"), "16-face grid": ("faces", "0-15")}
    out = {}
    with httpx.Client(base_url=url) as http:
        for kind, (name, *data) in kinds.items():
            call(http, name, *data)
            times, failed = [], []
            for _ in range(repeats):
                if time.monotonic() > deadline:
                    break
                outcome, seconds, detail = call(http, name, *data)
                (times if outcome == "answered" else failed).append(seconds if outcome == "answered" else detail)
            out[kind] = {"n": len(times), "p50_ms": 1000 * percentile(times, 50) if times else None,
                         "p95_ms": 1000 * percentile(times, 95) if times else None, "failed": failed[:3]}
    return out


def run(args) -> dict:
    """The whole load test with the --explorer-* options of ``args``; prints a table and one JSON line."""
    deadline = time.monotonic() + args.explorer_time_limit
    seeds = f"0-{args.explorer_faces - 1}"
    server_args = ["--params", args.explorer_params, "--queue-size", str(args.explorer_queue_size),
                   "--classifier", "none", "--runtime", args.explorer_runtime]
    started = time.perf_counter()
    server = Server(server_args)
    try:
        result = {"date": datetime.date.today().isoformat(), "command": "python bench.py " + " ".join(args.argv),
                  "machine": machine(gpu=False), "server": " ".join(server_args),
                  "start_s": time.perf_counter() - started, "memory_before": rss_mb(server.proc.pid)}
        result["flood"] = flood(server.url, args.explorer_requests, seeds,
                                timeout=max(5.0, deadline - time.monotonic()))
        result["memory_after"] = rss_mb(server.proc.pid)
        result["latency"] = latencies(server.url, args.explorer_repeats, deadline)
        import httpx

        with httpx.Client(base_url=server.url) as http:
            page = http.get("/", timeout=30)
            result["alive_after"] = (server.alive() and call(http, "faces", "0")[0] == "answered"
                                     and page.status_code == 200 and "<html" in page.text.lower())
        result["memory_end"] = rss_mb(server.proc.pid)
    finally:
        server.stop()
    return report(result, table(result), args.out_json)


def report(result: dict, text: str, out_json: str | None) -> dict:
    """Print the table and the JSON line; also write the JSON to ``out_json`` when given -> ``result``."""
    print(text)
    print(json.dumps(result))
    if out_json:
        with utils.atomic_path(out_json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    f, before, after = result["flood"], result["memory_before"], result["memory_after"]
    lines = [f"flood: {f['requests']} concurrent faces requests of {result['server']} -> answered {f['answered']}, "
             f"refused by the queue {f['refused']}, failed {f['failed']} in {f['seconds']:.1f} s; server alive after: "
             f"{result['alive_after']}; RSS {fmt(before.get('rss_mb'), 0)} MiB before, "
             f"{fmt(after.get('rss_mb'), 0)} after (peak {fmt(after.get('peak_rss_mb'), 0)})",
             f"{'latency':<16}{'n':>4}{'p50 ms':>9}{'p95 ms':>9}"]
    for kind, row in result["latency"].items():
        lines.append(f"{kind:<16}{row['n']:>4}{fmt(row['p50_ms']):>9}{fmt(row['p95_ms']):>9}")
    return "\n".join(lines)


def check(args) -> None:
    """One-line errors for bad --explorer-* values, before the server starts."""
    for flag, low, high in (("requests", 1, 500), ("faces", 1, 64), ("repeats", 1, 1000), ("queue_size", 1, 1000)):
        value = getattr(args, f"explorer_{flag}")
        if not low <= value <= high:
            raise utils.UserError(f"--explorer-{flag.replace('_', '-')} must be {low} to {high} (got {value})")
    if not args.explorer_time_limit > 0:
        raise utils.UserError(f"--explorer-time-limit must be positive (got {args.explorer_time_limit})")
    if not Path(args.explorer_params).exists():
        raise utils.UserError(f"--explorer-params {args.explorer_params} not found")


# --------------------------------------------------------------------------- #
# The soak: many mixed requests, memory sampled as they go
# --------------------------------------------------------------------------- #
PORTRAIT = ROOT / "tests" / "fixtures" / "portrait_astronaut.jpg"
SOAK_MIX = (("faces", 30), ("edit", 28), ("interpolate", 14), ("arithmetic", 10), ("edit_photo", 8),
            ("bad upload", 8), ("project", 2))  # percent of the requests
SOAK_EVERY = 200  # requests between RSS samples


def bad_uploads() -> dict[str, bytes]:
    """name -> bytes the explorer must refuse: random bytes, an SVG, a truncated JPEG, a PNG claiming 30 MP,
    and a file over the 10 MB upload cap (refused by Gradio before any handler)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 5000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return {"noise.jpg": os.urandom(20_000), "face.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>',
            "cut.jpg": PORTRAIT.read_bytes()[:4000], "huge.png": bomb, "big.jpg": b"\xff\xd8" + bytes(10 * 2**20)}


def upload(http, name: str, data: bytes) -> dict | None:
    """POST a file to Gradio's upload route -> the FileData a call takes, or None when refused (413)."""
    response = http.post("/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    if response.status_code == 413:
        return None
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def soak_request(http, kind: str, rng, state: dict) -> tuple[str, str]:
    """One request of ``kind`` -> (outcome, detail): "answered"; "refused" (the queue, the upload cap, or
    the one-line message a bad request must get); "failed" (anything else)."""
    if kind in ("project", "bad upload"):
        name = "portrait.jpg" if kind == "project" else rng.choice(sorted(state["bad"]))
        data = PORTRAIT.read_bytes() if kind == "project" else state["bad"][name]
        file = upload(http, name, data)
        if file is None:
            return "refused", "over the upload cap"
        outcome, _, detail = call(http, "project", file, timeout=300)
        if kind == "project" and outcome == "answered":
            state["last_id"] = json.loads(detail)[-1]
        if kind == "bad upload" and outcome == "failed" and "error" in detail and "Traceback" not in detail:
            return "refused", detail
        return outcome, detail
    first = rng.randrange(100_000)
    data = {"faces": lambda: (rng.choice([str(first), f"{first}-{first + 15}"]),),
            "edit": lambda: (rng.uniform(0, 10_000), f"Smiling={rng.uniform(-3, 3):+.1f}"),
            "interpolate": lambda: (rng.randrange(1000), rng.randrange(1000), rng.randrange(2, 17)),
            "arithmetic": lambda: (f"{rng.randrange(99)},{rng.randrange(99)} - {rng.randrange(99)} + "
                                   f"{rng.randrange(99)}",),
            "edit_photo": lambda: (state["last_id"] or "A" * 22, "Smiling=+2")}[kind]()
    outcome, _, detail = call(http, kind, *data, timeout=120)
    if kind == "edit_photo" and outcome == "failed" and "expired" in detail:
        return "refused", detail  # an id nobody was given, or dropped: the one-line answer
    return outcome, detail


def soak(args) -> dict:
    """``args.soak`` mixed requests (SOAK_MIX) one after another on a fresh
    app.py, after a warm-up that fills every bound the server keeps (its
    photo slots with projections, then ``args.warmup`` mixed requests); the
    server's RSS every SOAK_EVERY requests. -> the result (also printed as a table and one JSON line)."""
    import httpx  # installed with gradio

    rng = random.Random(args.seed)
    kinds = [kind for kind, share in SOAK_MIX for _ in range(share)]
    server_args = ["--params", args.params, "--classifier", "none", "--runtime", args.runtime,
                   "--photo-slots", str(args.photo_slots)]
    deadline = time.monotonic() + args.time_limit
    state = {"bad": bad_uploads(), "last_id": ""}
    server = Server(server_args)
    counts = {kind: {"answered": 0, "refused": 0, "failed": 0} for kind, _ in SOAK_MIX}
    failures, samples = [], []
    try:
        with httpx.Client(base_url=server.url) as http:
            started = time.perf_counter()
            for _ in range(args.photo_slots):  # warm-up: the photo slots filled
                soak_request(http, "project", rng, state)
            for _ in range(args.warmup):  # and the rest of the server's bounds
                soak_request(http, rng.choice(kinds), rng, state)
            samples.append({"requests": 0, "seconds": time.perf_counter() - started, **rss_mb(server.proc.pid)})
            print(f"warmed up in {samples[0]['seconds']:.0f} s: RSS {fmt(samples[0].get('rss_mb'), 1)} MiB", flush=True)
            for k in range(1, args.soak + 1):
                if time.monotonic() > deadline or not server.alive():
                    break
                kind = rng.choice(kinds)
                outcome, detail = soak_request(http, kind, rng, state)
                counts[kind][outcome] += 1
                if outcome == "failed" and len(failures) < 5:
                    failures.append(f"{kind}: {detail[:200]}")
                if k % SOAK_EVERY == 0 or k == args.soak:
                    samples.append({"requests": k, "seconds": time.perf_counter() - started,
                                    **rss_mb(server.proc.pid)})
                    print(f"{k} requests, {samples[-1]['seconds']:.0f} s: RSS {fmt(samples[-1].get('rss_mb'), 1)} "
                          f"MiB", flush=True)
            alive = server.alive() and call(http, "faces", "0")[0] == "answered"
    finally:
        server.stop()
    done = sum(sum(c.values()) for c in counts.values())
    result = {"date": datetime.date.today().isoformat(), "command": "python -m benchmarks.explorer_load "
              + " ".join(args.argv), "machine": machine(gpu=False), "server": " ".join(server_args),
              "requests": done, "complete": done == args.soak, "counts": counts, "failures": failures,
              "alive_after": alive, "rss": samples,
              "growth_mb": samples[-1]["rss_mb"] - samples[0]["rss_mb"] if len(samples) > 1 else None}
    return report(result, soak_table(result), args.out_json)


def soak_table(result: dict) -> str:
    lines = [f"soak: {result['requests']} requests to {result['server']}; server alive after: "
             f"{result['alive_after']}; RSS growth after warm-up {fmt(result['growth_mb'], 1)} MiB",
             f"{'request':<12}{'answered':>10}{'refused':>9}{'failed':>8}"]
    for kind, c in result["counts"].items():
        lines.append(f"{kind:<12}{c['answered']:>10}{c['refused']:>9}{c['failed']:>8}")
    lines.append(f"{'requests':>9}{'seconds':>9}{'RSS MiB':>9}")
    for row in result["rss"]:
        lines.append(f"{row['requests']:>9}{row['seconds']:>9.0f}{fmt(row.get('rss_mb'), 1):>9}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The face explorer's soak: " + soak.__doc__.split(";")[0],
                                     formatter_class=utils.HelpFormatter)
    parser.add_argument("--soak", type=int, default=2000, help="mixed requests after the warm-up")
    parser.add_argument("--params", default=shown(PRETRAINED_PARAMS), help="app.py --params")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"], help="app.py --runtime")
    parser.add_argument("--photo-slots", type=int, default=16, help="app.py --photo-slots (filled in the warm-up)")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds; the soak stops early past it")
    parser.add_argument("--warmup", type=int, default=SOAK_EVERY, help="mixed requests after the photo slots are "
                        "filled, before the RSS the growth is counted from")
    parser.add_argument("--seed", type=int, default=0, help="the request mix")
    parser.add_argument("--out-json", default=None, help="also write the result here")
    return parser


def main(argv=None) -> int:
    """The soak -> exit status 0 when every request was answered or refused and the server lived, else 1."""
    result = run_soak(argv)
    failed = sum(c["failed"] for c in result["counts"].values())
    return 0 if result["complete"] and result["alive_after"] and not failed else 1


def run_soak(argv=None) -> dict:
    """The soak of the command line ``argv`` -> its result."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if not 1 <= args.soak <= 100_000:
        raise utils.UserError(f"--soak must be 1 to 100000 (got {args.soak})")
    if not 1 <= args.photo_slots <= 1000 or not args.time_limit > 0:
        raise utils.UserError("--photo-slots must be 1 to 1000 and --time-limit positive")
    if not Path(args.params).exists():
        raise utils.UserError(f"--params {args.params} not found")
    return soak(args)


if __name__ == "__main__":
    utils.run_cli(main)
