"""Known degradations for adaptation to real footage: Gaussian blur + decimation.

A user's low-resolution video is rarely a bicubic downscale. When its degradation is known, or
estimated from the footage itself (:func:`estimate_gaussian_sigma`), the unpaired dual loss of
``vsr train --adapt`` can close the loop through that degradation instead of the learned dual
networks: the primal's output, blurred and decimated the same way, must give the frame back.

The kernel is centred the way MATLAB's ``imresize`` centres its samples: LR pixel ``i`` sits at
HR coordinate ``(i + 0.5) * scale - 0.5``, so an even scale samples between two HR pixels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vsr.errors import ConfigError

_GAUSSIAN = re.compile(r"^gaussian:(?P<sigma>[0-9]*\.?[0-9]+)$")


@dataclass(frozen=True)
class DegradationSpec:
    """How the adaptation frames were made from their (unknown) HR originals.

    ``kind`` is ``dual`` (the learned dual networks, as in the paper), ``gaussian`` (blur of
    standard deviation ``sigma`` HR pixels, then decimation by the model's scale) or ``auto``
    (a Gaussian whose sigma is estimated from the adaptation frames).
    """

    kind: str
    sigma: float | None = None

    @classmethod
    def parse(cls, text: str) -> DegradationSpec:
        text = text.strip().lower()
        if text in ("dual", "auto"):
            return cls(text)
        m = _GAUSSIAN.match(text)
        if m is None:
            raise ConfigError(f"adapt degradation must be dual, auto or gaussian:SIGMA, "
                              f"got {text!r}")
        sigma = float(m["sigma"])
        if not 0.2 <= sigma <= 8.0:
            raise ConfigError(f"gaussian sigma must be in [0.2, 8], got {sigma}")
        return cls("gaussian", sigma)

    def __str__(self) -> str:
        return f"gaussian:{self.sigma:g}" if self.kind == "gaussian" else self.kind


def gaussian_taps(sigma: float, scale: int) -> torch.Tensor:
    """1-D float64 taps of a normalised Gaussian sampled at the decimation grid's offsets.

    Even ``scale``: an even number of taps at half-integer offsets; odd: integer offsets.
    """
    half = 0.5 if scale % 2 == 0 else 0.0
    radius = math.ceil(3.0 * sigma + half)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64) + half
    if half:
        t = t[:-1]
    k = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


class GaussianDegradation(nn.Module):
    """Separable Gaussian blur, then keep every ``scale``-th sample (reflect padding).

    Maps float (N, C, H, W) to (N, C, H // scale, W // scale); differentiable; no parameters.
    """

    def __init__(self, sigma: float, scale: int) -> None:
        super().__init__()
        if scale < 1:
            raise ConfigError(f"scale must be >= 1, got {scale}")
        self.sigma = float(sigma)
        self.scale = int(scale)
        self.register_buffer("taps", gaussian_taps(sigma, scale).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        n = self.taps.numel()
        c = x.shape[1]
        # Output i is centred at (i + 0.5) * s - 0.5; tap j of n sits at offset j - (n - 1) / 2.
        lo = (n - 1) // 2 - (s - 1) // 2
        h_out, w_out = x.shape[-2] // s, x.shape[-1] // s
        hi_h = (h_out - 1) * s + n - lo - x.shape[-2]
        hi_w = (w_out - 1) * s + n - lo - x.shape[-1]
        pad = (lo, max(hi_w, 0), lo, max(hi_h, 0))
        y = F.pad(x, pad, mode="reflect" if max(pad) < min(x.shape[-2:]) else "replicate")
        k = self.taps.to(x.dtype)
        y = F.conv2d(y, k.view(1, 1, 1, n).expand(c, 1, 1, n), stride=(1, s), groups=c)
        y = F.conv2d(y, k.view(1, 1, n, 1).expand(c, 1, n, 1), stride=(s, 1), groups=c)
        return y[..., :h_out, :w_out]


def degrade_uint8(frames: torch.Tensor, sigma: float, scale: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, H // scale, W // scale), blurred and decimated."""
    with torch.no_grad():
        y = GaussianDegradation(sigma, scale)(frames.float())
    return y.round().clamp(0, 255).to(torch.uint8)


_FINE, _COARSE = GaussianDegradation(1.0, 1), GaussianDegradation(2.0, 1)


def _band_ratio(x: torch.Tensor) -> float:
    """Energy of the finest band over the next one: sum|x - g1(x)|^2 / sum|g1(x) - g2(x)|^2."""
    g1, g2 = _FINE(x), _COARSE(x)
    fine = (x - g1)[..., 8:-8, 8:-8].pow(2).sum()
    coarse = (g1 - g2)[..., 8:-8, 8:-8].pow(2).sum()
    return float(fine / coarse.clamp_min(1e-12))


def estimate_gaussian_sigma(frames: list[torch.Tensor], scale: int, *,
                            candidates: tuple[float, ...] | None = None) -> float:
    """Estimate the Gaussian blur (in HR pixels) that made these LR frames, blind.

    Cross-scale self-similarity: natural images look alike across scales, so degrading the LR
    frames once more with the right kernel should leave their band-energy ratio (fine band over
    the next band) unchanged. Returns the candidate sigma whose re-degraded frames' ratio is
    closest to the frames' own. ``frames``: uint8 or float (3, H, W) tensors (luma is used;
    at most 16 frames and a 384-pixel centre crop of each).
    """
    if not frames:
        raise ConfigError("no frames to estimate the degradation from")
    # 0.2 to 1.5 LR pixels in steps of 0.05 LR pixels (x2: 0.4 to 3.0 HR pixels by 0.1)
    cands = candidates or tuple(round(scale * (0.2 + 0.05 * i), 3) for i in range(27))
    step = max(1, len(frames) // 16)  # at most 16 frames, centre crops of at most 384 pixels
    lumas = []
    for f in frames[::step][:16]:
        h, w = f.shape[-2:]
        top, left = max(0, (h - 384) // 2), max(0, (w - 384) // 2)
        x = f[..., top:top + 384, left:left + 384].float()
        x = x / 255.0 if f.dtype == torch.uint8 else x
        y = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None, None]
        if min(y.shape[-2:]) >= 16 * scale + 16:
            lumas.append(y)
    if not lumas:
        raise ConfigError(f"frames are too small to estimate the degradation "
                          f"(need at least {16 * scale + 16} pixels a side)")
    own = sum(_band_ratio(y) for y in lumas) / len(lumas)
    best, best_err = cands[0], math.inf
    for sigma in cands:
        deg = GaussianDegradation(sigma, scale)
        ratio = sum(_band_ratio(deg(y)) for y in lumas) / len(lumas)
        err = abs(math.log(ratio / own))
        if err < best_err:
            best, best_err = sigma, err
    return float(best)
