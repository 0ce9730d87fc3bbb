"""Tiled inference for frames too large to run at once.

Each tile is inferred with ``overlap`` pixels of context on every side that has a
neighbour, and only its core is written out, so tile borders never show seams from
missing context (up to the model's receptive field, which ``overlap`` should cover).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vsr.errors import ConfigError
from vsr.options import MIN_TILE


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
