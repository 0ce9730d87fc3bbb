"""ONNX through onnxruntime on the CPU: the network is exported once per weights (dynamic
batch, height and width) into the engine cache and run by an InferenceSession."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsr.backends.base import (
    Backend,
    NetworkOnly,
    first_reason,
    needs,
    needs_network,
    needs_package,
)
from vsr.backends.cache import EngineKey, model_digest
from vsr.errors import ConfigError, OutputError

log = logging.getLogger("vsr.backends")

ONNX_OPSET = 17
# torch.onnx.export keeps its state in process globals (torch.onnx._globals.GLOBALS): two
# exports at once from two threads (two batch workers, two upscale_file calls) fail each
# other's ("GLOBALS.in_onnx_export must be True"), and torch prints the IR graph on stdout.
_EXPORT_LOCK = threading.RLock()


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off. Its Linux and macOS wheels (1.29 on)
    record usage events for upload to Microsoft and keep a device identifier under
    ~/.cache/Microsoft (and a session file in the temp folder); vsr sends nothing anywhere,
    so ``ORT_DISABLE_TELEMETRY=1`` is set before onnxruntime starts, unless the environment
    sets it already. Raises ImportError where onnxruntime is not installed."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def export_onnx(module: nn.Module, path: str | Path, *, opset: int = ONNX_OPSET,
                sample_hw: tuple[int, int] = (32, 32), batch: int = 1) -> None:
    """Write ``module(x, return_all=False)`` as ONNX with input ``lr`` (N, 3, H, W) and
    output ``sr`` (N, 3, sH, sW), float32, N/H/W dynamic; traced on a (batch, 3, *sample_hw)
    input. Raises ConfigError without onnx."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx package ({exc}); "
                          "pip install 'vsr[onnx]'") from None
    p = next(module.parameters())
    net = NetworkOnly(module).eval()
    x = torch.rand(batch, 3, *sample_hw, dtype=p.dtype, device=p.device)
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter: deprecated in favour of dynamo=True, which needs
        # onnxscript (not in the onnx extra) and is slower; the graph is the same.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=["lr"], output_names=["sr"],
            dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"},
                          "sr": {0: "batch", 2: "out_height", 3: "out_width"}})


def onnx_signature(path: str | Path) -> dict[str, dict]:
    """What the ONNX file at ``path`` declares it takes and gives, read from the file itself:
    ``{"input": {"name", "shape", "dtype"}, "output": {...}}`` for its first input and output,
    where ``shape`` has an int for a fixed axis and the axis' name (a string) for a dynamic one
    (None: neither). Raises ConfigError without onnx, OutputError for a file onnx cannot parse.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"reading an ONNX file needs the onnx package ({exc}); "
                          "pip install 'vsr[onnx]'") from None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
        values = {"input": graph.input[0], "output": graph.output[0]}
    except Exception as exc:  # DecodeError, IndexError: not an ONNX model we can read
        raise OutputError(f"cannot read the ONNX file {path}: "
                          f"{' '.join(str(exc).split())[:200] or type(exc).__name__}") from None

    def describe(value) -> dict:
        t = value.type.tensor_type
        dims = [getattr(d, d.WhichOneof("value")) if d.WhichOneof("value") else None
                for d in t.shape.dim]
        return {"name": value.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}
    return {k: describe(v) for k, v in values.items()}


def _unavailable(handle) -> str | None:
    return first_reason(
        needs_network(handle, "export"),
        needs_package(import_onnxruntime, "onnxruntime", "onnx"),
        needs(handle.device.type == "cpu",
              "the onnx backend runs on the CPU (use compile or tensorrt on CUDA)"),
        needs(handle.dtype == torch.float32, "the onnx backend runs in fp32 only"))


def _key(handle) -> EngineKey:
    return EngineKey(model=model_digest(handle.module), backend="onnx", shape=None,
                     precision="fp32", device="cpu", tensorrt=None, extra=f"opset{ONNX_OPSET}")


def _cached(handle, shape, cache) -> Path:
    return cache.path(_key(handle), ".onnx")


def _build(handle, shape, cache, rebuild: bool = False):
    ort = import_onnxruntime()

    path = _cached(handle, shape, cache)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1

    def open_session(file: Path):
        return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])

    def export_and_open():
        try:
            cache.build(path, lambda tmp: export_onnx(handle.module, tmp))
        except (OSError, OutputError) as exc:
            # the cache cannot be written (a read-only home, a full disk): the export is
            # made privately and not kept, so the choice of backend stays the same
            log.warning("engine cache %s is not writable (%s); the ONNX export is not kept",
                        path.parent, " ".join(str(exc).split())[:200])
            with tempfile.TemporaryDirectory(prefix="vsr-onnx-") as folder:
                private = Path(folder) / path.name
                export_onnx(handle.module, private)
                return open_session(private)  # loaded into memory: the file can go
        return open_session(path)

    with _EXPORT_LOCK:  # a thread that waited finds the file another one built
        if rebuild or not path.is_file():
            session = export_and_open()
        else:
            try:
                session = open_session(path)
            except Exception as exc:  # a corrupt or truncated cached file: rebuild it, once
                log.warning("cached ONNX engine %s unusable (%s); rebuilding", path.name,
                            " ".join(str(exc).split())[:200])
                session = export_and_open()
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        y = session.run(None, {name: np.ascontiguousarray(x.numpy())})[0]
        return torch.from_numpy(y)

    return run


ONNX = Backend("onnx", "ONNX Runtime (CPU, fp32)", _unavailable, _build, _cached)
