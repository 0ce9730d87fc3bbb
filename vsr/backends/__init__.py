"""Acceleration backends behind one switch: eager, compile, tensorrt, onnx, or auto.

    runner = prepare(handle, "auto", (1, 3, 360, 640), sample=first_frame)
    y = runner(x)  # same contract as handle.infer

``prepare`` tries the asked backend, then the ones after it in the device's order; a backend
that is missing, fails to build, or disagrees with eager on the first frame (beyond the
tolerance of the precision) is skipped with a one-line warning. Eager always works, so
``prepare`` returns a runner unless the eager model itself fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType

import torch

from vsr.backends.base import (
    TOLERANCE,
    Backend,
    Runner,
    Shape,
    dtype_name,
    padded_shape,
)
from vsr.backends.cache import EngineCache, EngineKey, default_cache_dir, model_digest
from vsr.backends.compile import COMPILE
from vsr.backends.eager import EAGER
from vsr.backends.onnx import ONNX
from vsr.backends.tensorrt import TENSORRT
from vsr.errors import ConfigError
from vsr.options import BACKEND_CHOICES

log = logging.getLogger("vsr.backends")

BACKENDS: Mapping[str, Backend] = MappingProxyType({
    b.name: b for b in (EAGER, COMPILE, TENSORRT, ONNX)})
CHOICES = BACKEND_CHOICES  # ("auto", *BACKENDS)

# Fastest first; measured (benchmarks/ENGINE.md). On CUDA: TensorRT, then compiled CUDA graphs,
# then eager. On the CPU, drn-t-x2 at 360p -> 720p, interleaved, quiet 2-core VM, s/frame at
# 1 / 2 threads with the allocator tuned (vsr.configure_runtime, which the CLI makes): eager
# 1.16 / 0.75, onnxruntime 1.23 / 0.95; small frames still favour onnxruntime (144x176: eager
# 0.133, onnx 0.104; 240x320: 0.263 vs 0.285; 288x352: 0.328 vs 0.359). So onnx goes first
# for frames under _ONNX_MAX_PIXELS, eager alone above. The choice is a function of the
# request, the device and the frame size only, never of process state: the same input gets
# the same backend (and the same output) from the CLI and from Python. (Without the tuning
# eager is slower, 2.41 / 1.55 against onnxruntime's 1.41 / 0.87: call configure_runtime.)
# compile is left out: no faster than onnx, and its build took 120 s with a warm inductor
# cache and 457 s cold, which dominates short clips.
AUTO_ORDER: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "cuda": ("tensorrt", "compile", "eager"),
    "cpu": ("onnx", "eager"),
})
_CPU_ORDER_LARGE_FRAMES = ("eager",)
_ONNX_MAX_PIXELS = 50_000  # input H x W; between the measured 144x176 and 240x320

__all__ = ["AUTO_ORDER", "BACKENDS", "CHOICES", "TOLERANCE", "Backend", "EngineCache",
           "EngineKey", "Runner", "candidates", "default_cache_dir", "model_digest",
           "parse_backends", "prepare", "prepare_for_frame"]


def parse_backends(text: str) -> tuple[str, ...]:
    """``"eager,compile"`` -> ("eager", "compile"); raises ConfigError for unknown names,
    an empty entry (``"eager,"``: a name left out?) and a name given twice."""
    names = tuple(n.strip() for n in text.split(","))
    bad = [n or repr(n) for n in names if n not in CHOICES]
    if bad:
        raise ConfigError(f"unknown backend {', '.join(bad)} in {text!r} "
                          f"(choose from {', '.join(CHOICES)}, comma-separated)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"backend {', '.join(twice)} is given twice in {text!r}")
    return names


def candidates(backend: str, device: torch.device,
               shape: Shape | None = None) -> tuple[str, ...]:
    """The backends ``prepare`` tries, in order: the asked one, then the rest of the
    device's auto order after it (all of it when the asked one is not in it), then eager.
    On the CPU the auto order is eager alone unless ``shape`` (N, 3, H, W) is a small frame
    (no shape: a large one). A pure function of its arguments."""
    if backend not in CHOICES:
        raise ConfigError(f"unknown backend {backend!r} (choose from {', '.join(CHOICES)})")
    order = AUTO_ORDER.get(device.type, ("eager",))
    small = shape is not None and shape[-2] * shape[-1] < _ONNX_MAX_PIXELS
    if device.type == "cpu" and not small:
        order = _CPU_ORDER_LARGE_FRAMES
    if backend == "auto":
        return order
    rest = order[order.index(backend) + 1:] if backend in order else order
    return tuple(dict.fromkeys((backend, *rest, "eager")))


def _sample(handle, shape: Shape) -> torch.Tensor:
    """A deterministic validation input: smooth gradients plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    x = 0.5 * (yy + xx) / 2 + 0.5 * torch.rand(shape, generator=g)
    return x.expand(n, c, h, w).to(handle.device, handle.dtype).contiguous()


def _max_error(runner: Runner, sample: torch.Tensor) -> float:
    with torch.inference_mode():
        ref = runner.handle.infer(sample).float().clamp_(0, 1)
        out = runner(sample).float().clamp_(0, 1)
    if out.shape != ref.shape:
        return float("inf")
    return float((out - ref).abs().max())


