"""PSNR and SSIM on the Y channel, as the standard (MATLAB) SR evaluation scripts compute them.

- Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 0..255 RGB (BT.601, MATLAB's
  ``rgb2ycbcr``), rounded to 8 bits as ``rgb2ycbcr`` does on uint8 images;
- a single-channel (1, H, W) image is scored on its own values, as the MATLAB scripts do for
  grayscale files (they skip ``rgb2ycbcr`` when ``size(im, 3) == 1``);
- ``shave`` pixels removed from every border (the SR convention: shave = scale);
- PSNR with peak 255; SSIM as Wang et al.'s ``ssim_index.m``: 11x11 Gaussian window,
  sigma 1.5, 'valid' filtering, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, mean of the map.

Everything is computed in float64.
"""

from __future__ import annotations

import math

import torch

from vsr.errors import ConfigError

__all__ = ["SSIM_WINDOW", "psnr_y", "rgb_to_y", "ssim_y"]

SSIM_WINDOW = 11  # the side of ssim_y's Gaussian window: the smallest shaved image it scores

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(image: torch.Tensor, *, round_y: bool = True) -> torch.Tensor:
    """Luma of RGB images on the 0..255 scale (MATLAB ``rgb2ycbcr``'s first channel).

    Args:
        image: (..., 3, H, W) RGB, uint8 or float 0..255, any device.
        round_y: round Y to integers (half away from zero) as MATLAB does for uint8 input.

    Returns:
        float64 tensor (..., H, W), nominally 16..235.
    """
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ConfigError(f"rgb_to_y needs (..., 3, H, W) RGB, got shape {tuple(image.shape)}")
    rgb = image.to(torch.float64)
    y = 16.0 + (_Y_WEIGHTS[0] * rgb[..., 0, :, :] + _Y_WEIGHTS[1] * rgb[..., 1, :, :]
                + _Y_WEIGHTS[2] * rgb[..., 2, :, :]) / 255.0
    if round_y:
        y = torch.floor(y.clamp(0.0, 255.0) + 0.5)
    return y


def _luma(image: torch.Tensor, round_y: bool) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dtype == torch.bool \
            or image.is_complex():
        what = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(f"expected a uint8 or float torch.Tensor image, got {what}")
    if image.ndim == 3 and image.shape[0] == 1:
        return image[0].to(torch.float64)  # already luma: a grayscale image's own values
    if image.ndim != 3 or image.shape[0] != 3:
        raise ConfigError(f"expected one (3, H, W) RGB or (1, H, W) gray image, "
                         f"got shape {tuple(image.shape)}")
    return rgb_to_y(image, round_y=round_y)


def _shaved_y(sr: torch.Tensor, hr: torch.Tensor, shave: int,
              round_y: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ConfigError(f"SR and HR shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ConfigError(f"shave must be an integer of at least 0, got {shave!r}")
    y_sr, y_hr = _luma(sr, round_y), _luma(hr.to(sr.device), round_y)
    if shave:
        h, w = y_sr.shape[-2:]
        if h <= 2 * shave or w <= 2 * shave:
            raise ConfigError(f"image {h}x{w} too small to shave {shave} pixels per border")
        y_sr = y_sr[..., shave:-shave, shave:-shave]
        y_hr = y_hr[..., shave:-shave, shave:-shave]
    return y_sr, y_hr


# dB an image or frame counts at most in a mean PSNR (libvmaf's ceiling for 8-bit video,
# 6 * 8 + 12): one reproduced exactly (a flat or black picture) scores infinite dB, which made
# the mean of a whole set or clip infinite, whatever the others scored. Each picture's own
# figure stays exact.
PSNR_CEILING = 60.0


def mean_psnr(psnrs: list[float]) -> float:
    """The mean of ``psnrs`` with each counted at most :data:`PSNR_CEILING` dB."""
    if not psnrs:
        raise ConfigError("no PSNR to average")
    return math.fsum(min(p, PSNR_CEILING) for p in psnrs) / len(psnrs)


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, *,
           round_y: bool = True) -> float:
    """PSNR (dB, peak 255) between the Y channels of two RGB images, borders shaved.

    Args:
        sr, hr: (3, H, W) RGB, uint8 or float 0..255, same shape; or (1, H, W) gray images,
            scored on their own values without the RGB -> Y conversion (what the MATLAB
            scripts do for single-channel files).
        shave: pixels removed from every border before scoring.
        round_y: round Y to 8 bits (MATLAB's ``rgb2ycbcr`` on uint8); False keeps it exact.

    Returns:
        PSNR in dB; ``inf`` for identical images.
    """
    y_sr, y_hr = _shaved_y(sr, hr, shave, round_y)
    mse = torch.mean((y_sr - y_hr) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> list[float]:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)``, normalised to sum 1.

    fspecial's 2-D window is the outer product of this with itself (its eps cut-off removes
    nothing at 11x11, sigma 1.5), so filtering separably gives the same SSIM to ~1e-13.
    """
    r = [i - (size - 1) / 2.0 for i in range(size)]
    g = [math.exp(-(t * t) / (2.0 * sigma * sigma)) for t in r]
    total = math.fsum(g)
    return [v / total for v in g]


def _filter_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """MATLAB ``filter2(w, x, 'valid')`` for the separable symmetric window ``w = taps' * taps``.

    Shift-and-add along each axis: exact in float64, and ~15x faster than an 11x11 float64 conv2d.
    """
    k = len(taps)
    h, w = x.shape[-2:]
    rows = sum(t * x[..., i:h - k + 1 + i, :] for i, t in enumerate(taps))
    return sum(t * rows[..., :, i:w - k + 1 + i] for i, t in enumerate(taps))


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, *,
           round_y: bool = True) -> float:
    """SSIM between the Y channels of two RGB images, borders shaved (MATLAB ``ssim_index``).

    Args:
        sr, hr: (3, H, W) RGB or (1, H, W) gray, as :func:`psnr_y`; after shaving at least
            11x11.
        shave: pixels removed from every border before scoring.
        round_y: as :func:`psnr_y`.

    Returns:
        mean SSIM, 1.0 for identical images.
    """
    y_sr, y_hr = _shaved_y(sr, hr, shave, round_y)
    if min(y_sr.shape) < SSIM_WINDOW:
        raise ConfigError(f"image too small for an {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window: "
                         f"{tuple(y_sr.shape)}")
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    a, b = y_sr, y_hr
    # one filtering of the five moment images: mu_a, mu_b, E[a^2], E[b^2], E[ab]
    stack = torch.stack([a, b, a * a, b * b, a * b])
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter_valid(stack, _gaussian_1d(SSIM_WINDOW))
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a, var_b, cov = e_aa - mu_aa, e_bb - mu_bb, e_ab - mu_ab
    ssim_map = (((2.0 * mu_ab + c1) * (2.0 * cov + c2))
                / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2)))
    return ssim_map.mean().item()
