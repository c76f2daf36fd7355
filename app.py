"""The face explorer: a page in the browser to pick, walk, edit and add a
generator's faces, and to project your own photo (Gradio), served on this
machine only unless --host says otherwise. The parts live in explorer/.

    python app.py                                              # http://127.0.0.1:7860, assets/celeba_64.params
    python app.py --params runs/x/generator.params --port 7861 # any run's params (edits need its directions)
    python app.py --host 0.0.0.0                               # the whole network may use it (warned)
    python app.py --runtime torch                              # eager PyTorch renders (default: onnxruntime if installed)

Every action is also an API endpoint (``faces``, ``edit``, ``interpolate``,
``arithmetic``, ``project``, ``edit_photo``) that ``gradio_client`` drives:

    from gradio_client import Client
    faces, grid_png = Client("http://127.0.0.1:7860/").predict("0-15", api_name="/faces")

Nothing is fetched from the web (no analytics, no share link, fonts and
scripts from the Gradio package itself); the page never takes a file path;
every input is bounded (seeds, faces per request, strengths, text length) and
the queue refuses requests beyond --queue-size instead of piling them up.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

import utils
from editing.latents import CONCEPT_POOL
from explorer.core import PHOTO_SLOTS, RUNTIMES, Explorer
from explorer.memory import keep_memory_small
from explorer.page import build_app, serve
from utils.paths import CLASSIFIER, PRETRAINED_PARAMS, shown

PRETRAINED = PRETRAINED_PARAMS  # the generator the explorer shows unless --params says otherwise
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=utils.HelpFormatter)
    parser.add_argument("--params", default=shown(PRETRAINED),
                        help="generator.params of a run (or a bare state_dict)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA weights")
    parser.add_argument("--classifier", default=shown(CLASSIFIER),
                        help="attribute classifier for concepts in the arithmetic (e.g. Smiling,~Male); "
                             "'none': seed lists only")
    parser.add_argument("--concept-pool", type=int, default=CONCEPT_POOL,
                        help="sampled faces (classified once at start) a concept's faces are chosen from")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on; anything but 127.0.0.1 lets others on that network use it")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--queue-size", type=int, default=20,
                        help="requests that may wait; more are refused with a message (not queued)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests computed at the same time")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--photo-slots", type=int, default=PHOTO_SLOTS,
                        help="projected photos kept in memory (about 4.4 MB each with the shipped generator); "
                             "an edit of an older one answers that it has expired")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="what renders the faces: onnx (onnxruntime on the CPU, the generator exported in memory "
                             "at start; pip install -r requirements-export.txt), torch (eager PyTorch), auto (onnx "
                             "when installed and on the CPU, exported after start while PyTorch renders; else torch)")
    return parser



def host_warning(host: str) -> str | None:
    """The warning printed when --host makes the explorer reachable from other machines."""
    if host in LOCAL_HOSTS:
        return None
    return (f"warning: --host {host}: anyone who can reach this machine on that network can use the explorer "
            f"(no login, and every request costs this machine compute); leave --host out to serve on 127.0.0.1 only")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise utils.UserError(f"--port must be 1 to 65535 (got {args.port})")
    if not 1 <= args.queue_size <= 1000:
        raise utils.UserError(f"--queue-size must be 1 to 1000 (got {args.queue_size})")
    if not 1 <= args.concurrency <= 16:
        raise utils.UserError(f"--concurrency must be 1 to 16 (got {args.concurrency})")
    if not 0 <= args.concept_pool <= 100_000:
        raise utils.UserError(f"--concept-pool must be 0 (no concepts) to 100000 (got {args.concept_pool})")
    if not Path(args.params).exists():
        raise utils.UserError(f"params file not found: {args.params}. Explore the pretrained CelebA faces with "
                              f"--params {shown(PRETRAINED)}, or pass --params PATH to a run's generator.params")
    classifier = None if args.classifier.lower() in ("none", "") else args.classifier
    if classifier and not Path(classifier).exists():
        if Path(classifier).resolve() != CLASSIFIER:
            raise utils.UserError(f"attribute classifier not found: {classifier} (or pass --classifier none)")
        classifier = None  # a clone without the asset: seed lists only
    device = utils.resolve_device(args.device)
    keep_memory_small()
    explorer = Explorer.load(args.params, device, use_ema=not args.no_ema, classifier=classifier,
                             pool_size=args.concept_pool, runtime=args.runtime)
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    demo = serve(build_app(explorer), args.host, args.port, args.queue_size, args.concurrency, block=False)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{explorer.summary()}\nserving the face explorer on http://{host}:{args.port}/ (Ctrl-C to stop)",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a `kill` stops it as Ctrl-C does, files removed
    try:
        demo.block_thread()
    finally:
        demo.close()
        shutil.rmtree(explorer.files, ignore_errors=True)
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
