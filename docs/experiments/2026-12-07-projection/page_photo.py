"""Scratch: seconds per photo at the page's settings (app.PHOTO), in process: aligned, z, tuned; 3 runs."""
import sys, time, torch
sys.path.insert(0, "/work/main")
import app
from utils.paths import PRETRAINED_PARAMS, ROOT
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
ex = app.Explorer.load(str(PRETRAINED_PARAMS), classifier=None)
data = (ROOT / "tests/fixtures/portrait_astronaut.jpg").read_bytes()
from editing.projection import psnr, as_target
for run in range(3):
    t = time.perf_counter(); marks = []
    for target, proj, pid in ex.project(data):
        marks.append(round(time.perf_counter() - t, 2))
    g = ex.photos.get(pid)
    print("run", run, "aligned / z / tuned after", marks, "threads", torch.get_num_threads(), flush=True)