def _try(b: Backend, handle, shape: Shape, sample: torch.Tensor | None,
         cache: EngineCache | None, validate: bool,
         notes: list[str]) -> tuple[Runner | None, str | None]:
    """Build backend ``b`` and check it against eager: (the runner, None), or (None, why not).

    An engine loaded from the cache that disagrees with eager (the file replaced by another
    model's, damaged weights that still load) is rebuilt once, with a warning: a cache file is
    not trusted over a fresh build. An engine just built that disagrees is given up, and so
    noted in the cache that a later run finding that very file does not rebuild it in vain.
    """
    padded = padded_shape(handle, shape)
    if cache is None and b.cached is not None:
        try:
            cache = EngineCache()
        except ConfigError as exc:  # no folder for it: this backend, not the run, is lost
            return None, f"failed ({exc})"
    try:
        cached = b.cached(handle, padded, cache) if b.cached is not None else None
        from_cache = cached is not None and cached.is_file()
    except Exception:  # a key that cannot be computed fails the build below, reported there
        cached, from_cache = None, False
    x = sample
    rebuild = False  # True once: a cached engine that differs is built again
    while True:
        t = time.perf_counter()
        try:
            # rebuild passed only when asked: a Backend without a cache need not take it
            fn = b.build(handle, padded, cache, **({"rebuild": True} if rebuild else {}))
            runner = Runner(b.name, handle, shape, handle.dtype, fn, notes=notes)
            if validate:
                x = x if x is not None else _sample(handle, shape)
                runner.max_error = _max_error(runner, x)
        except Exception as exc:  # any build or run failure means: use the next one
            return None, f"failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        runner.prepare_seconds = round(time.perf_counter() - t, 3)
        tol = TOLERANCE.get(handle.dtype, TOLERANCE[torch.float32])
        if runner.max_error is None or runner.max_error <= tol:
            log.info("backend %s ready in %.1f s (max |error| vs eager %s)", b.name,
                     runner.prepare_seconds, runner.max_error)
            return runner, None
        why = (f"differs from eager by {runner.max_error:.2e} on the first frame "
               f"(tolerance {tol:.0e} in {dtype_name(handle.dtype)})")
        if cached is None:
            return None, why
        if rebuild or not from_cache:  # just built: it is the engine that differs, not its file
            cache.note_differs(cached)
            return None, why
        if cache.known_to_differ(cached):  # the file a build here gave before: no use rebuilding
            return None, why
        msg = f"backend {b.name}: the cached engine {why}; rebuilding it"
        log.warning(msg)
        notes.append(msg)
        rebuild = True


def prepare(handle, backend: str = "auto", shape: Shape = (1, 3, 64, 64), *,
            sample: torch.Tensor | None = None, cache: EngineCache | None = None,
            validate: bool = True) -> Runner:
    """A Runner for ``handle`` on input of ``shape`` (N, 3, H, W) in the handle's dtype.

    ``sample`` (same shape, dtype and device; the first frame(s) of the run) is what the
    backend is checked against eager on; without it a synthetic frame is used. Never
    raises for a backend problem: each one logs a one-line warning (info for backends
    ``auto`` merely skips) and the next candidate is tried. ``cache``: where engines are kept
    (None: ``EngineCache()``, made only for a backend that keeps engines, so that eager needs
    no cache folder). Raises ConfigError for an unknown backend name, a bad ``shape`` or a
    ``sample`` that does not match it.
    """
    shape = tuple(int(v) for v in shape)
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise ConfigError(f"backend input shape must be (N, 3, H, W), got {shape}")
    if sample is not None and (tuple(sample.shape) != shape or sample.dtype != handle.dtype
                               or sample.device.type != handle.device.type):
        # any other sample runs eagerly in the runner: the backend would pass unchecked
        raise ConfigError(f"the validation sample must be {shape} {handle.dtype} on "
                          f"{handle.device.type}, got {tuple(sample.shape)} {sample.dtype} on "
                          f"{sample.device.type}")
    notes: list[str] = []
    names = candidates(backend, handle.device, shape)
    for i, name in enumerate(names):
        nxt = names[i + 1] if i + 1 < len(names) else None
        if name == "eager":
            return Runner("eager", handle, shape, handle.dtype, None, notes=notes)
        b = BACKENDS[name]
        why = b.unavailable(handle)
        if why is None:
            runner, why = _try(b, handle, shape, sample, cache, validate, notes)
            if runner is not None:
                return runner
        msg = f"backend {name}: {why}; falling back to {nxt}"
        if backend == "auto" and not why.startswith(("failed", "differs")):
            log.info(msg)
        else:
            log.warning(msg)
            notes.append(msg)
    raise AssertionError("eager is always the last candidate")  # pragma: no cover


def prepare_for_frame(handle, backend: str, image, *, batch: int = 1,
                      cache: EngineCache | None = None) -> Runner:
    """``prepare`` for frames like ``image`` (H, W, 3) uint8/uint16, the run's first frame:
    the runner's shape is (batch, 3, H, W) and the check against eager runs on that frame
    (repeated ``batch`` times)."""
    from vsr.pipeline.compute import to_model_input

    img = torch.as_tensor(image)
    x = to_model_input(img.to(handle.device), handle.dtype)
    x = x.expand(batch, -1, -1, -1).contiguous()
    return prepare(handle, backend, tuple(x.shape), sample=x, cache=cache)
