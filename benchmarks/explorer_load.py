"""The face explorer under load (python bench.py --explorer): start app.py on
a free 127.0.0.1 port, send it a flood of concurrent ``faces`` requests, then
time single requests one after another; a fixed number of requests, a time
limit, nothing but localhost.

    python bench.py --explorer                                  # 50 x 16 faces at once, then 30 of each kind
    python bench.py --explorer --explorer-requests 10 --explorer-repeats 5 --explorer-params runs/x/generator.params

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

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import utils
from benchmarks.harness import fmt, machine
from utils.paths import ROOT

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
    (outcome: "answered", "refused" (queue full) or "failed"; seconds; detail)."""
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
        return "answered", seconds, ""
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
    print(table(result))
    print(json.dumps(result))
    if args.out_json:
        with utils.atomic_path(args.out_json) as tmp:
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
