"""Tiled inference for frames too large to run at once.

Each tile is inferred with ``overlap`` pixels of context on every side that has a
neighbour, and only its core is written out, so tile borders never show seams from
missing context (up to the model's receptive field, which ``overlap`` should cover).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from vsr.device import available_bytes, leaf_output_bytes
from vsr.errors import ConfigError
from vsr.options import MIN_TILE

log = logging.getLogger(__name__)

# The share of the memory available a CPU run's activations may take before frames go in tiles
_CPU_SHARE = 0.5
_PROBE = 32  # the side of the input the activations are counted on


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Split [0, size) into cores of at most ``tile`` px; per core return
    (core_start, core_end, ctx_start, ctx_end) with ``overlap`` px of clipped context."""
    if tile < MIN_TILE:
        raise ConfigError(f"tile must be at least {MIN_TILE} px, got {tile}")
    spans = []
    for start in range(0, size, tile):
        end = min(start + tile, size)
        spans.append((start, end, max(0, start - overlap), min(size, end + overlap)))
    return spans


def tiled_infer(infer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
                tile: int, overlap: int = 16) -> torch.Tensor:
    """Run ``infer`` on (N, C, H, W) ``x`` tile by tile; returns (N, C, sH, sW) like
    ``infer(x)`` would, on x's device and dtype. ``infer`` must upscale by ``scale``."""
    n, c, h, w = x.shape
    if h <= tile and w <= tile:
        return infer(x)
    out = torch.empty((n, c, h * scale, w * scale), device=x.device, dtype=x.dtype)
    for y0, y1, cy0, cy1 in tile_spans(h, tile, overlap):
        for x0, x1, cx0, cx1 in tile_spans(w, tile, overlap):
            y = infer(x[:, :, cy0:cy1, cx0:cx1])
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                y[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out


def activation_bytes_per_pixel(module: torch.nn.Module, dtype: torch.dtype) -> float:
    """Bytes of activations the network ``module`` makes per input pixel in ``dtype``: the
    outputs of all its leaf modules on a small input, counted with one forward pass. More than
    its peak (inference frees each when done; measured, the default x2 model's peak resident
    memory grew 0.76 GB per input megapixel in bf16, against 1.06 counted), so a budget
    checked against it holds."""
    probe = torch.zeros(1, 3, _PROBE, _PROBE, dtype=dtype)
    return leaf_output_bytes((module,), lambda: module(probe)) / (_PROBE * _PROBE)


def cpu_tile(handle, width: int, height: int, batch: int, overlap: int,
             name: str = "the input") -> int | None:
    """The tile side (input pixels) for a CPU run of ``handle`` on ``batch`` frames of
    ``width`` x ``height`` whose activations would take more than half the memory available
    whole; None where they fit (or the memory or the network is unknown: bicubic). Without
    it a large picture could outgrow the machine, and the kernel kills such a process with no
    error line (the default x2 model needs about 0.8 GB per input megapixel; a 49-megapixel
    PNG of 143 KB is under the pixel limit)."""
    module = getattr(handle, "module", None)
    if module is None or handle.device.type != "cpu":
        return None
    have = available_bytes(handle.device)
    if have is None:
        return None
    per_pixel = activation_bytes_per_pixel(module, handle.dtype) * batch
    budget = have * _CPU_SHARE
    if per_pixel * width * height <= budget:
        return None
    side = int(math.sqrt(budget / per_pixel)) - 2 * overlap
    tile = max(MIN_TILE, side // 8 * 8)
    log.warning("%s: frames of %dx%d need about %.1f GiB for the model's activations, more "
                "than half the %.1f GiB available: upscaled in tiles of %d px (--tile sets "
                "the size)", name, width, height, per_pixel * width * height / 2**30,
                have / 2**30, tile)
    return tile
