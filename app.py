"""The face explorer: a page in the browser to pick, walk, edit and add a
generator's faces (Gradio), served on this machine only unless --host says otherwise.

    python app.py                                              # http://127.0.0.1:7860, assets/celeba_64.params
    python app.py --params runs/x/generator.params --port 7861 # any run's params (edits need its directions)
    python app.py --host 0.0.0.0                               # the whole network may use it (warned)
    python app.py --runtime torch                              # eager PyTorch renders (default: onnxruntime if installed)

Every action is also an API endpoint (``faces``, ``edit``, ``interpolate``,
``arithmetic``) that ``gradio_client`` drives:

    from gradio_client import Client
    faces, grid_png = Client("http://127.0.0.1:7860/").predict("0-15", api_name="/faces")

Nothing is fetched from the web (no analytics, no share link, fonts and
scripts from the Gradio package itself); the page never takes a file path;
every input is bounded (seeds, faces per request, strengths, text length) and
the queue refuses requests beyond --queue-size instead of piling them up.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import inspect
import itertools
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio import processing_utils
from gradio import utils as gradio_utils

import utils
from editing.classifier import load_classifier
from editing.directions import directions_path, load_directions, make_command, parse_edit
from editing.latents import (ARITH_EXAMPLE, CONCEPT_EXAMPLE, CONCEPT_POOL, ConceptPool, Term, arithmetic_latents,
                             condition_names, latents, parse_arithmetic, slerp)
from editing.photo_session import Expiring, PhotoSettings, Projection, Projections, align_photo, project_latent, tune
from export.onnx_export import onnx_bytes_apart, onnx_installed
from export.onnx_runtime import OnnxGenerator, onnxruntime, require_onnxruntime
from network import load_generator
from preprocessing.photo import MAX_BYTES as MAX_PHOTO_BYTES
from utils.paths import CLASSIFIER, PRETRAINED_PARAMS, shown

PRETRAINED = PRETRAINED_PARAMS  # the generator the explorer shows unless --params says otherwise
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SEED_MAX = 2**31 - 1  # seeds 0..SEED_MAX
MAX_FACES = 64  # faces per request
PAGE = 16  # faces the page shows at a time
MAX_TEXT = 400  # characters of a seed list, an edit or an expression
EDIT_MAX = 5.0  # |strength| of a move along a direction
WALK_SPAN = 10  # the seed slider covers the picked seed +- WALK_SPAN
MAX_STEPS = 32  # frames of an interpolation
MAX_TERMS = 8  # terms of an arithmetic expression
MAX_TERM_SEEDS = 64  # seeds in all the terms of an expression together
KEEP_FILES = 64  # the grid PNGs and GIFs the server keeps for download (older ones are deleted)
SESSIONS = 100  # visitors (each API call is one) whose page state the server keeps; older ones are dropped
RUNTIMES = ("auto", "onnx", "torch")  # what renders the faces (--runtime)
PHOTO = PhotoSettings(steps=100, candidates=128, restarts=1, tune_steps=50)  # the page's projection (~5 s on a CPU)
PHOTO_SLOTS = 16  # projections kept in memory (a tuned 64 px generator is 4.4 MB); the least recently used dropped
PHOTO_FILE_SECONDS = 60  # the PNGs sent for a photo (aligned face, projection, its edits) are deleted after this
PHOTO_TERM = "photo"  # the arithmetic's name for the visitor's projected photo's latent
MAX_PHOTO_MB = MAX_PHOTO_BYTES // 2**20  # an upload's size limit (preprocessing.photo's), also Gradio's upload cap
WALK_LABEL = "Walk: a continuous seed"
TRIM_SECONDS = 20  # how often the C heap's free pages are handed back to the system (glibc's malloc_trim)
ARENAS = 2  # glibc malloc arenas: one per thread by default, each keeping its freed memory
MMAP_BYTES = 512 * 2**10  # blocks this big or bigger get their own pages, returned to the system when freed

try:  # glibc, to give back the memory a request freed (Linux; elsewhere the allocator is left alone)
    LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
except OSError:
    LIBC = None


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


# --------------------------------------------------------------------------- #
# Parsing and bounding the inputs
# --------------------------------------------------------------------------- #
def parse_seeds(text: str, limit: int = MAX_FACES) -> list[int]:
    """ "0-15" or "3,7,42" or "0-3, 10" -> the seeds, in order; at most
    ``limit`` of them, each 0..SEED_MAX; anything else is a UserError."""
    example = 'write seeds like "0-15" or "3,7,42"'
    text = str(text or "").strip()
    if not text:
        raise utils.UserError(f"no seeds given; {example}")
    if len(text) > MAX_TEXT:
        raise utils.UserError(f"the seed list is {len(text)} characters long (at most {MAX_TEXT}); {example}")
    seeds: list[int] = []
    for part in text.split(","):
        bounds = [b.strip() for b in part.split("-")]
        if not (1 <= len(bounds) <= 2 and all(b.isdigit() and b.isascii() for b in bounds)):
            raise utils.UserError(f"{part.strip()!r} in {text!r} is not a seed or a range of seeds; {example}")
        first, last = int(bounds[0]), int(bounds[-1])
        if last > SEED_MAX:
            raise utils.UserError(f"seed {last} is too large: seeds go from 0 to {SEED_MAX}")
        if last < first:
            raise utils.UserError(f"the range {part.strip()!r} runs backwards; write it as {last}-{first}")
        if len(seeds) + last - first + 1 > limit:
            raise utils.UserError(f"{text!r} asks for more than {limit} faces at once; ask for at most {limit}")
        seeds.extend(range(first, last + 1))
    return seeds


def seed_range(first: int, count: int) -> str:
    """(16, 16) -> "16-31": the seed list of a page."""
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def page_seeds(text: str, step: int) -> str:
    """The seed list of the next (step +1) or previous (-1) page after the
    faces ``text`` asks for: as many seeds as now, following on from them."""
    seeds = parse_seeds(text)
    count = len(seeds)
    first = max(seeds) + 1 if step > 0 else max(0, min(seeds) - count)
    return seed_range(min(first, SEED_MAX - count + 1), count)


def check_seed(value, what: str = "seed") -> float:
    """A number 0..SEED_MAX (a continuous seed may have a fraction), or a UserError."""
    try:
        seed = float(value)
    except (TypeError, ValueError):
        raise utils.UserError(f"{what} {value!r} is not a number") from None
    if not (math.isfinite(seed) and 0 <= seed <= SEED_MAX):
        raise utils.UserError(f"{what} {value!r} is out of range: seeds go from 0 to {SEED_MAX}")
    return seed


def check_text(text, what: str) -> str:
    text = "" if text is None else str(text)
    if len(text) > MAX_TEXT:
        raise utils.UserError(f"the {what} is {len(text)} characters long (at most {MAX_TEXT})")
    return text


# --------------------------------------------------------------------------- #
# The explorer itself: faces as uint8 arrays, no web in sight
# --------------------------------------------------------------------------- #
class Explorer:
    """What the page shows, computed from one generator: faces by seed, a face
    at a continuous seed with edits, walks between two faces, and arithmetic.
    Every method takes what a person or a script typed and bounds it first;
    a bad input is a UserError with one sentence."""

    def __init__(self, generator, config: dict, params: str, device="cpu", directions=None,
                 directions_note: str = "", photo_slots: int = PHOTO_SLOTS, photo: PhotoSettings = PHOTO):
        self.generator, self.config, self.params, self.device = generator, config, str(params), device
        self.base = generator  # the PyTorch generator: photos are projected and tuned on it, whatever renders
        self.photos, self.photo_settings = Projections(photo_slots), photo
        self.onnx_pending = False  # an ONNX renderer is being made in a thread (render_with)
        self.nz = config["nz"]
        self.directions, self.directions_note = directions, directions_note
        self.names = list(directions.names) if directions is not None else []
        self.pool, self.pool_size, self.concepts = None, 0, []  # concepts: the attributes a condition may name
        self.pool_note = "Concepts (e.g. Smiling,~Male) need the attribute classifier: start with --classifier PATH."
        self.pool_ready = threading.Event()
        self.pool_ready.set()
        self.files = Path(tempfile.mkdtemp(prefix="face-explorer-"))
        weakref.finalize(self, shutil.rmtree, self.files, True)
        self._count = itertools.count()
        self._count_lock = threading.Lock()

    @classmethod
    def load(cls, params: str | Path, device="cpu", use_ema: bool = True, classifier: str | Path | None = CLASSIFIER,
             pool_size: int = CONCEPT_POOL, background: bool = True, runtime: str = "torch",
             photo_slots: int = PHOTO_SLOTS) -> Explorer:
        """The explorer of ``params``: its directions when they are beside it,
        a pool of ``pool_size`` classified faces for concepts when the
        ``classifier`` is there (made in a thread when ``background``), its
        faces rendered by ``runtime``: eager PyTorch ("torch"), or onnxruntime
        on the CPU ("onnx", several times faster for one face) with the same
        weights, exported by a separate process and kept in memory (nothing
        is written); "auto" is onnx when installed and on the CPU, its export
        made like the pool (the page renders with PyTorch until it is done)."""
        generator, config = load_generator(params, device, use_ema=use_ema)
        directions, directions_note = None, ""
        if directions_path(params).exists():
            directions = load_directions(params, generator, config["weights"])
        else:
            directions_note = (f"{params} has no named directions, so there are no edit sliders; make them with "
                               f"{make_command(params)} and start the explorer again.")
        explorer = cls(generator, config, params, device, directions, directions_note, photo_slots)
        if wants_onnx(runtime, device):
            def make():
                return OnnxGenerator(onnx_bytes_apart(params, use_ema))
            if runtime == "onnx":
                explorer.generator = make()
            else:
                explorer.render_with(make, background)
        if classifier and pool_size > 0:
            model, classifier_config = load_classifier(classifier, device)
            attributes = classifier_config["attributes"]
            explorer.use_pool(lambda: ConceptPool(generator, model, classifier_config["size"], attributes,
                                                  n=pool_size, device=device), attributes, pool_size, background)
        return explorer

    def use_pool(self, make, attributes, size: int, background: bool = True) -> None:
        """self.pool = make(): ``size`` sampled faces labelled with
        ``attributes``, made in a thread when ``background`` so the page is up
        meanwhile; until it is done a concept answers that it is coming."""
        def run():
            try:
                self.pool = make()
            except Exception as err:
                self.pool_note = f"The concept faces could not be made ({type(err).__name__}: {err})."
                raise
            finally:
                self.pool_ready.set()

        self.concepts, self.pool_size = list(attributes), size
        self.pool_note = "The concept faces are still being classified (once, at start); try again in a few seconds."
        self.pool_ready.clear()
        if background:
            threading.Thread(target=run, name="concept-pool", daemon=True).start()
        else:
            run()

    def render_with(self, make, background: bool = True) -> None:
        """self.generator = make() (another renderer of the same faces), made
        in a thread when ``background``; meanwhile, or if it fails (a note on
        stderr), the faces are rendered as before."""
        def run():
            try:
                self.generator = make()
                print(f"the faces are now rendered by {self.runtime}", flush=True)
            except Exception as err:  # the page goes on with the renderer it has
                print(f"note: no ONNX renderer ({type(err).__name__}: {err}); rendering with PyTorch", file=sys.stderr)
            finally:
                self.onnx_pending = False

        self.onnx_pending = True
        if background:
            threading.Thread(target=run, name="onnx-export", daemon=True).start()
        else:
            run()

    @property
    def runtime(self) -> str:
        """What renders the faces now: "onnxruntime" or "PyTorch"."""
        return "onnxruntime" if isinstance(self.generator, OnnxGenerator) else "PyTorch"

    # the pictures ------------------------------------------------------------
    @torch.no_grad()
    def render(self, z: torch.Tensor, generator=None) -> np.ndarray:
        """Latents (N, nz) -> uint8 faces (N, H, W, 3), drawn by ``generator`` (a photo's) or the explorer's."""
        return utils.to_uint8((self.generator if generator is None else generator)(z.to(self.device)))

    def latent_at(self, seed) -> torch.Tensor:
        """The latent of a continuous seed (nz,): seed 3.25 is a quarter of
        the spherical walk from seed 3's latent to seed 4's."""
        seed = check_seed(seed)
        low = math.floor(seed)
        if seed == low:
            return latents([low], self.nz)[0]
        return slerp(latents([low], self.nz), latents([low + 1], self.nz), torch.tensor([seed - low]))[0, 0]

    def offset(self, edits) -> torch.Tensor | None:
        """The latent offset of [(name, strength), ...], each strength bounded."""
        edits = [(name, float(strength)) for name, strength in edits if float(strength) != 0]
        if not edits:
            return None
        if self.directions is None:
            raise utils.UserError(self.directions_note)
        for name, strength in edits:
            if not (math.isfinite(strength) and abs(strength) <= EDIT_MAX):
                raise utils.UserError(f"{name}={strength:g}: a strength goes from -{EDIT_MAX:g} to +{EDIT_MAX:g}")
        if len(edits) > len(self.names):
            raise utils.UserError(f"{len(edits)} edits, but there are only {len(self.names)} directions")
        return self.directions.offset(edits)

    # the actions ---------------------------------------------------------------
    def faces(self, text: str) -> tuple[list[tuple[np.ndarray, str]], np.ndarray, list[int]]:
        """ "0-15" -> ([(face, "seed 0"), ...], the faces' grid, the seeds)."""
        seeds = parse_seeds(text)
        images = self.render(latents(seeds, self.nz))
        return [(image, f"seed {seed}") for seed, image in zip(seeds, images)], utils.image_grid(images), seeds

    def picked(self, seed, photo: str | None = None) -> tuple[torch.Tensor, torch.nn.Module | None]:
        """(the latent (nz,), the generator that draws it: None for the
        explorer's) of a continuous seed, or of the projected ``photo`` (its id) when given."""
        if photo:
            projection = self.photos.get(photo)
            return projection.z, projection.generator
        return self.latent_at(seed), None

    def face(self, seed, edits=(), photo: str | None = None) -> np.ndarray:
        """The face at a continuous seed, or the projected ``photo``, moved along [(name, strength), ...]."""
        z, generator = self.picked(seed, photo)
        offset = self.offset(edits)
        return self.render((z if offset is None else z + offset)[None], generator)[0]

    def interpolate(self, seed_a, seed_b, steps, photo_a: str | None = None,
                    photo_b: str | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """The spherical walk from one seed's face (or projected photo's) to
        another's in ``steps`` frames -> (the frames in one row, the frames);
        a photo's walk is drawn by its tuned generator."""
        (a, generator_a), (b, generator_b) = self.picked(seed_a, photo_a), self.picked(seed_b, photo_b)
        try:
            steps = int(steps)
        except (TypeError, ValueError):
            raise utils.UserError(f"steps {steps!r} is not a whole number") from None
        if not 2 <= steps <= MAX_STEPS:
            raise utils.UserError(f"steps must be 2 to {MAX_STEPS} (got {steps})")
        frames = self.render(slerp(a[None], b[None], torch.linspace(0, 1, steps))[0], generator_a or generator_b)
        return utils.image_grid(frames, nrow=steps), list(frames)

    def arithmetic(self, text: str, photo: str | None = None) -> list[tuple[np.ndarray, str]]:
        """ "3,17,42 - 5,8,9 + 11,23,31" -> each term's mean face and the
        result's face, captioned, as the DCGAN paper's figure 7. A term
        "photo" is the projected ``photo``'s latent (drawn by its tuned generator)."""
        text = check_text(text, "expression")
        captioned = parse_arithmetic(text)
        terms, projection = self.photo_terms(captioned, photo)
        if len(terms) > MAX_TERMS:
            raise utils.UserError(f"{len(terms)} terms; an expression may have at most {MAX_TERMS}")
        seeds = sum(len(term.seeds or ()) for term in terms)
        if seeds > MAX_TERM_SEEDS:
            raise utils.UserError(f"{seeds} seeds in the terms; at most {MAX_TERM_SEEDS} in all")
        if any(seed > SEED_MAX for term in terms for seed in term.seeds or ()):
            raise utils.UserError(f"a seed in {text!r} is too large: seeds go from 0 to {SEED_MAX}")
        if condition_names(terms) and (self.pool is None or not self.pool_ready.is_set()):
            raise utils.UserError(self.pool_note)
        means, result = arithmetic_latents(terms, self.nz, self.pool)
        if projection is not None:  # the photo's terms: its latent in place of the stand-in seed
            mine = torch.tensor([term.condition == ((PHOTO_TERM, True),) for term in captioned])
            means[mine] = projection.z.to(means)
            result = sum(term.sign * mean for term, mean in zip(terms, means))
        images = self.render(torch.cat([means, result[None]]), projection and projection.generator)
        captions = [("" if k == 0 and term.sign > 0 else "+ " if term.sign > 0 else "- ") + term.text()
                    for k, term in enumerate(captioned)] + ["= result"]
        return list(zip(images, captions))

    def photo_terms(self, terms: list[Term], photo: str | None) -> tuple[list[Term], Projection | None]:
        """(the terms with each "photo" term a stand-in seed term, the photo's
        projection); (terms, None) when no term is "photo"."""
        if not any(term.condition == ((PHOTO_TERM, True),) for term in terms):
            return terms, None
        if not photo:
            raise utils.UserError(f'"{PHOTO_TERM}" in an expression is your projected photo: upload one under '
                                  f'"Your photo" first')
        projection = self.photos.get(photo)
        return [Term(t.sign, seeds=[0]) if t.condition == ((PHOTO_TERM, True),) else t for t in terms], projection

    def project(self, data, progress: str | None = None):
        """An upload's bytes -> yields (the aligned face, None, None), then
        (it, the projection of z alone, None), then (it, the projection by the
        tuned generator, its id): uint8 faces at the generator's size. The
        projection is kept (the last ``photo_slots``) for face(photo=id)."""
        target, info = align_photo(data, self.config["size"])
        yield target, None, None
        settings = self.photo_settings
        z = project_latent(self.base, target, settings, progress and f"{progress}: the latent").cpu()
        yield target, self.render(z[None], self.base)[0], None
        tuned = tune(self.base, z.to(self.device), target, settings, progress and f"{progress}: tuning",
                     directions=None if self.directions is None else self.directions.vectors)
        photo_id = self.photos.add(Projection(z, tuned, target, info))
        yield target, self.render(z[None], tuned)[0], photo_id

    # files to download ---------------------------------------------------------
    def keep(self, name: str) -> Path:
        """A fresh path ``<n>/name`` in the explorer's folder; the folder of
        the KEEP_FILES-th file before it is deleted (Gradio has its own copy)."""
        with self._count_lock:
            count = next(self._count)
        shutil.rmtree(self.files / str(count - KEEP_FILES), ignore_errors=True)
        return self.files / str(count) / name

    def grid_png(self, grid: np.ndarray, seeds: list[int]) -> str:
        contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
        path = self.keep(f"faces_{seed_range(seeds[0], len(seeds))}.png" if contiguous else "faces.png")
        utils.save_png(grid, path)
        return str(path)

    def walk_gif(self, frames: list[np.ndarray], seed_a, seed_b) -> str:
        path = self.keep(f"walk_{float(seed_a):g}_to_{float(seed_b):g}.gif")
        utils.save_gif(frames + frames[-2:0:-1], path, duration_ms=100)  # there and back, so it loops smoothly
        return str(path)

    def summary(self) -> str:
        c = self.config
        parts = [f"{shown(self.params)}: {c['size']} px, nz {c['nz']}, ngf {c['ngf']}, "
                 f"{'EMA' if c.get('weights') == 'ema' else 'raw'} weights",
                 f"{len(self.names)} directions" if self.names else "no directions",
                 f"rendered by {self.runtime}" + (" (onnxruntime once exported)" if self.onnx_pending else ""),
                 f"concepts from {self.pool_size} sampled faces" if self.concepts else "no concepts"]
        return "; ".join(parts)


def wants_onnx(runtime: str, device) -> bool:
    """Whether ``runtime`` renders with onnxruntime on ``device``: "onnx"
    (on the CPU only, and installed, else a UserError), "auto" when
    onnxruntime and the exporter are installed and the device is the CPU."""
    if runtime not in RUNTIMES:
        raise utils.UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    cpu = torch.device(device).type == "cpu"
    if runtime == "onnx":
        if not cpu:
            raise utils.UserError(f"--runtime onnx runs on the CPU; leave --device out, or keep --device {device} "
                                  f"with --runtime torch")
        require_onnxruntime()
    return runtime == "onnx" or (runtime == "auto" and cpu and onnxruntime is not None and onnx_installed())


# --------------------------------------------------------------------------- #
# The page: Gradio's handlers over an Explorer, then one function per section
# --------------------------------------------------------------------------- #
CSS = """
#faces .grid-wrap, #arithmetic .grid-wrap { height: auto !important; min-height: 0 !important; }
#face img, #strip img, #gif img { width: 100%; height: 100%; object-fit: contain; }
"""
PRIVATE = {"api_visibility": "private"}  # an event only the page uses: not an API endpoint
LIVE = {"show_progress": "hidden", "trigger_mode": "always_last", **PRIVATE}  # follows a slider as it moves


def answer(fn):
    """fn, with a UserError turned into a gr.Error: shown in the page and sent through the API."""
    if inspect.isgeneratorfunction(fn):  # a handler that yields its answers as they come
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except utils.UserError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return stream

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except utils.UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
    return wrapped


class Handlers:
    """What the page's events call: the explorer's answers in the shapes the
    components take (a gallery's (face, caption) pairs, a file to download, a
    slider's new range), a UserError shown as a message. Gradio shows the
    docstrings of the API's six (faces, edit, interpolate, arithmetic, project, edit_photo)."""

    def __init__(self, explorer: Explorer, photo_file_seconds: float = PHOTO_FILE_SECONDS):
        self.explorer = explorer
        self.expiring = Expiring(photo_file_seconds)  # the PNGs sent for a photo, deleted after a minute

    # the faces -------------------------------------------------------------------
    @answer
    def faces(self, seeds: str):
        """Faces by seed: a seed list such as "0-15" or "3,7,42" (at most 64 faces) -> the faces (captioned
        "seed N") and their grid PNG."""
        items, grid, seeds_list = self.explorer.faces(seeds)
        return items, self.explorer.grid_png(grid, seeds_list)

    def page(self, seeds: str, step: int):
        """The next (step +1) or previous (-1) page -> (its seed list, its faces, their grid PNG)."""
        text = page_seeds(seeds, step)
        return (text, *self.faces(text))

    @answer
    def previous_page(self, seeds: str):
        """The page of faces before this one."""
        return self.page(seeds, -1)

    @answer
    def next_page(self, seeds: str):
        """The page of faces after this one."""
        return self.page(seeds, +1)

    @answer
    def random_page(self, seeds: str):
        """As many faces as now (a page when none), from a random seed under 100,000."""
        count = len(parse_seeds(seeds)) if seeds and seeds.strip() else PAGE
        text = seed_range(int(np.random.default_rng().integers(0, 100_000)), count)
        return (text, *self.faces(text))

    # the picked face -------------------------------------------------------------
    @answer
    def edit(self, seed: float, edits: str):
        """The face at a continuous seed (3.25: a quarter of the way from seed 3 to seed 4) moved along named
        directions, e.g. "Smiling=+2,Eyeglasses=+1.5" (empty: no edit)."""
        edits = check_text(edits, "edit").strip()
        return self.explorer.face(seed, parse_edit(edits) if edits else [])

    @answer
    def show(self, seed: float, photo: str, *strengths: float):
        """The face at the walk slider's seed (the picked photo's, when one is), moved by the edit sliders."""
        face = self.explorer.face(seed, list(zip(self.explorer.names, strengths)), photo)
        return self.photo_png(face) if photo else face

    @answer
    def pick(self, seeds: str, evt: gr.SelectData, *strengths: float):
        """A face clicked in the gallery -> (its seed, the walk slider around it, it with the edits)."""
        caption = str((evt.value if isinstance(evt.value, dict) else {}).get("caption") or "")
        seed = int(caption.split()[-1]) if caption.startswith("seed ") else parse_seeds(seeds)[evt.index]
        low, high = max(0, seed - WALK_SPAN), min(SEED_MAX, seed + WALK_SPAN)
        return (seed, gr.Slider(minimum=low, maximum=high, value=seed, interactive=True, label=WALK_LABEL), "",
                self.explorer.face(seed, list(zip(self.explorer.names, strengths))))

    @answer
    def reset(self, seed: float, photo: str):
        """Every edit slider back to 0, and the picked face without edits."""
        return [0.0] * len(self.explorer.names) + [self.show(seed, photo)]

    @answer
    def picked_end(self, picked, photo: str):
        """The picked face as a walk's from or to end -> (the seed field, its label, the photo id or "")."""
        if photo:
            return gr.Number(label="Your photo (type a seed instead to walk from it)"), photo
        return gr.Number(int(check_seed(picked, "picked seed")), label="Seed"), ""

    def typed_end(self, _value):
        """A seed typed in a walk's end: that end is the seed, not the photo."""
        return gr.Number(label="Seed"), ""

    # your photo ----------------------------------------------------------------------
    @answer
    def project(self, photo: bytes | None, progress=gr.Progress(track_tqdm=True)):
        """Your photo (JPEG, PNG or WebP, at most 10 MB and 25 megapixels; with gradio_client:
        handle_file(path)) aligned as CelebA was and projected into the generator, which is then tuned around it
        (a few seconds) -> the aligned face, the projection, and its id for edit_photo (the server keeps the last
        few projections in memory). The upload is deleted from the server's disk as soon as it is read."""
        if photo is None:
            raise utils.UserError("no photo: upload a JPEG, PNG or WebP photo with a face")
        data = bytes(photo)
        forget_upload(data)
        for target, projection, photo_id in self.explorer.project(data, progress="your photo"):
            yield (self.photo_png(target), None if projection is None else self.photo_png(projection),
                   photo_id or "")
        trim_memory()  # the projection's autograd buffers, freed, back to the system

    @answer
    def edit_photo(self, photo: str, edits: str):
        """A projected photo (the id project answered with) moved along named directions, e.g. "Smiling=+2"
        (empty: the projection itself)."""
        edits = check_text(edits, "edit").strip()
        return self.photo_png(self.explorer.face(0, parse_edit(edits) if edits else [], str(photo or "")))

    @answer
    def pick_photo(self, photo: str, *strengths: float):
        """The projected photo as the picked face -> (its id as picked and as the last photo, the walk slider
        at rest, it with the edits, the upload field cleared)."""
        walk = gr.Slider(interactive=False, label="Walk: pick a face in the gallery to walk the seeds")
        return photo, photo, walk, self.show(0, photo, *strengths), None

    def photo_file(self, path: str) -> str:
        """A file made for a photo (a walk's GIF) -> its copy in Gradio's cache, deleted PHOTO_FILE_SECONDS
        later; the explorer's own copy at once."""
        cached = self.expiring.keep(lambda: processing_utils.save_file_to_cache(
            path, cache_dir=gradio_utils.get_upload_folder()))
        shutil.rmtree(Path(path).parent, ignore_errors=True)
        return cached

    def photo_png(self, image: np.ndarray) -> str:
        """A face of the visitor's photo -> the PNG Gradio sends, in its cache, deleted PHOTO_FILE_SECONDS later."""
        return self.expiring.keep(lambda: processing_utils.save_img_array_to_cache(
            image, cache_dir=gradio_utils.get_upload_folder(), format="png"))

    # the walk and the arithmetic ---------------------------------------------------
    @answer
    def interpolate(self, seed_a: float, seed_b: float, steps: int, photo_a: str = "", photo_b: str = ""):
        """The spherical walk from seed_a's face to seed_b's in `steps` frames (2 to 32) -> the frames as one PNG
        row and as a looping GIF."""
        strip, frames = self.explorer.interpolate(seed_a, seed_b, steps, photo_a, photo_b)
        if photo_a or photo_b:
            return self.photo_png(strip), self.photo_file(self.explorer.walk_gif(frames, seed_a, seed_b))
        return strip, self.explorer.walk_gif(frames, seed_a, seed_b)

    @answer
    def arithmetic(self, expression: str, photo: str = ""):
        """Face arithmetic (DCGAN paper, fig. 7): seed lists or attribute conditions joined by + and -, e.g.
        "3,17,42 - 5,8,9 + 11,23,31" or "Smiling,~Male - ~Smiling,~Male + ~Smiling,Male" -> each term's mean
        face and the result."""
        items = self.explorer.arithmetic(expression, photo)
        return [(self.photo_png(image), caption) for image, caption in items] if photo else items

    @answer
    def add_term(self, expression: str, picked, photo: str, how: str):
        """The expression with the picked seed (or "photo") added: to its last term ("this"), as a new "+" or
        "-" term, or alone ("start")."""
        seed = PHOTO_TERM if photo else int(check_seed(picked, "picked seed"))
        text = check_text(expression, "expression").strip()
        if not text or how == "start":
            return str(seed)
        if how == "this" and photo:  # "photo" is a term of its own
            return f"{text} + {seed}"
        if how == "this":
            return f"{text},{seed}"
        return f"{text} {how} {seed}"


def forget_upload(data: bytes) -> None:
    """Delete the file Gradio wrote for an upload of ``data`` before any
    handler ran: its folder in the upload folder is named by the hash Gradio
    computes of the bytes (processing_utils.hash_bytes, seeded per install)."""
    shutil.rmtree(Path(gradio_utils.get_upload_folder()) / processing_utils.hash_bytes(data), ignore_errors=True)


@dataclass
class PickedFace:
    """The picked face's components, which the sections after its own read
    and set. A section that makes a face the picked one (a click in the
    gallery) sets ``picked``, ``walk`` and ``face``; one that uses it reads
    ``picked``; ``sliders`` are the edit strengths applied to the face."""
    picked: gr.Number  # the picked seed
    walk: gr.Slider  # a continuous seed near it (picked +- WALK_SPAN): the face shown is this seed's
    face: gr.Image  # the face at ``walk`` (or the picked photo's), moved by ``sliders``
    sliders: list[gr.Slider]  # one strength per direction, in explorer.names order; none without directions
    photo: gr.State  # the picked photo's id, "" when the picked face is a seed's
    last_photo: gr.State  # the visitor's last projected photo's id: the arithmetic's "photo"


def build_app(explorer: Explorer, handlers: Handlers | None = None) -> gr.Blocks:
    """The gr.Blocks page of ``explorer`` (its events call ``handlers``, made
    when None), one section after another, each wiring its own events: every
    action an ``api_name``d event."""
    handlers = handlers or Handlers(explorer)
    with gr.Blocks(title="DCGAN face explorer", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"## DCGAN face explorer\n{explorer.summary()}. Click a face to pick it; walk, edit and add "
                    f"it below. Every action is also an API endpoint (see the API link at the foot of the page).")
        seeds, gallery = faces_section(demo, handlers)
        picked = picked_face_section(demo, handlers, seeds, gallery)
        photo_section(handlers, picked)
        walk_section(handlers, picked)
        arithmetic_section(handlers, picked)
        edit_endpoint(handlers, picked)
    return demo


def faces_section(demo: gr.Blocks, handlers: Handlers) -> tuple[gr.Textbox, gr.Gallery]:
    """A page of faces by seed (Show, Previous, Next, Random) and their grid
    PNG: the ``faces`` endpoint, also run when the page opens. -> (the seed
    list, the gallery a face is picked in)."""
    with gr.Row():
        seeds = gr.Textbox(seed_range(0, PAGE), label="Seeds (e.g. 0-15 or 3,7,42; at most "
                           f"{MAX_FACES} faces)", max_length=MAX_TEXT, scale=4, elem_id="seeds")
        show_button = gr.Button("Show", variant="primary", scale=1, elem_id="show")
        prev_button = gr.Button("◀ Previous", scale=1, elem_id="previous")
        next_button = gr.Button("Next ▶", scale=1, elem_id="next")
        random_button = gr.Button("Random", scale=1, elem_id="random")
    gallery = gr.Gallery(label="Faces (click one to pick it)", columns=8, format="png", allow_preview=False,
                         object_fit="contain", elem_id="faces", buttons=["download", "download_all"])
    grid_file = gr.DownloadButton("Download the grid (PNG)", elem_id="grid-download", size="sm")

    gr.on([show_button.click, seeds.submit, demo.load], handlers.faces, seeds, [gallery, grid_file],
          api_name="faces")
    for button, handler in ((prev_button, handlers.previous_page), (next_button, handlers.next_page),
                            (random_button, handlers.random_page)):
        button.click(handler, seeds, [seeds, gallery, grid_file], **PRIVATE)
    return seeds, gallery


def picked_face_section(demo: gr.Blocks, handlers: Handlers, seeds: gr.Textbox, gallery: gr.Gallery) -> PickedFace:
    """The face picked in ``gallery``, walked along a continuous seed and
    moved by an edit slider per direction (the API's edit is edit_endpoint)."""
    explorer = handlers.explorer
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            face = gr.Image(label="The picked face, walked and edited", format="png", height=256,
                            interactive=False, buttons=["download"], elem_id="face")
            picked = gr.Number(0, label="Picked seed", precision=0, minimum=0, maximum=SEED_MAX,
                               interactive=False, elem_id="picked")
            walk = gr.Slider(0, 2 * WALK_SPAN, value=0, step=0.01, label=WALK_LABEL,
                             info="between two seeds, a spherical walk between their latents", elem_id="walk")
        with gr.Column(scale=2):
            gr.Markdown("### Edit: move the face along a named direction")
            sliders, reset = edit_sliders(explorer)

    photo, last_photo = gr.State(""), gr.State("")
    demo.load(handlers.show, [walk, photo, *sliders], face, **PRIVATE)
    gallery.select(handlers.pick, [seeds, *sliders], [picked, walk, photo, face], **PRIVATE)
    gr.on([walk.input, *(s.input for s in sliders)], handlers.show, [walk, photo, *sliders], face, **LIVE)
    if reset is not None:
        reset.click(handlers.reset, [walk, photo], [*sliders, face], **PRIVATE)
    return PickedFace(picked, walk, face, sliders, photo, last_photo)


def edit_sliders(explorer: Explorer) -> tuple[list[gr.Slider], gr.Button | None]:
    """A slider per direction in two columns and a reset button -> (sliders,
    reset); without directions, the note that says how to make them."""
    if not explorer.names:
        gr.Markdown(explorer.directions_note, elem_id="no-directions")
        return [], None
    sliders, half = [], (len(explorer.names) + 1) // 2
    with gr.Row():
        for names in (explorer.names[:half], explorer.names[half:]):
            with gr.Column(min_width=200):
                sliders += [gr.Slider(-EDIT_MAX, EDIT_MAX, value=0, step=0.1, label=name, elem_id=f"edit-{name}")
                            for name in names]
    return sliders, gr.Button("Reset the edits", size="sm")


def photo_section(handlers: Handlers, shared: PickedFace) -> None:
    """Your photo: uploaded, aligned as CelebA was, projected (progress as it
    runs), and made the picked face, so the sliders, the walk and the
    arithmetic ("photo") work on it: the ``project`` endpoint. The upload is
    read as bytes and its file deleted at once (forget_upload)."""
    settings = handlers.explorer.photo_settings
    gr.Markdown(f"### Your photo\nA JPEG, PNG or WebP photo with a face (at most {MAX_PHOTO_MB} MB): aligned as "
                f"CelebA's faces were, then projected into the generator ({settings.steps} steps on the latent, "
                f"{settings.tune_steps} tuning the generator around it; a few seconds). At "
                f"{handlers.explorer.config['size']} px the projection is a close relative, not a copy. It "
                f"becomes the picked face; in the arithmetic it is the term `{PHOTO_TERM}`. The photo is kept "
                f"in this server's memory only, for this page, while it is among the last "
                f"{handlers.explorer.photos.capacity} projections.")
    with gr.Row():
        upload = gr.File(label="Your photo", file_types=[".jpg", ".jpeg", ".png", ".webp"], type="binary",
                         height=160, elem_id="photo-upload")
        aligned = gr.Image(label="Aligned as CelebA", format="png", interactive=False, height=160,
                           elem_id="photo-aligned")
        projection = gr.Image(label="Its projection", format="png", interactive=False, height=160,
                              elem_id="photo-projection")
        photo_id = gr.Textbox(label="Photo id (for the API's edit_photo)", interactive=False,
                              elem_id="photo-id")

    upload.upload(handlers.project, upload, [aligned, projection, photo_id], api_name="project").success(
        handlers.pick_photo, [photo_id, *shared.sliders], [shared.photo, shared.last_photo, shared.walk,
                                                           shared.face, upload], **PRIVATE)


def walk_section(handlers: Handlers, shared: PickedFace) -> None:
    """The spherical walk from one seed's face to another's (the picked seed
    at either end), as a PNG row and a looping GIF: the ``interpolate`` endpoint."""
    gr.Markdown("### Walk from one face to another")
    with gr.Row():
        seed_a = gr.Number(0, label="From seed", minimum=0, maximum=SEED_MAX, elem_id="seed-a")
        to_a = gr.Button("Picked → from", size="sm")
        seed_b = gr.Number(1, label="To seed", minimum=0, maximum=SEED_MAX, elem_id="seed-b")
        to_b = gr.Button("Picked → to", size="sm")
        steps = gr.Slider(2, MAX_STEPS, value=8, step=1, label="Frames")
        walk_button = gr.Button("Walk", variant="primary", elem_id="walk-button")
    with gr.Row():
        strip = gr.Image(label="The walk (PNG)", format="png", interactive=False, buttons=["download"],
                         height=160, scale=3, elem_id="strip")
        gif = gr.Image(label="The walk (GIF)", type="filepath", interactive=False, buttons=["download"],
                       height=160, scale=1, elem_id="gif")

    from_photo, to_photo = gr.State(""), gr.State("")  # an end that is the picked photo: its id
    walk_button.click(handlers.interpolate, [seed_a, seed_b, steps, from_photo, to_photo], [strip, gif],
                      api_name="interpolate")
    for button, seed, end in ((to_a, seed_a, from_photo), (to_b, seed_b, to_photo)):
        button.click(handlers.picked_end, [shared.picked, shared.photo], [seed, end], **PRIVATE)
        seed.input(handlers.typed_end, seed, [seed, end], **PRIVATE)


def arithmetic_section(handlers: Handlers, shared: PickedFace) -> None:
    """Face arithmetic, A - B + C, by seed lists or attribute conditions, the
    picked seed added to it by button: the ``arithmetic`` endpoint."""
    explorer = handlers.explorer
    attributes = ", ".join(explorer.concepts)
    gr.Markdown("### Add faces: A - B + C\nEach term is the mean of its faces' latents (a seed list)"
                + (f" or of the sampled faces most surely showing a condition (attributes {attributes}; "
                   f"~ = without)" if attributes else f". {explorer.pool_note}"))
    with gr.Row():
        expression = gr.Textbox(CONCEPT_EXAMPLE if explorer.concepts else ARITH_EXAMPLE, label="Expression",
                                max_length=MAX_TEXT, scale=4, elem_id="expression")
        arith_button = gr.Button("Add", variant="primary", scale=1, elem_id="add")
    with gr.Row():  # how each button adds the picked seed (Handlers.add_term)
        adders = {how: gr.Button(label, size="sm") for how, label in (
            ("this", "Picked → this term"), ("+", "Picked → new + term"), ("-", "Picked → new - term"),
            ("start", "Start over with picked"))}
    arith = gr.Gallery(label="Each term's mean face, then the result", columns=8, format="png", fit_columns=False,
                       allow_preview=False, object_fit="contain", buttons=["download"], elem_id="arithmetic")

    arith_button.click(handlers.arithmetic, [expression, shared.last_photo], arith, api_name="arithmetic")
    expression.submit(handlers.arithmetic, [expression, shared.last_photo], arith, **PRIVATE)
    for how, button in adders.items():
        button.click(functools.partial(handlers.add_term, how=how), [expression, shared.picked, shared.photo],
                     expression, **PRIVATE)


def edit_endpoint(handlers: Handlers, shared: PickedFace) -> None:
    """The API's ``edit``: any seed (the walk slider covers only the picked
    seed's neighbourhood) and the edits as text, in hidden inputs, so last on
    the page; it answers into the picked face."""
    edit_seed, edit_text = gr.Number(visible=False), gr.Textbox(visible=False)
    edit_trigger = gr.Button(visible=False)
    edit_trigger.click(handlers.edit, [edit_seed, edit_text], shared.face, api_name="edit")
    photo_id, photo_edit = gr.Textbox(visible=False), gr.Textbox(visible=False)
    photo_trigger = gr.Button(visible=False)
    photo_trigger.click(handlers.edit_photo, [photo_id, photo_edit], shared.face, api_name="edit_photo")


def serve(demo, host: str = "127.0.0.1", port: int = 7860, queue_size: int = 20, concurrency: int = 1,
          block: bool = True):
    """Queue (at most ``queue_size`` waiting, ``concurrency`` computed at
    once) and serve ``demo`` with everything that could reach the web off;
    ``block``: until Ctrl-C. -> the running demo."""
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True, ssr_mode=False,
                    mcp_server=False, pwa=False, show_error=False, max_file_size=f"{MAX_PHOTO_BYTES}b",
                    footer_links=["api"],
                    enable_monitoring=False, max_threads=8 + concurrency, state_session_capacity=SESSIONS,
                    theme=theme, css=CSS,
                    prevent_thread_lock=not block)
    except OSError as err:
        raise utils.UserError(f"cannot serve on {host}:{port} ({err}); pass another --port") from None
    return demo


def trim_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim):
    torch's and Gradio's request-sized buffers, freed, otherwise stay in the
    server's RSS, most of all after a projection's autograd buffers."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def keep_memory_small(every: float = TRIM_SECONDS) -> None:
    """Cap glibc's malloc arenas at ARENAS (the server's threads share them
    instead of keeping one each), give blocks of MMAP_BYTES or more their own
    pages (glibc otherwise raises that bar to the largest block freed, up to
    32 MiB, and a projection's buffers then stay in the heap), and trim the
    heap every ``every`` seconds in a daemon thread; nothing off glibc."""
    if LIBC is None:
        return
    LIBC.mallopt(-8, ARENAS)  # M_ARENA_MAX
    LIBC.mallopt(-3, MMAP_BYTES)  # M_MMAP_THRESHOLD; a fixed value also stops glibc moving it

    def run():
        while True:
            time.sleep(every)
            trim_memory()
    threading.Thread(target=run, name="trim-memory", daemon=True).start()


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
