"""vsr.metrics: Y conversion, PSNR and SSIM as the MATLAB SR evaluation scripts compute them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vsr.metrics import psnr_y, rgb_to_y, ssim_y


def _rgb(r: int, g: int, b: int, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).clone()


def test_y_of_reference_colours():
    assert rgb_to_y(_rgb(0, 0, 0))[0, 0].item() == 16
    assert rgb_to_y(_rgb(255, 255, 255))[0, 0].item() == 235
    assert rgb_to_y(_rgb(255, 0, 0))[0, 0].item() == 81  # 16 + 65.481 = 81.481
    exact = rgb_to_y(_rgb(255, 0, 0), round_y=False)[0, 0].item()
    assert exact == pytest.approx(81.481)
    assert rgb_to_y(_rgb(0, 0, 0)).dtype == torch.float64


def test_psnr_identical_is_inf_and_shave_removes_borders():
    hr = (torch.rand(3, 20, 20) * 255).to(torch.uint8)
    assert psnr_y(hr, hr.clone(), 4) == math.inf
    sr = hr.clone()
    sr[:, :2, :] = 0  # differences only inside the shaved border
    assert psnr_y(sr, hr, 2) == math.inf
    assert psnr_y(sr, hr, 0) < 40


def test_psnr_of_known_offset():
    hr = torch.full((1, 16, 16), 100, dtype=torch.uint8)  # (1, H, W): gray values used as is
    assert psnr_y(hr + 10, hr, 2) == pytest.approx(10 * math.log10(255**2 / 100))
    rgb = _rgb(100, 100, 100, 16, 16)
    dy = 10 * 219 / 255  # Y step for +10 on every channel
    got = psnr_y(rgb + 10, rgb, 2, round_y=False)
    assert got == pytest.approx(10 * math.log10(255**2 / dy**2))


def test_ssim_identical_is_one_and_constant_images_follow_the_formula():
    hr = (torch.rand(3, 32, 32) * 255).to(torch.uint8)
    assert ssim_y(hr, hr.clone(), 4) == pytest.approx(1.0, abs=1e-12)
    a, b = torch.full((1, 20, 20), 100.0), torch.full((1, 20, 20), 120.0)
    c1 = (0.01 * 255) ** 2
    assert ssim_y(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_ssim_matches_a_direct_2d_gaussian_window():
    g = torch.arange(11, dtype=torch.float64) - 5
    window = torch.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * 1.5**2))
    window = (window / window.sum()).view(1, 1, 11, 11)  # fspecial('gaussian', 11, 1.5)
    x = torch.rand(1, 1, 30, 25, dtype=torch.float64) * 255
    y = (x + torch.randn_like(x) * 20).clamp(0, 255)

    def filt(t):
        return F.conv2d(t, window)

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ref = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim_y(x[0], y[0]) == pytest.approx(ref.mean().item(), abs=1e-12)
    assert ssim_y(x[0], y[0]) < 0.99


def test_shape_errors():
    a = torch.zeros(3, 20, 20, dtype=torch.uint8)
    with pytest.raises(ValueError):
        psnr_y(a, torch.zeros(3, 20, 21, dtype=torch.uint8))
    with pytest.raises(ValueError):
        ssim_y(a, a, 5)  # 10x10 left: smaller than the window
    with pytest.raises(ValueError):
        psnr_y(a[None], a[None])


def test_wrong_arguments_are_config_errors():
    """A float shave, numpy images, bool images and an empty list were raw TypeErrors,
    AttributeErrors and ZeroDivisionErrors (or, for bool, a silent inf)."""
    from vsr.errors import ConfigError
    from vsr.metrics import mean_psnr

    a = torch.zeros(3, 8, 8, dtype=torch.uint8)
    for call in (lambda: psnr_y(a, a, shave=1.5), lambda: psnr_y(a.numpy(), a.numpy()),
                 lambda: psnr_y(a > 3, a > 3), lambda: mean_psnr([])):
        with pytest.raises(ConfigError):
            call()
