"""ONNX through onnxruntime on the CPU: the network is exported once per weights (dynamic
batch, height and width) into the engine cache and run by an InferenceSession."""

from __future__ import annotations

import importlib

import numpy as np
import torch

from vsr.backends.base import Backend
from vsr.backends.cache import EngineKey, model_digest


def _unavailable(handle) -> str | None:
    try:
        importlib.import_module("onnxruntime")
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc}); pip install 'vsr[onnx]'"
    if handle.module is None:
        return f"{handle.name} has no network to export"
    if handle.device.type != "cpu":
        return "the onnx backend runs on the CPU (use compile or tensorrt on CUDA)"
    if handle.dtype != torch.float32:
        return "the onnx backend runs in fp32 only"
    return None


def _build(handle, shape, cache):
    import onnxruntime as ort

    from vsr.export import ONNX_OPSET, export_onnx

    key = EngineKey(model=model_digest(handle.module), backend="onnx", shape=None,
                    precision="fp32", device="cpu", tensorrt=None,
                    extra=f"opset{ONNX_OPSET}")
    path = cache.path(key, ".onnx")
    if not path.is_file():
        cache.build(path, lambda tmp: export_onnx(handle.module, tmp))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        y = session.run(None, {name: np.ascontiguousarray(x.numpy())})[0]
        return torch.from_numpy(y)

    return run


ONNX = Backend("onnx", "ONNX Runtime (CPU, fp32)", _unavailable, _build)
