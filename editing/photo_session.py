"""A visitor's photo in the face explorer: aligned as CelebA was, projected
into the generator and the generator tuned around it, kept in memory under a
random id, at most ``capacity`` projections at once (the oldest dropped).

    store = Projections(capacity=16)
    target, info = align_photo(uploaded_bytes, size=64)     # one-line UserError for a bad upload
    z = project_latent(generator, target, PhotoSettings())  # the latent
    tuned = tune(generator, z, target, PhotoSettings(), directions=book.vectors)  # the generator tuned around it
    photo_id = store.add(Projection(z, tuned, target))
    store.get(photo_id).z                                   # UserError EXPIRED once dropped

Nothing here writes a file (``Expiring`` deletes the folders a server hands it,
``seconds`` later): the photo's bytes, its aligned face, the latent
and the tuned generator (about 4.4 MB for the shipped 64 px one) live in this
process only. Method and measurements of the projection: docs/projection.md.
"""
from __future__ import annotations

import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editing.projection import as_target, project_z, tune_generator
from preprocessing.align import align_face, crop_face
from preprocessing.photo import read_photo
from utils import UserError

EXPIRED = "this photo's projection has expired; upload it again"
ID_BYTES = 16  # an id is 16 random bytes (128 bits), URL-safe base64: 22 characters
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


@dataclass(frozen=True)
class PhotoSettings:
    """How hard a photo is projected: Adam steps on z from the best of
    ``candidates`` random z (``restarts`` kept), then ``tune_steps`` tuning
    the generator around it with the locality term (0: z alone)."""
    steps: int = 100
    candidates: int = 128
    restarts: int = 1
    tune_steps: int = 50
    locality: float = 1.0
    radius: float = 3.0


@dataclass
class Projection:
    """One projected photo: its latent (nz,), the generator that draws it (a
    tuned copy, or the base generator when not tuned) and the aligned face
    (uint8 H x W x 3 at the generator's size)."""
    z: torch.Tensor
    generator: torch.nn.Module
    target: np.ndarray


class Projections:
    """The last ``capacity`` projections, by random id (least recently used
    dropped first); safe to use from several threads."""

    def __init__(self, capacity: int = 16):
        if capacity < 1:
            raise UserError(f"the projections kept must be at least 1 (got {capacity})")
        self.capacity = capacity
        self._items: OrderedDict[str, Projection] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, projection: Projection) -> str:
        """Keep ``projection`` -> its new id; the oldest beyond capacity is dropped."""
        photo_id = secrets.token_urlsafe(ID_BYTES)
        with self._lock:
            self._items[photo_id] = projection
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return photo_id

    def get(self, photo_id) -> Projection:
        """The projection of ``photo_id`` (now the most recently used), or a
        UserError: EXPIRED for a well-formed id no longer (or never) kept."""
        photo_id = str(photo_id or "").strip()
        if not ID_PATTERN.fullmatch(photo_id):
            raise UserError(f"{photo_id[:40]!r} is not a photo id (the id the project endpoint answered with)")
        with self._lock:
            projection = self._items.get(photo_id)
            if projection is None:
                raise UserError(EXPIRED)
            self._items.move_to_end(photo_id)
            return projection

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, photo_id) -> bool:
        return photo_id in self._items


def align_photo(data, size: int) -> tuple[np.ndarray, dict]:
    """An upload's bytes -> (the face aligned as CelebA, cut at ``size`` px,
    uint8 H x W x 3; the alignment's info). One-line UserError for anything
    refused (preprocessing.photo) or no usable face (preprocessing.align)."""
    aligned, info = align_face(read_photo(data, "the photo"))
    return np.asarray(crop_face(aligned, size)), info


def project_latent(generator, target: np.ndarray, settings: PhotoSettings, progress: str | None = None) -> torch.Tensor:
    """The aligned face (uint8 H x W x 3) -> the latent (nz,) whose face is
    closest. ``progress``: a tqdm description, None for no bar."""
    device = next(generator.parameters()).device
    return project_z(generator, as_target(target, device), steps=settings.steps, candidates=settings.candidates,
                     restarts=settings.restarts, progress=progress)[0]


def tune(generator, z: torch.Tensor, target: np.ndarray, settings: PhotoSettings,
         progress: str | None = None, directions: torch.Tensor | None = None) -> torch.nn.Module:
    """A copy of ``generator`` tuned so its face at ``z`` is the aligned face
    (``generator`` itself when settings.tune_steps is 0); ``directions``
    (K, nz), the named ones, are held by the locality term too."""
    if not settings.tune_steps:
        return generator
    device = next(generator.parameters()).device
    return tune_generator(generator, z, as_target(target, device)[0], steps=settings.tune_steps,
                          locality=settings.locality, radius=settings.radius, progress=progress,
                          directions=directions)



class Expiring:
    """Folders deleted ``seconds`` after they are last handed over (a daemon
    thread sweeps every ``every`` seconds; ``sweep()`` runs it now): where a
    server keeps the pictures it sent for a photo only as long as a page needs
    to load them. A folder handed over again lives ``seconds`` from then:
    Gradio names its files by their content, so two requests for the same
    picture share one folder."""

    def __init__(self, seconds: float = 60.0, every: float = 5.0):
        self.seconds, self.every = seconds, every
        self._due: dict[Path, float] = {}  # each folder's deadline, from its last hand-over
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def add(self, folder) -> None:
        with self._lock:
            self._due[Path(folder)] = time.monotonic() + self.seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="expiring-files", daemon=True)
                self._thread.start()

    def keep(self, make) -> str:
        """``make()`` writes a file and answers its path; its folder is handed
        over with no sweep in between (a sweep could delete the folder a
        request wrote into before it is handed over again) -> the path."""
        with self._lock:
            path = make()
            self.add(Path(path).parent)
        return path

    def sweep(self, everything: bool = False) -> int:
        """Delete the folders whose time has come (all, with ``everything``) -> how many."""
        now = time.monotonic()
        with self._lock:
            done = [folder for folder, due in self._due.items() if everything or due <= now]
            for folder in done:
                del self._due[folder]
                shutil.rmtree(folder, ignore_errors=True)
        return len(done)

    def __len__(self) -> int:
        return len(self._due)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            self.sweep()
