"""Files that are never left half-written, and loading that never runs code:
atomic writes (temp + fsync + rename), JSON, ``torch.save``/``torch.load``
(weights_only) with one-line errors, and naming a file of the wrong kind.

    with atomic_path("out.npy") as tmp:
        np.save(tmp, array)
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import secrets
import zipfile
from pathlib import Path

import numpy as np

from utils.cli import UserError


def _create_temp(folder: Path, prefix: str, suffix: str) -> str:
    """Create a new empty file with a random name in ``folder`` and return its
    path. Unlike ``tempfile.mkstemp`` (always mode 0600) it is created with
    mode 0666 like a plain ``open(path, "w")``, so the kernel applies the
    user's umask (and any default ACL): the renamed output gets the mode the
    user expects (0644 under umask 022, 0664 under 002), and the group can read
    a shared data set or weights. No umask is read or changed, so it is safe in
    threads."""
    for _ in range(100):
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(errno.EEXIST, f"no free temporary file name in {folder}")


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success fsync and rename it
    over ``path``. On any error the temp file is removed and ``path`` keeps
    its previous content. A full disk becomes a UserError that says so. The
    output gets the mode a plain ``open()`` gives a new file (0666 minus the
    umask), not mkstemp's 0600.

    >>> with atomic_path("out.npy") as tmp:
    ...     np.save(tmp, array)
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(parent, f".{path.name}.", suffix or (".tmp" + path.suffix))
    except OSError as err:
        raise UserError(f"cannot write to {parent}: {err.strerror or err}") from None
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if err.errno == errno.ENOSPC:
            raise UserError(
                f"disk full while writing {path}; the previous file (if any) is intact"
            ) from None
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise UserError(f"cannot write {path}: {err.strerror}") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_json(obj, path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(obj, path) -> None:
    """Append one JSON line (small appends are atomic enough for logs)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(obj) + "\n")


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file ([] when it does not exist); blank lines
    and a line that does not parse (one still being appended) are left out."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def torch_save(obj, path) -> None:
    """``torch.save`` through a temp file + fsync + rename."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


_MAGIC = (  # first bytes -> kind
    (b"\x93NUMPY", "npy"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x80", "pickle"),
)


def file_kind(path) -> tuple[str, str]:
    """What a file is, from its first bytes (not its name): (kind, a phrase
    for an error message), kind one of npy, image, torch, npz, zip, damaged
    (zip), pickle, empty, unknown. Lets a loader say "x.png is a PNG image,
    not ..." instead of quoting the parser that choked on it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as err:
        return "unknown", f"an unreadable file ({err.strerror or err})"
    if not head:
        return "empty", "an empty file (0 bytes)"
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "unknown")
    if kind == "npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
        except (ValueError, OSError, EOFError):
            return "npy", "a numpy array"
        if array.ndim == 4 and array.shape[3] == 3 and array.dtype == np.uint8:
            n, h, w, _ = array.shape
            return "npy", f"a numpy image array ({n} images of {h}x{w} px, from preprocess.py)"
        return "npy", f"a numpy array ({array.dtype}, shape {tuple(array.shape)})"
    if kind in ("PNG", "JPEG", "GIF"):
        return "image", f"a {kind} image"
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "damaged", "a damaged zip archive"
        if any(name.endswith("data.pkl") for name in names):
            return "torch", "a torch file (a checkpoint or generator.params from train.py)"
        if names and all(name.endswith(".npy") for name in names):
            return "npz", "a numpy .npz archive"
        return "zip", "a zip archive"
    if kind == "pickle":
        return "pickle", "a Python pickle"
    return "unknown", "a file of unknown type"


def torch_load(path, map_location="cpu", what: str = "file", hint: str = ""):
    """``torch.load(weights_only=True)`` with one-line errors for a missing,
    truncated, foreign, or code-carrying (unsafe pickle) file. A file of
    another kind (an image array, a picture, a zip) is named by its kind,
    followed by ``hint`` (what to pass instead)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise _torch_load_error(path, what, hint, err) from None


def _torch_load_error(path: Path, what: str, hint: str, err: Exception) -> UserError:
    """The one-line UserError for a file that torch.load refused."""
    kind = file_kind(path)
    if kind[0] not in ("torch", "pickle", "damaged"):  # not truncated torch files: foreign ones
        article = "an" if what[:1].lower() in "aeiou" else "a"
        return UserError(f"{path} is {kind[1]}, not {article} {what}" + (f"; {hint}" if hint else ""))
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, pickle.UnpicklingError):
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            return UserError(f"refusing to load {path}: it holds Python objects that could run code "
                             f"(only plain tensors and containers are accepted; weights_only=True)")
        return UserError(f"{what} {path} is not a valid torch file ({first})")
    return UserError(f"{what} {path} is truncated or corrupt and cannot be read ({first[:160]})")
