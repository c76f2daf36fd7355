"""The explorer itself, no web in sight: faces by seed, a face at a
continuous seed with edits, walks, arithmetic and projected photos, as uint8
arrays, computed from one generator (explorer/page.py puts them in a page).

    explorer = Explorer.load("assets/celeba_64.params", classifier=None)
    items, grid, seeds = explorer.faces("0-15")
    face = explorer.face(3.25, [("Smiling", 2.0)])
"""
from __future__ import annotations

import itertools
import math
import shutil
import sys
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

import utils
from editing.classifier import load_classifier
from editing.directions import directions_path, load_directions, make_command
from editing.latents import (CONCEPT_POOL, ConceptPool, Term, arithmetic_latents, condition_names, latents,
                             parse_arithmetic, slerp)
from editing.photo_session import PhotoSettings, Projection, Projections, align_photo, project_latent, tune
from explorer.inputs import (EDIT_MAX, MAX_STEPS, MAX_TERM_SEEDS, MAX_TERMS, SEED_MAX, check_seed, check_text,
                             parse_seeds, seed_range)
from export.onnx_export import onnx_bytes_apart, onnx_installed
from export.onnx_runtime import OnnxGenerator, onnxruntime, require_onnxruntime
from network import load_generator
from utils.paths import CLASSIFIER, shown

KEEP_FILES = 64  # the grid PNGs and GIFs the server keeps for download (older ones are deleted)
RUNTIMES = ("auto", "onnx", "torch")  # what renders the faces (--runtime)
PHOTO = PhotoSettings(steps=100, candidates=128, restarts=1, tune_steps=50)  # the page's (2.5-2.7 s, one idle core)
PHOTO_SLOTS = 16  # projections kept in memory (a tuned 64 px generator is 4.4 MB); the least recently used dropped
PHOTO_TERM = "photo"  # the arithmetic's name for the visitor's projected photo's latent


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
        target, _ = align_photo(data, self.config["size"])
        yield target, None, None
        settings = self.photo_settings
        z = project_latent(self.base, target, settings, progress and f"{progress}: the latent").cpu()
        yield target, self.render(z[None], self.base)[0], None
        tuned = tune(self.base, z.to(self.device), target, settings, progress and f"{progress}: tuning",
                     directions=None if self.directions is None else self.directions.vectors)
        photo_id = self.photos.add(Projection(z, tuned, target))
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

