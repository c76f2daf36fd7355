"""Scratch: 16 floods of 50 concurrent faces requests (800 requests) on one app.py, RSS after each (the 708 -> 813 MiB measurement of issue 39, re-run)."""
import sys, json, time
sys.path.insert(0, "/work/main")
from benchmarks.explorer_load import Server, flood, rss_mb
runtime = sys.argv[1]
server = Server(["--params", "assets/celeba_64.params", "--queue-size", "20", "--classifier", "none", "--runtime", runtime])
try:
    time.sleep(5)
    rows = [rss_mb(server.proc.pid)["rss_mb"]]
    counts = []
    for k in range(16):
        f = flood(server.url, 50, "0-15", timeout=300)
        counts.append((f["answered"], f["refused"], f["failed"]))
        rows.append(rss_mb(server.proc.pid)["rss_mb"])
    print(json.dumps({"runtime": runtime, "rss": [round(r, 1) for r in rows], "peak": rss_mb(server.proc.pid)["peak_rss_mb"], "counts": counts}))
finally:
    server.stop()
