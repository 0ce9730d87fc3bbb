"""The backend contract: a Backend builds a callable for one fixed input shape; a Runner
wraps it with the handle's padding and an eager path for every other shape.

Tensor contract of every runner (the same as ``Upscaler.infer``): float (N, 3, H, W) RGB in
[0, 1] on the handle's device and dtype in, (N, 3, scale*H, scale*W) out, same device and
dtype, not clamped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vsr.loading import dtype_name
from vsr.models.handle import input_padding, run_padded

log = logging.getLogger("vsr.backends")

Shape = tuple[int, int, int, int]
Fn = Callable[[torch.Tensor], torch.Tensor]

# Largest tolerated |backend - eager| on the first frame (outputs clamped to [0, 1]), by the
# precision both run in. fp32 allows for TF32 and reordered sums; half precisions for the
# rounding of a different kernel choice (about 4 and 2 ulps at 1.0).
TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-3,
    torch.float16: 1e-2,
    torch.bfloat16: 4e-2,
}


@dataclass(frozen=True)
class Backend:
    """One acceleration backend.

    ``unavailable(handle)`` returns why it cannot run this handle here, or None; ``build(handle,
    shape, cache)`` returns a callable for padded input of exactly ``shape`` (raises anything
    on failure: the caller falls back). A backend that keeps engines in ``cache`` also has
    ``cached(handle, shape, cache)``, the file ``build`` would load (whether or not it exists),
    and its ``build`` takes ``rebuild=True``: make the engine anew, replacing that file.
    """

    name: str
    description: str
    unavailable: Callable[..., str | None]
    build: Callable[..., Fn]
    cached: Callable[..., Path] | None = None


def first_reason(*checks: Callable[[], str | None]) -> str | None:
    """The first reason ``checks`` give why a backend cannot run here, or None: what a
    Backend's ``unavailable`` returns."""
    for check in checks:
        why = check()
        if why is not None:
            return why
    return None


def needs_package(load: Callable[[], object], package: str, extra: str) -> Callable[[], str | None]:
    """A check: ``load()`` (an import) succeeds, else "<package> is not installed" and the
    pip extra that brings it."""
    def check() -> str | None:
        try:
            load()
        except ImportError as exc:
            return f"{package} is not installed ({exc}); pip install 'vsr[{extra}]'"
        return None
    return check


def needs_network(handle, purpose: str) -> Callable[[], str | None]:
    """A check: the handle has a network (bicubic has none) to ``purpose``."""
    return lambda: f"{handle.name} has no network to {purpose}" if handle.module is None else None


def needs(condition: bool, reason: str) -> Callable[[], str | None]:
    return lambda: None if condition else reason


class NetworkOnly(nn.Module):
    """``module(x, return_all=False)`` as a one-input, one-output module (for tracers)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.net = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, return_all=False)


def padded_shape(handle, shape: Shape) -> Shape:
    """The shape the network sees once the handle pads it (vsr.models.handle.input_padding)."""
    n, c, h, w = shape
    left, right, top, bottom = input_padding(handle, h, w)
    return (n, c, h + top + bottom, w + left + right)


@dataclass
class Runner:
    """``handle.infer`` through ``backend`` for input of ``shape``; any other shape (a tile, a
    short last batch, a size change) runs eagerly. Built by ``vsr.backends.prepare``."""

    backend: str
    handle: object
    shape: Shape
    dtype: torch.dtype
    fn: Fn | None  # None for eager
    prepare_seconds: float = 0.0
    max_error: float | None = None  # |backend - eager| on the validation frame
    notes: list[str] = field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is None or tuple(x.shape) != self.shape or x.dtype != self.dtype:
            return self.handle.infer(x)
        with torch.inference_mode():
            # frames arrive channels-last (a permuted HWC buffer); compiled graphs and engines
            # are specialised on contiguous NCHW, so one copy here avoids a recompile
            return run_padded(self.handle, lambda padded: self.fn(padded.contiguous()), x)

    def describe(self) -> dict:
        return {"backend": self.backend, "shape": list(self.shape),
                "precision": dtype_name(self.dtype), "prepare_seconds": self.prepare_seconds,
                "max_error": self.max_error}
