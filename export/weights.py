"""Generator weights as safetensors (a JSON header and raw tensors: reading one
runs no code) and the folder a Hugging Face model repository holds.

    save_safetensors(state, config, "celeba_64.safetensors")  # the config in the file's metadata
    write_folder("celeba_64", state, config, card)            # model.safetensors, config.json, README.md
    state, config = read_weights("celeba_64")                 # a folder or a bare .safetensors

A file is taken for safetensors by its bytes, never by its name alone: a file
named ``.safetensors`` that is not one (a pickle, a torch zip) is refused with
one line and nothing in it is parsed, so it cannot run code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import utils
from utils import UserError, file_kind

try:  # in requirements.txt; a clone whose environment predates it gets one line, not a traceback
    import safetensors
    from safetensors.torch import save as serialize
except ImportError:
    safetensors = None

WEIGHTS_FORMAT = "dcgan-generator-safetensors/1"
MODEL_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
EXPORT_SUFFIXES = (".params", ".safetensors", ".onnx")  # --export PATH by suffix; anything else is a folder
MAX_HEADER = 100 * 2**20  # safetensors' own header limit


def require_safetensors() -> None:
    if safetensors is None:
        raise UserError("safetensors is not installed: pip install safetensors (it is in requirements.txt)")


def is_safetensors(path) -> bool:
    """Whether ``path``'s bytes start like a safetensors file: an 8-byte
    little-endian header length that fits the file, then a JSON object."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
        size = Path(path).stat().st_size
    except OSError:
        return False
    length = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    return head[8:9] == b"{" and 2 <= length <= min(size - 8, MAX_HEADER)


def is_exported(path) -> bool:
    """A folder, a path named .safetensors, or a file whose bytes are safetensors
    (what ``read_weights`` reads; the rest is for ``torch_load``)."""
    path = Path(path)
    return path.is_dir() or path.suffix == ".safetensors" or (path.is_file() and is_safetensors(path))


def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata) of a safetensors file, or a one-line UserError;
    bytes that are not safetensors are refused before any parsing."""
    require_safetensors()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"safetensors file not found: {path}")
    if not is_safetensors(path):
        raise UserError(f"refusing to load {path}: it is {file_kind(path)[1]}, not a safetensors file (nothing in it "
                        f"was read; a pickle could run code)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} is a damaged safetensors file and cannot be read ({first[:160]})") from None


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` (copied: safetensors refuses views of one storage) with string
    ``metadata``, atomically."""
    require_safetensors()
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}  # no shared storage
    data = serialize(tensors, metadata=metadata)  # bytes: safetensors' save_file would recreate tmp with mode 0600
    with utils.atomic_path(path, suffix=".tmp.safetensors") as tmp:
        Path(tmp).write_bytes(data)


def save_weights(state: dict, config: dict, path) -> None:
    """A bare .safetensors: the generator's state_dict, its config as JSON in the metadata."""
    save_safetensors(state, path, {"format": WEIGHTS_FORMAT, "config": json.dumps(config)})


def read_json_object(path, what: str) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable {what} ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a {what} (a JSON object)")
    return value


def read_weights(path) -> tuple[dict[str, torch.Tensor], dict]:
    """A folder from ``write_folder`` (its config.json, else the model's
    metadata) or a .safetensors file -> (state_dict, config); config is {}
    for a bare state_dict saved without ours (the caller infers the shape)."""
    path = Path(path)
    model = path / MODEL_FILE if path.is_dir() else path
    if path.is_dir() and not model.is_file():
        raise UserError(f"{path} is a folder without {MODEL_FILE}; pass a folder `generator.py --export DIR` wrote, "
                        f"a .safetensors or a generator.params")
    state, metadata = read_safetensors(model)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        config = read_json_object(path / CONFIG_FILE, "config.json")
    elif "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError:
            raise UserError(f"{model} has a damaged config in its metadata") from None
    else:
        config = {}
    config.pop("format", None)
    return state, config


def write_folder(folder, state: dict, config: dict, card: str) -> list[Path]:
    """The Hugging Face model-repository layout in ``folder`` (created, or an
    existing one: other files such as .git are left alone): model.safetensors,
    config.json (the config, format first) and README.md (``card``), each
    written atomically. -> the paths written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--export {folder} exists and is not a folder")
    paths = [folder / MODEL_FILE, folder / CONFIG_FILE, folder / CARD_FILE]
    save_weights(state, config, paths[0])
    utils.save_json({"format": WEIGHTS_FORMAT, **config}, paths[1])
    with utils.atomic_path(paths[2]) as tmp:
        Path(tmp).write_text(card)
    return paths
