"""An exported generator run by onnxruntime on the CPU, called like the
PyTorch one: latents in, images (a torch tensor in [-1, 1]) out.

    G = OnnxGenerator("faces.onnx")              # a file from generator.py --export faces.onnx
    G = OnnxGenerator(onnx_bytes(generator, 100))  # or a model made in memory (export.onnx_export)
    images = G(torch.randn(4, G.nz))             # (4, 3, G.size, G.size)

The session is set for one request at a time with low latency: one
intra-op thread by default (at batch 1 a second thread was no faster here:
BENCHMARKS.md), sequential execution, every graph optimisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils import UserError

try:  # optional: requirements-export.txt
    import onnxruntime
except ImportError:
    onnxruntime = None

THREADS = 1  # intra-op threads of a session


def require_onnxruntime() -> None:
    if onnxruntime is None:
        raise UserError("running an ONNX generator needs onnxruntime: pip install -r requirements-export.txt")


def session_options(threads: int = THREADS):
    """onnxruntime's options for low latency on the CPU with ``threads`` intra-op threads."""
    require_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return options


class OnnxGenerator:
    """A generator ONNX model (a path or its bytes) on onnxruntime's CPU
    provider: ``G(z)`` with z (B, nz) (a tensor or an array) -> (B, nc,
    size, size) float32 tensor in [-1, 1]; ``nz``, ``size``, ``nc`` as the
    torch Generator has them."""

    def __init__(self, model: str | Path | bytes, threads: int = THREADS):
        require_onnxruntime()
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise UserError(f"ONNX file not found: {model} (write one with generator.py --export faces.onnx)")
        what = "the ONNX model" if isinstance(model, bytes) else str(model)
        try:
            self.session = onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                        session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own error types: a file that is not a model it can run
            raise UserError(f"{what} is not an ONNX model onnxruntime can run ({str(err).splitlines()[0]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape_in, shape_out = inputs[0].shape, outputs[0].shape
        if not (len(inputs) == len(outputs) == 1 and len(shape_in) == 2 and len(shape_out) == 4
                and all(isinstance(d, int) for d in (shape_in[1], *shape_out[1:]))):
            raise UserError(f"{what} is not a generator export: it takes {[i.shape for i in inputs]} and gives "
                            f"{[o.shape for o in outputs]}, not z (B, nz) -> images (B, nc, size, size)")
        self.input, self.output, self.threads = inputs[0].name, outputs[0].name, threads
        self.nz, self.nc, self.size = shape_in[1], shape_out[1], shape_out[3]

    def __call__(self, z) -> torch.Tensor:
        array = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        array = np.ascontiguousarray(array, dtype=np.float32).reshape(len(array), self.nz)
        return torch.from_numpy(self.session.run([self.output], {self.input: array})[0])

    def __repr__(self) -> str:
        return f"OnnxGenerator(nz={self.nz}, size={self.size}, threads={self.threads})"
