"""TensorRT through torch-tensorrt: one static-shape engine per (weights, shape, precision,
GPU, TensorRT and torch versions), built ahead of time and cached on disk as an exported
program; later runs load it instead of rebuilding (a build takes minutes, a load seconds)."""

from __future__ import annotations

import importlib
import logging

import torch

from vsr.backends.base import (
    Backend,
    NetworkOnly,
    dtype_name,
    first_reason,
    needs,
    needs_network,
    needs_package,
)
from vsr.backends.cache import EngineKey, device_name, model_digest
from vsr.errors import OutputError

log = logging.getLogger("vsr.backends")


def versions() -> str:
    """``tensorrt X / torch-tensorrt Y``; raises ImportError when either is missing."""
    trt = importlib.import_module("tensorrt")
    ttrt = importlib.import_module("torch_tensorrt")
    return f"tensorrt {trt.__version__} / torch-tensorrt {ttrt.__version__}"


def _unavailable(handle) -> str | None:
    # the device first: on a CPU, installing torch-tensorrt (as the package's reason
    # advises) would not help
    return first_reason(needs(handle.device.type == "cuda",
                              f"TensorRT needs a CUDA device, this run is on {handle.device}"),
                        needs_package(versions, "torch-tensorrt", "tensorrt"),
                        needs_network(handle, "build an engine from"))


def engine_key(handle, shape) -> EngineKey:
    return EngineKey(model=model_digest(handle.module), backend="tensorrt", shape=tuple(shape),
                     precision=dtype_name(handle.dtype), device=device_name(handle.device),
                     tensorrt=versions())


def compile_engine(handle, shape) -> torch.nn.Module:
    """A TensorRT-compiled module for input of exactly ``shape`` in the handle's dtype."""
    import torch_tensorrt

    x = torch.zeros(shape, device=handle.device, dtype=handle.dtype)
    net = NetworkOnly(handle.module).eval()
    try:
        return torch_tensorrt.compile(net, ir="dynamo", arg_inputs=[x],
                                      enabled_precisions={handle.dtype})
    except TypeError:  # torch-tensorrt before arg_inputs
        return torch_tensorrt.compile(net, ir="dynamo", inputs=[x],
                                      enabled_precisions={handle.dtype})


def save_engine(module: torch.nn.Module, path, shape, handle) -> None:
    import torch_tensorrt

    x = torch.zeros(shape, device=handle.device, dtype=handle.dtype)
    try:
        torch_tensorrt.save(module, str(path), arg_inputs=[x])
    except TypeError:
        torch_tensorrt.save(module, str(path), inputs=[x])


def _cached(handle, shape, cache):
    return cache.path(engine_key(handle, shape), ".ep")


def _build(handle, shape, cache, rebuild: bool = False):
    importlib.import_module("torch_tensorrt")  # registers the engine ops torch.export.load needs
    path = _cached(handle, shape, cache)
    if not rebuild and path.is_file():
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # a corrupt or foreign file: rebuild it
            log.warning("cached TensorRT engine %s unusable (%s); rebuilding", path.name,
                        " ".join(str(exc).split())[:200])
    log.info("building a TensorRT engine for %s %s (cached in %s)", handle.name,
             tuple(shape), path.parent)
    module = compile_engine(handle, shape)
    try:
        cache.build(path, lambda tmp: save_engine(module, tmp, shape, handle))
    except (OSError, OutputError) as exc:
        # the cache cannot be written (a read-only home, a full disk): the engine, minutes in
        # the making, still runs; it is only not kept for the next run
        log.warning("engine cache %s is not writable (%s); the TensorRT engine is not kept",
                    path.parent, " ".join(str(exc).split())[:200])
    return module


TENSORRT = Backend("tensorrt", "TensorRT via torch-tensorrt (CUDA, static shape)",
                   _unavailable, _build, _cached)
