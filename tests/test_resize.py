"""vsr.resize: MATLAB imresize semantics (weights, borders, sizes, antialiasing, batching)."""

from __future__ import annotations

import pytest
import torch

from vsr.resize import imresize, imresize_uint8, output_size, resize_matrix, to_uint8

# cubic kernel (a = -0.5) at distances 1.75, 0.75, 0.25, 1.25: MATLAB's interior x2 weights
UP2_WEIGHTS = [-0.0234375, 0.2265625, 0.8671875, -0.0703125]
# 0.5 * cubic(0.5 * d) at d = 3.5, 2.5, 1.5, 0.5, ...: MATLAB's interior antialiased /2 weights
DOWN2_WEIGHTS = [-0.01171875, -0.03515625, 0.11328125, 0.43359375,
                 0.43359375, 0.11328125, -0.03515625, -0.01171875]


def test_upscale_weights_match_hand_computed_matlab_values():
    m = resize_matrix(8, 16)
    # output 5 (1-based): u = 5/2 + 0.25 = 2.75 -> input pixels 1..4 at offsets 1.75 .. -1.25
    torch.testing.assert_close(m[4, 0:4], torch.tensor(UP2_WEIGHTS, dtype=torch.float64))
    # output 6: u = 3.25 -> pixels 2..5, the same weights mirrored (offsets 0.25 / 0.75 swap)
    torch.testing.assert_close(m[5, 1:5], torch.tensor(UP2_WEIGHTS[::-1], dtype=torch.float64))
    assert m[4, 4:].abs().sum() == 0 and m[5, 0] == 0


def test_upscale_first_row_uses_matlab_mirror_border():
    # u = 0.75: taps at 1-based -1, 0, 1, 2 mirror onto pixels 2, 1, 1, 2
    row = resize_matrix(8, 16)[0]
    expected = torch.zeros(8, dtype=torch.float64)
    expected[0] = UP2_WEIGHTS[1] + UP2_WEIGHTS[2]
    expected[1] = UP2_WEIGHTS[0] + UP2_WEIGHTS[3]
    torch.testing.assert_close(row, expected)


def test_antialiased_downscale_weights():
    m = resize_matrix(16, 8, 0.5)
    # output 4 (0-based 3): u = 4 * 2 - 0.5 = 7.5 -> 1-based pixels 4..11
    torch.testing.assert_close(m[3, 3:11], torch.tensor(DOWN2_WEIGHTS, dtype=torch.float64))
    plain = resize_matrix(16, 8, 0.5, antialias=False)
    assert (plain[3] != 0).sum() == 4


def test_rows_sum_to_one():
    for n_in, n_out in [(7, 21), (21, 7), (10, 3), (5, 5), (1, 4)]:
        m = resize_matrix(n_in, n_out)
        torch.testing.assert_close(m.sum(1), torch.ones(n_out, dtype=torch.float64))


@pytest.mark.parametrize("scale", [4, 2, 0.5, 0.25, 1 / 3, 1.7])
def test_constant_image_stays_constant(scale):
    x = torch.full((2, 3, 12, 9), 0.375, dtype=torch.float64)
    y = imresize(x, scale)
    torch.testing.assert_close(y, torch.full_like(y, 0.375))


def test_output_size_rules():
    x = torch.zeros(1, 10, 7)
    assert imresize(x, 0.25).shape == (1, 3, 2)  # ceil(2.5), ceil(1.75)
    assert imresize(x, 3).shape == (1, 30, 21)
    assert imresize(x, size=(4, 5)).shape == (1, 4, 5)
    assert imresize(x, size=(20, None)).shape == (1, 20, 14)  # MATLAB [20 NaN]
    assert imresize(x, (2, 0.5)).shape == (1, 20, 4)
    assert output_size((300, 99), 1 / 3) == ((100, 33), (1 / 3, 1 / 3))
    with pytest.raises(ValueError):
        imresize(x)


def test_explicit_size_uses_out_over_in_scale():
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(imresize(x, size=(6, 6)), imresize(x, 0.5))


def test_antialias_flattens_a_checkerboard():
    # period-3 checkerboard: far above the Nyquist limit of a 1/4 downscale. (A period-2 board
    # would not do: MATLAB samples a /4 output midway between pixels, where it is flat anyway.)
    wave = torch.cos(2 * torch.pi * torch.arange(96, dtype=torch.float64) / 3)
    board = 127.5 + 127.5 * wave[:, None] * wave[None, :]
    aa = imresize(board, 0.25)
    plain = imresize(board, 0.25, antialias=False)
    assert aa.shape == plain.shape == (24, 24)
    assert (aa[2:-2, 2:-2] - board.mean()).abs().max() < 0.05  # away from the mirrored borders
    assert aa.std() < 1.0
    assert plain.std() > 20.0  # aliased into visible stripes


