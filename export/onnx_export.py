"""The generator as an ONNX file that onnxruntime runs without PyTorch, and a
JSON beside it with nz, size, the model's config and its named directions.

    python generator.py --params assets/celeba_64.params --export faces.onnx   # faces.onnx + faces.json

    import numpy as np, onnxruntime
    session = onnxruntime.InferenceSession("faces.onnx")
    images = session.run(None, {"z": np.random.randn(4, 100).astype(np.float32)})[0]  # (4, 3, 64, 64), [-1, 1]

The exporter is torch.onnx's dynamo one (torch.export, then onnxscript's
optimizer), the path torch supports from 2.9 on: in eval mode it folds each
BatchNorm into the ConvTranspose before it, so the graph is one Reshape, the
ConvTransposes with their ReLUs and a Tanh. The batch dimension is dynamic.
Needs ``pip install -r requirements-export.txt``.
"""
from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import utils
from utils import UserError
from utils.paths import ROOT

ONNX_FORMAT = "dcgan-generator-onnx/1"
INPUT, OUTPUT = "z", "images"  # (B, nz) float32 -> (B, nc, size, size) float32 in [-1, 1]


def onnx_installed() -> bool:
    """Whether torch.onnx's dynamo exporter has what it imports (onnx, onnxscript: requirements-export.txt).
    Looked up, not imported: importing them costs seconds that generator.py's other modes need not pay."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def require_onnx() -> None:
    if not onnx_installed():
        raise UserError("the ONNX export needs onnx and onnxscript: pip install -r requirements-export.txt")
    if not hasattr(torch.onnx, "ONNXProgram"):
        raise UserError(f"the ONNX export needs torch 2.5 or later (this is {torch.__version__})")


def onnx_bytes(generator: nn.Module, nz: int) -> bytes:
    """``generator`` (z (B, nz) -> images) as a serialized ONNX model with a
    dynamic batch dimension: a copy in eval mode, float32, on the CPU (the
    module passed in is not changed)."""
    require_onnx()
    model = copy.deepcopy(generator).float().cpu().eval()
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (torch.zeros(2, nz),), None, dynamo=True, input_names=[INPUT],
                                output_names=[OUTPUT], dynamic_shapes=({0: batch},), external_data=False,
                                optimize=True, verbose=False)
    return program.model_proto.SerializeToString()


def onnx_bytes_apart(params, use_ema: bool = True, timeout: float = 600) -> bytes:
    """``onnx_bytes`` of the generator in ``params`` (as network.load_generator
    loads it), made in a fresh Python process that hands back the bytes: the
    exporter's modules (torch.export, onnx, onnxscript; about 250 MiB) never
    enter this process, which a long-running server wants."""
    require_onnx()
    code = ("import sys; from network import load_generator; from export.onnx_export import onnx_bytes; "
            "g, c = load_generator(sys.argv[1], use_ema=sys.argv[2] == '1'); "
            "sys.stdout.buffer.write(onnx_bytes(g, c['nz']))")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(Path(params).resolve()), str(int(use_ema))],
                              cwd=ROOT, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"the ONNX export of {params} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise UserError(f"the ONNX export of {params} failed: {lines[-1]}")
    return done.stdout


def metadata(config: dict, directions: dict | None) -> dict:
    """The JSON beside the .onnx file: what goes in and out, the config, and
    the directions as name -> list of nz floats (a latent offset per unit)."""
    nz = int(config["nz"])
    vectors = {}
    for name, vector in (directions or {}).items():
        values = torch.as_tensor(vector, dtype=torch.float32).reshape(-1).tolist()
        if len(values) != nz:
            raise UserError(f"direction {name!r} has {len(values)} values but the generator's latents have {nz}")
        vectors[str(name)] = values
    return {"format": ONNX_FORMAT, "input": INPUT, "output": OUTPUT, "nz": nz, "size": int(config["size"]),
            "nc": int(config.get("nc", 3)), "range": [-1.0, 1.0], "config": dict(config), "directions": vectors}


def export_onnx(generator: nn.Module, config: dict, directions: dict | None, path: Path) -> Path:
    """Write ``generator`` to ``path`` (.onnx; input "z" (B, nz) float32,
    output "images" (B, nc, size, size) in [-1, 1]) and ``path`` with .json
    beside it (nz, size, config, ``directions`` name -> vector when given),
    each atomically -> ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"an ONNX export's name ends in .onnx (got {path})")
    meta = metadata(config, directions)  # bad directions fail before anything is written
    model = onnx_bytes(generator, meta["nz"])
    with utils.atomic_path(path) as tmp:
        Path(tmp).write_bytes(model)
    utils.save_json(meta, path.with_suffix(".json"))
    return path
