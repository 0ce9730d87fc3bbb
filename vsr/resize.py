"""MATLAB-compatible bicubic ``imresize`` in torch, as two dense, cached, batched matmuls.

The SR literature makes its low-resolution inputs with MATLAB's ``imresize(HR, 1/s, 'bicubic')``
(antialiased) and scores with MATLAB's conventions; any other resize kernel shifts PSNR by tenths
of a dB. This module reproduces MATLAB exactly:

- cubic kernel with a = -0.5; kernel width 4, stretched to 4/scale when antialiasing a downscale
  (the kernel becomes ``h(x) = scale * cubic(scale * x)``);
- index mapping ``u = x / scale + 0.5 * (1 - 1 / scale)`` (1-based, pixel centres);
- weights normalised to sum 1 per output sample; symmetric (mirror) borders through MATLAB's
  auxiliary index ``[1..n, n..1]``; all-zero weight columns dropped;
- output length ``ceil(in * scale)``, or the size asked for (then ``scale = out / in``);
- dimensions resized in order of increasing scale, height first when the scales are equal.

Each 1-D resize is a dense (out, in) matrix, built in float64 on the CPU once per
(in, out, scale, antialias) and cached per (device, dtype); applying it is one matmul, so the
whole batch (any leading dims) is resized at once on any device.

Quantisation is the caller's choice: :func:`imresize` never rounds. MATLAB on a ``uint8`` image
rounds (half away from zero) and saturates to uint8 after *each* dimension;
:func:`imresize_uint8` reproduces that path, and :func:`to_uint8` is MATLAB's ``uint8(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

__all__ = ["imresize", "imresize_uint8", "output_size", "resize_matrix", "to_uint8"]

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def _contributions(in_len: int, out_len: int, scale: float,
                   antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: (out, P) weights and 0-based input indices.

    All-zero weight columns are dropped, as MATLAB does.
    """
    if scale < 1 and antialias:
        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * t)
        width = _KERNEL_WIDTH / scale
    else:
        kernel, width = _cubic, _KERNEL_WIDTH
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])  # 0-based
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