def test_batched_leading_dims_match_single_images():
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    y = imresize(x, 0.5)
    assert y.shape == (2, 3, 6, 7)
    torch.testing.assert_close(y[1, 2], imresize(x[1, 2], 0.5))
    torch.testing.assert_close(y[0], imresize(x[0], 0.5))


def test_separable_equals_explicit_matrices_and_order_for_unequal_scales():
    x = torch.rand(9, 14, dtype=torch.float64)
    y = imresize(x, (3, 0.5))
    expected = resize_matrix(9, 27, 3) @ x @ resize_matrix(14, 7, 0.5).t()
    torch.testing.assert_close(y, expected)


def test_dtype_and_float32_accuracy():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 255
    y64 = imresize(x, 4)
    y32 = imresize(x.float(), 4)
    assert y32.dtype == torch.float32 and y64.dtype == torch.float64
    assert (y32.double() - y64).abs().max() < 1e-3
    with pytest.raises(TypeError):
        imresize(x.to(torch.uint8), 2)


def test_to_uint8_rounds_half_away_from_zero_and_saturates():
    x = torch.tensor([-3.0, 0.5, 1.5, 2.5, 254.49, 254.5, 300.0, float("nan")])
    assert to_uint8(x).tolist() == [0, 1, 2, 3, 254, 255, 255, 0]


def test_uint8_path_rounds_after_each_pass():
    x = (torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    y = imresize_uint8(x, 0.5)
    assert y.dtype == torch.uint8 and y.shape == (3, 5, 5)
    h = to_uint8(resize_matrix(10, 5) @ x.double())
    torch.testing.assert_close(y, to_uint8(h.double() @ resize_matrix(10, 5).t()))
    # intermediate rounding (0.5) times the second pass's sum of |weights| (> 1: negative lobes),
    # plus the final rounding: the two paths may differ by up to 2 levels on noise
    assert (y.int() - to_uint8(imresize(x.double(), 0.5)).int()).abs().max() <= 2


@pytest.mark.cuda
def test_cuda_matches_cpu_float64():
    x = torch.rand(2, 3, 45, 80, dtype=torch.float64) * 255
    ref = imresize(x, 4)
    y = imresize(x.float().cuda(), 4)
    assert y.device.type == "cuda" and y.shape == (2, 3, 180, 320)
    assert (y.double().cpu() - ref).abs().max() < 1e-2  # fp32 matmuls (TF32 off, torch default)
    lr = imresize(x.cuda(), 0.25)
    torch.testing.assert_close(lr.cpu(), imresize(x, 0.25))


@pytest.mark.parametrize("scale", [2, 4, 0.5, 0.25, 1.7])
def test_banded_cpu_path_equals_dense_matmul(monkeypatch: pytest.MonkeyPatch, scale) -> None:
    from vsr import resize

    x = torch.rand(2, 3, 37, 150, dtype=torch.float64)
    monkeypatch.setattr(resize, "_BANDED_MIN_LEN", 10**9)
    dense = resize.imresize(x, scale)
    monkeypatch.setattr(resize, "_BANDED_MIN_LEN", 1)
    banded = resize.imresize(x, scale)
    torch.testing.assert_close(banded, dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_integer_upscale_polyphase_path_equals_gathers_and_dense(
        monkeypatch: pytest.MonkeyPatch, scale: int) -> None:
    """The CPU's integer-upscale filters (slices of a mirrored input) change no value."""
    from vsr import resize

    x = torch.rand(2, 3, 41, 131, dtype=torch.float64)
    monkeypatch.setattr(resize, "_BANDED_MIN_LEN", 1)
    assert resize._Pass(-1, 131, 131 * scale, float(scale), True, x.device, x.dtype).plan
    poly = resize.imresize(x, scale)
    monkeypatch.setattr(resize, "_phases", lambda *_: None)
    gathers = resize.imresize(x, scale)
    monkeypatch.setattr(resize, "_BANDED_MIN_LEN", 10**9)
    dense = resize.imresize(x, scale)
    torch.testing.assert_close(poly, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(gathers, dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("side", [37, 131])  # dense and banded CPU paths; sizes no other test uses
def test_matrices_cached_during_inference_still_backpropagate(side: int) -> None:
    image = torch.rand(1, 3, side, side, dtype=torch.float32)
    with torch.inference_mode():  # an upscale fills the caches first
        imresize(image, 0.5)
        imresize(image, 3.0)
    trainable = image.clone().requires_grad_(True)
    (imresize(trainable, 0.5).sum() + imresize(trainable, 3.0).sum()).backward()
    assert trainable.grad is not None and torch.isfinite(trainable.grad).all()