# The cached builders below run with inference mode off: a tensor made under
# ``torch.inference_mode()`` (a run of the engine) and cached would fail in a later autograd
# pass in the same process (training, or a test after an upscale).
@lru_cache(maxsize=256)
@torch.inference_mode(False)
def _matrix_cpu(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    weights, indices = _contributions(in_len, out_len, scale, antialias)
    dense = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    np.add.at(dense, (rows, indices), weights)  # mirrored taps can land on the same pixel
    matrix = torch.from_numpy(dense)
    matrix.requires_grad_(False)
    return matrix


@lru_cache(maxsize=128)
@torch.inference_mode(False)
def _matrix(in_len: int, out_len: int, scale: float, antialias: bool,
            device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _matrix_cpu(in_len, out_len, scale, antialias).to(device=device, dtype=dtype)


def resize_matrix(in_len: int, out_len: int, scale: float | None = None, *,
                  antialias: bool = True, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dense (out_len, in_len) matrix of a 1-D MATLAB bicubic resize (cached; do not modify).

    ``scale`` defaults to ``out_len / in_len``. Rows sum to 1.
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"resize lengths must be positive, got {in_len} -> {out_len}")
    scale = out_len / in_len if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return _matrix(int(in_len), int(out_len), scale, bool(antialias),
                   torch.device(device), dtype)


def _pair(value: float | Sequence[float], what: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if len(value) != 2:
        raise ValueError(f"{what} must be a number or a (height, width) pair, got {value!r}")
    return float(value[0]), float(value[1])


def output_size(in_size: tuple[int, int], scale: float | Sequence[float] | None = None,
                size: Sequence[int | None] | None = None
                ) -> tuple[tuple[int, int], tuple[float, float]]:
    """MATLAB's output size and per-dimension scale for an (H, W) input.

    Give ``scale`` (output = ceil(in * scale)), ``size`` (scale = out / in; one entry may be None
    to keep the aspect ratio, as MATLAB's NaN), or both (``size`` sets the output, ``scale`` the
    kernel). Returns ``((out_h, out_w), (scale_h, scale_w))``.
    """
    if scale is None and size is None:
        raise ValueError("imresize needs a scale or an output size")
    if size is not None:
        if len(size) != 2:
            raise ValueError(f"size must be (height, width), got {size!r}")
        out_h, out_w = size
        if out_h is None and out_w is None:
            raise ValueError("size needs at least one of height, width")
        if scale is None:
            if out_h is None:
                s = out_w / in_size[1]
                out_h = math.ceil(in_size[0] * s)
                scale = (s, s)
            elif out_w is None:
                s = out_h / in_size[0]
                out_w = math.ceil(in_size[1] * s)
                scale = (s, s)
            else:
                scale = (out_h / in_size[0], out_w / in_size[1])
        scales = _pair(scale, "scale")
        if out_h is None:
            out_h = math.ceil(in_size[0] * scales[0])
        if out_w is None:
            out_w = math.ceil(in_size[1] * scales[1])
        out = (int(out_h), int(out_w))
    else:
        scales = _pair(scale, "scale")
        out = (math.ceil(in_size[0] * scales[0]), math.ceil(in_size[1] * scales[1]))
    if min(scales) <= 0 or min(out) < 1:
        raise ValueError(f"invalid resize of {tuple(in_size)}: scale {scales}, output {out}")
    return out, scales


@lru_cache(maxsize=128)
@torch.inference_mode(False)
def _taps(in_len: int, out_len: int, scale: float, antialias: bool,
          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The same resize as (out, P) weights and input indices, for the banded CPU path."""
    weights, indices = _contributions(in_len, out_len, scale, antialias)
    return (torch.from_numpy(np.ascontiguousarray(weights.T)).to(dtype),
            torch.from_numpy(np.ascontiguousarray(indices.T)))


# On the CPU a dense matmul costs O(in x out) per line; past this length the banded form
# (P gathers of the input, P = 6 taps for an upscale) is much cheaper. On CUDA the matmul wins.
_BANDED_MIN_LEN = 96


@lru_cache(maxsize=128)
def _phases(in_len: int, factor: int) -> tuple[tuple[tuple[float, ...], ...], int, int] | None:
    """An integer upscale as ``factor`` fixed filters over a symmetric-padded input.

    Output ``factor * i + r`` = sum_j taps[r][j] * padded[i + j], padded = the input with
    ``lo``/``hi`` mirrored samples (MATLAB's auxiliary index) on each side. Returns (taps, lo,
    hi), or None where the rows are not periodic (then the banded path is used).
    """
    weights, indices = _contributions(in_len, in_len * factor, float(factor), True)
    i = np.arange(in_len * factor) // factor
    rows = np.arange(factor * 4, in_len * factor - factor * 4)  # clear of the mirrored borders
    if rows.size == 0:
        return None
    offsets = indices[rows] - i[rows, None]
    first = offsets[:factor]
    if not (np.array_equal(offsets, np.tile(first, (rows.size // factor, 1)))
            and np.allclose(weights[rows], np.tile(weights[rows[:factor]],
                                                    (rows.size // factor, 1)), atol=1e-12)):
        return None
    lo, hi = int(-first.min()), int(first.max())
    if max(lo, hi) >= in_len:
        return None
    taps = np.zeros((factor, lo + hi + 1))
    for r in range(factor):
        phase = rows[0] + ((r - rows[0]) % factor)
        for off, w in zip(offsets[phase - rows[0]], weights[phase], strict=True):
            taps[r, off + lo] += w
    return tuple(tuple(float(w) for w in row) for row in taps), lo, hi


def _polyphase(x: torch.Tensor, dim: int, plan: tuple) -> torch.Tensor:
    """Apply :func:`_phases` along ``dim`` (-2 or -1) with slices: no gathers, no matmul."""
    taps, lo, hi = plan
    n = x.shape[dim]
    padded = torch.cat([x.narrow(dim, 0, lo).flip(dim), x,
                        x.narrow(dim, n - hi, hi).flip(dim)], dim)
    phases = []
    for row in taps:
        acc = None
        for j, w in enumerate(row):
            if w == 0.0:
                continue
            view = padded.narrow(dim, j, n)
            acc = view * w if acc is None else acc.add_(view, alpha=w)
        phases.append(acc)
    y = torch.stack(phases, dim=dim)  # (..., n, factor, W) or (..., H, n, factor)
    shape = list(x.shape)
    shape[dim] = n * len(taps)
    return y.reshape(shape)


class _Pass:
    """One 1-D resize along ``dim``: a dense matrix, or on the CPU the per-phase filters of an
    integer upscale (``plan``) or taps for the banded gathers."""

    def __init__(self, dim: int, n_in: int, n_out: int, s: float, antialias: bool,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.dim = dim
        self.banded = device.type == "cpu" and max(n_in, n_out) >= _BANDED_MIN_LEN
        factor = n_out // n_in
        self.plan = (_phases(n_in, factor) if self.banded and factor >= 2
                     and n_out == n_in * factor and s == factor else None)
        if self.banded and self.plan is None:
            self.weights, self.indices = _taps(n_in, n_out, s, antialias, dtype)
        elif not self.banded:
            self.matrix = resize_matrix(n_in, n_out, s, antialias=antialias, device=device,
                                        dtype=dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.banded:
            return _apply(x, self.dim, self.matrix)
        if self.plan is not None:  # an integer upscale: fixed filters per output phase
            return _polyphase(x, self.dim, self.plan)
        # Gathering whole rows is fast; gathering along the last dim is not: transpose first.
        rows = x if self.dim == -2 else x.transpose(-1, -2).contiguous()
        out = None
        for w, idx in zip(self.weights, self.indices, strict=True):
            term = rows.index_select(rows.ndim - 2, idx).mul_(w.view(-1, 1))
            out = term if out is None else out.add_(term)
        return out if self.dim == -2 else out.transpose(-1, -2).contiguous()


def _passes(x: torch.Tensor, scale, size, antialias: bool, dtype: torch.dtype):
    """Yield the two 1-D passes in MATLAB's order (smaller scale first)."""
    in_h, in_w = x.shape[-2], x.shape[-1]
    (out_h, out_w), (s_h, s_w) = output_size((in_h, in_w), scale, size)
    passes = [(-2, in_h, out_h, s_h), (-1, in_w, out_w, s_w)]
    if s_w < s_h:  # MATLAB: sort(scale), a stable sort, so height first on a tie
        passes.reverse()
    for dim, n_in, n_out, s in passes:
        if n_in == n_out and s == 1.0:
            continue  # identity
        yield _Pass(dim, n_in, n_out, s, antialias, x.device, dtype)


def _apply(x: torch.Tensor, dim: int, matrix: torch.Tensor) -> torch.Tensor:
    if dim == -2:
        return torch.matmul(matrix, x)  # (out, H) @ (..., H, W)
    return torch.matmul(x, matrix.t())  # (..., H, W) @ (W, out)


def imresize(x: torch.Tensor, scale: float | Sequence[float] | None = None, *,
             size: Sequence[int | None] | None = None, antialias: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` on a float tensor, without any rounding.

    Args:
        x: floating tensor (..., H, W) (e.g. (N, C, H, W) or (C, H, W)), any device, any value
            range (0..1 or 0..255 alike; the resize is linear). float32 or float64 recommended;
            the matmuls run in ``x.dtype`` (on CUDA, float32 follows torch's TF32 setting).
        scale: factor for both dimensions or an (h, w) pair; output = ceil(in * scale).
        size: output (H, W) instead of, or with, ``scale`` (see :func:`output_size`).
        antialias: widen the kernel on a downscale, as MATLAB does by default.

    Returns:
        tensor (..., H', W'), same dtype and device. Values may overshoot the input range
        (cubic ringing); clamp and round as the caller needs (:func:`to_uint8`).
    """
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError("imresize needs a floating-point tensor; use imresize_uint8 for uint8")
    if x.ndim < 2:
        raise ValueError(f"imresize needs a (..., H, W) tensor, got shape {tuple(x.shape)}")
    for resize_pass in _passes(x, scale, size, antialias, x.dtype):
        x = resize_pass(x)
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``uint8(x)``: round half away from zero, saturate to 0..255 (NaN -> 0).

    Args:
        x: floating tensor, 0..255 scale, any shape and device.
    Returns:
        uint8 tensor of the same shape and device.
    """
    return torch.floor(torch.nan_to_num(x, nan=0.0).clamp(0.0, 255.0) + 0.5).to(torch.uint8)


def imresize_uint8(x: torch.Tensor, scale: float | Sequence[float] | None = None, *,
                   size: Sequence[int | None] | None = None, antialias: bool = True,
                   compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """MATLAB ``imresize`` on a uint8 image: each 1-D pass is rounded and saturated to uint8.

    Args:
        x: uint8 tensor (..., H, W), 0..255, any device.
        compute_dtype: precision of the matmuls (float64 matches MATLAB's double arithmetic).

    Returns:
        uint8 tensor (..., H', W'), same device.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"imresize_uint8 needs a uint8 tensor, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"imresize needs a (..., H, W) tensor, got shape {tuple(x.shape)}")
    out = x
    for resize_pass in _passes(x, scale, size, antialias, compute_dtype):
        out = to_uint8(resize_pass(out.to(compute_dtype)))
    return out
