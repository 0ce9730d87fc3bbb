"""Y'CbCr of more than 8 bits, and full-range 8-bit output, follow the standard equations.

swscale reads 10-bit Y'CbCr into 16-bit RGB with a 255/256 scale (limited-range white, Y 940,
came out 65283, not 65535: every pixel 0.4% dark), writes 16-bit RGB 0.4% bright (65535 ->
Y 943, above the legal 940) and truncates the chroma of full-range 8-bit output (-0.5 on
average); vsr.io.colour converts these. Checked as tests/test_colour_exact.py checks 8 bits:
flat blocks of random colours in lossless FFV1, against ITU-R BT.601 / 709 / 2020 with n-bit
codes (limited: Y 16..235, C 16..240, times 2^(n-8); full: 0..2^n - 1).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from vsr.io.source import open_source

BLOCK = 16  # luma pixels a side of one flat colour
KR_KB = {1: (0.2126, 0.0722), 5: (0.299, 0.114), 9: (0.2627, 0.0593)}  # by AVColorSpace


def rgb_of_ycbcr(ycc: np.ndarray, matrix: int, bits: int, full: bool) -> np.ndarray:
    """(..., 3) n-bit Y'CbCr codes -> (..., 3) R'G'B' in 0..1, unrounded and unclipped."""
    kr, kb = KR_KB[matrix]
    if full:
        top = 2 ** bits - 1
        y, u, v = ycc[..., 0] / top, (ycc[..., 1] - 2 ** (bits - 1)) / top, \
            (ycc[..., 2] - 2 ** (bits - 1)) / top
    else:
        k = 2 ** (bits - 8)
        y, u, v = (ycc[..., 0] - 16 * k) / (219 * k), (ycc[..., 1] - 128 * k) / (224 * k), \
            (ycc[..., 2] - 128 * k) / (224 * k)
    r, b = y + 2 * (1 - kr) * v, y + 2 * (1 - kb) * u
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.stack([r, g, b], -1)


def ycbcr_of_rgb(rgb: np.ndarray, matrix: int, bits: int, full: bool) -> np.ndarray:
    """(..., 3) R'G'B' in 0..1 -> (..., 3) n-bit Y'CbCr codes, unrounded."""
    kr, kb = KR_KB[matrix]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = kr * r + (1 - kr - kb) * g + kb * b
    u, v = (b - y) / (2 - 2 * kb), (r - y) / (2 - 2 * kr)
    if full:
        top = 2 ** bits - 1
        return np.stack([y * top, u * top + 2 ** (bits - 1), v * top + 2 ** (bits - 1)], -1)
    k = 2 ** (bits - 8)
    return np.stack([(16 + 219 * y) * k, (128 + 224 * u) * k, (128 + 224 * v) * k], -1)


def colours(rows: int, cols: int, matrix: int, bits: int, full: bool, seed: int = 0) -> np.ndarray:
    """(rows, cols, 3) random n-bit Y'CbCr codes whose RGB lies inside 0..1, with white and
    black first (the ends swscale's scale missed most)."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 2 ** bits - 1) if full else (16 << (bits - 8), 240 << (bits - 8))
    mid = 2 ** (bits - 1)
    white = (2 ** bits - 1) if full else 235 << (bits - 8)
    out = [np.array([white, mid, mid]), np.array([0 if full else lo, mid, mid])]
    while len(out) < rows * cols:
        ycc = rng.integers(lo, hi + 1, 3)
        rgb = rgb_of_ycbcr(ycc.astype(float), matrix, bits, full)
        if (rgb > 0.005).all() and (rgb < 0.995).all():
            out.append(ycc)
    return np.array(out[: rows * cols], np.uint16).reshape(rows, cols, 3)


def centres(image: np.ndarray) -> np.ndarray:
    """The centre pixel of each block of ``image`` (H, W, C)."""
    return image[BLOCK // 2::BLOCK, BLOCK // 2::BLOCK].astype(float)


def _sub(fmt: av.VideoFormat, i: int) -> tuple[int, int]:
    """(horizontal, vertical) subsampling of plane ``i`` (Y and alpha: none)."""
    return (1, 1) if i in (0, 3) else (2 if fmt.chroma_width(2) == 1 else 1,
                                  2 if fmt.chroma_height(2) == 1 else 1)


def flat_clip(path: Path, codes: np.ndarray, pix_fmt: str, *, matrix: int, full: bool,
              codec: str = "ffv1", transfer: int | None = None) -> Path:
    """One lossless frame of ``codes`` ((rows, cols, 3) Y'CbCr, 4 with alpha, (rows, cols, 1)
    grey, or R, G, B for a gbrp format) as flat blocks, tagged ``matrix`` and range."""
    w, h = codes.shape[1] * BLOCK, codes.shape[0] * BLOCK
    fmt = av.VideoFormat(pix_fmt)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        cc = s.codec_context
        cc.colorspace, cc.color_range = matrix, 2 if full else 1
        if transfer is not None:
            cc.color_trc, cc.color_primaries = transfer, 9
        if codec == "libx265":
            cc.options = {"x265-params": "lossless=1:log-level=error"}
        frame = av.VideoFrame(w, h, pix_fmt)
        order = (1, 2, 0) if pix_fmt.startswith("gbr") else range(codes.shape[2])  # G, B, R
        for i, (plane, comp) in enumerate(zip(frame.planes, order, strict=False)):
            sx, sy = _sub(fmt, i)
            dtype = np.uint16 if any(c.bits > 8 for c in fmt.components) else np.uint8
            buf = np.zeros((h // sy, plane.line_size // np.dtype(dtype).itemsize), dtype)
            buf[:, : w // sx] = codes[..., comp].repeat(BLOCK // sy, 0).repeat(BLOCK // sx, 1)
            plane.update(buf)
        frame.colorspace, frame.color_range = matrix, 2 if full else 1
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)
    return path


def planes(path: Path) -> np.ndarray:
    """The first frame's Y, Cb, Cr (and alpha) block centres, (rows, cols, 3 or 4) codes."""
    with av.open(str(path)) as c:
        f = next(c.decode(video=0))
        fmt = f.format
        dtype = np.uint16 if any(c.bits > 8 for c in fmt.components) else np.uint8
        out = []
        for i, plane in enumerate(f.planes):
            sx, sy = _sub(fmt, i)
            a = np.frombuffer(plane, dtype).reshape(-1, plane.line_size // np.dtype(dtype).itemsize)
            out.append(a[BLOCK // sy // 2::BLOCK // sy, BLOCK // sx // 2::BLOCK // sx][
                : f.height // BLOCK, : f.width // BLOCK])
    return np.stack(out, -1).astype(float)


def assert_close(got: np.ndarray, want: np.ndarray, most: float) -> None:
    """Within ``most`` everywhere and no bias: rounding is all that is left."""
    err = got - want
    assert np.abs(err).max() <= most, (np.abs(err).max(), err.reshape(-1, err.shape[-1])[:4])
    assert np.abs(err.reshape(-1, err.shape[-1]).mean(0)).max() < 0.12, err.mean((0, 1))


# (pixel format, matrix, full range, transfer): HDR10 (PQ, BT.2020), HD, SD, full range
READS = [("yuv420p10le", 9, False, 16), ("yuv420p10le", 1, False, None),
         ("yuv420p12le", 5, False, None), ("yuv422p10le", 1, True, None),
         ("yuv444p10le", 9, True, None)]


@pytest.mark.parametrize(("pix_fmt", "matrix", "full", "transfer"), READS)
def test_deep_video_is_read_exactly(tmp_path: Path, pix_fmt: str, matrix: int, full: bool,
                                    transfer: int | None) -> None:
    """Every block within rounding of 16-bit RGB: limited-range white 65535, not 65283."""
    bits = 12 if "12" in pix_fmt else 10
    codes = colours(8, 8, matrix, bits, full)  # 64 blocks: a bias shows
    path = flat_clip(tmp_path / "deep.mkv", codes, pix_fmt, matrix=matrix, full=full,
                     transfer=transfer)
    with open_source(path) as src:
        image = next(iter(src.frames())).image
    assert image.dtype == np.uint16
    want = rgb_of_ycbcr(codes.astype(float), matrix, bits, full).clip(0, 1) * 65535
    assert_close(centres(image), want, 0.6)
    assert (centres(image)[0, 0] == 65535).all() and (centres(image)[0, 1] == 0).all()


def test_deep_grey_and_rgb_video_are_read_exactly(tmp_path: Path) -> None:
    """gray10: 1023 is white (swscale read 65472); gbrp10 as it was, swscale's top bits
    repeated: v * 65535 / 1023 within a 16-bit level."""
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 1024, (8, 8, 1)).astype(np.uint16)
    grey[0, 0] = 1023
    with open_source(flat_clip(tmp_path / "grey.mkv", grey, "gray10le", matrix=2,
                               full=True)) as src:
        image = next(iter(src.frames())).image
    assert_close(centres(image), np.repeat(grey.astype(float), 3, -1) * 65535 / 1023, 0.5)
    rgb = rng.integers(0, 1024, (8, 8, 3)).astype(np.uint16)
    with open_source(flat_clip(tmp_path / "rgb.mkv", rgb, "gbrp10le", matrix=0,
                               full=True)) as src:
        image = next(iter(src.frames())).image
    assert_close(centres(image), rgb.astype(float) * 65535 / 1023, 1)


def _write(tmp_path: Path, image: np.ndarray, pix_fmt: str, matrix: int, full: bool,
           codec: str = "ffv1", encoder: str = "pyav") -> Path:
    """``image`` written by the PyAV sink (or with ``encoder="ffmpeg"`` the ffmpeg program's)
    in ``pix_fmt`` for an input tagged so."""
    from vsr.io.ffmpeg_sink import FfmpegSink
    from vsr.io.sink import EncodeConfig, PyAVSink

    bits = 10 if image.dtype == np.uint16 else 8
    codes = colours(3, 4, matrix, bits, full)
    with open_source(flat_clip(tmp_path / "in.mkv", codes, "yuv420p10le" if bits > 8
                               else "yuv420p", matrix=matrix, full=full)) as src:
        info = src.info
    out = tmp_path / "out.mkv"
    sink_class = FfmpegSink if encoder == "ffmpeg" else PyAVSink
    with sink_class(out, info, image.shape[1], image.shape[0],
                    EncodeConfig(codec=codec, pix_fmt=pix_fmt)) as sink:
        sink.write(image, 0)
    return out


WRITES = [("yuv420p10le", 9, False), ("yuv420p10le", 1, True), ("yuv420p12le", 5, False),
          ("yuv444p10le", 1, False)]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
@pytest.mark.parametrize(("pix_fmt", "matrix", "full"), WRITES)
def test_16_bit_rgb_is_written_exactly(tmp_path: Path, pix_fmt: str, matrix: int,
                                       full: bool, encoder: str) -> None:
    """16-bit RGB -> n-bit Y'CbCr rounded: white is Y 940, not 943 (limited range), by either
    encoder (the ffmpeg program's swscale was as far off as PyAV's: 12-bit up to 14 codes),
    tagged with its range."""
    from vsr.io.ffmpeg_sink import ffmpeg_available

    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("needs the ffmpeg program")
    bits = 12 if "12" in pix_fmt else 10
    rgb = rgb_of_ycbcr(colours(8, 8, matrix, bits, full, seed=2).astype(float), matrix, bits,
                       full).clip(0, 1)
    image = np.round(rgb * 65535).astype(np.uint16).repeat(BLOCK, 0).repeat(BLOCK, 1)
    out = _write(tmp_path, image, pix_fmt, matrix, full, encoder=encoder)
    got = planes(out)
    want = ycbcr_of_rgb(centres(image) / 65535, matrix, bits, full)
    assert_close(got, want, 0.55)
    assert got[0, 0, 0] == (2 ** bits - 1 if full else 235 << (bits - 8))
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert (frame.format.name, frame.color_range) == (pix_fmt, 2 if full else 1)


def test_full_range_8_bit_output_is_rounded(tmp_path: Path) -> None:
    """8-bit RGB -> full-range Y'CbCr rounded (swscale truncated the chroma: -0.5 on average),
    as limited range was already (tests/test_colour_exact.py)."""
    rgb = rgb_of_ycbcr(colours(8, 8, 1, 8, True, seed=5).astype(float), 1, 8, True).clip(0, 1)
    image = np.round(rgb * 255).astype(np.uint8).repeat(BLOCK, 0).repeat(BLOCK, 1)
    got = planes(_write(tmp_path, image, "yuv420p", 1, True))
    assert_close(got, ycbcr_of_rgb(centres(image) / 255, 1, 8, True), 0.52)


@pytest.mark.parametrize("codec", ["ffv1", "libx265"])
def test_a_10_bit_video_comes_back_code_for_code(tmp_path: Path, codec: str) -> None:
    """Read and written again (no model between): every block's codes as they were, HDR10's
    BT.2020 included. swscale's round trip came back too, its two errors cancelling (0.4% dark
    in, 0.4% bright out), while the model saw every pixel dark: this keeps it with each half
    exact."""
    from vsr.io.sink import EncodeConfig, PyAVSink

    codes = colours(2, 4, 9, 10, False, seed=6)
    path = flat_clip(tmp_path / "in.mkv", codes, "yuv420p10le", matrix=9, full=False,
                     codec=codec, transfer=16)
    with open_source(path) as src:
        frame = next(iter(src.frames()))
        out = tmp_path / "out.mkv"
        with PyAVSink(out, src.info, src.info.width, src.info.height,
                      EncodeConfig(codec="ffv1", pix_fmt="yuv420p10le")) as sink:
            sink.write(frame.image, frame.pts)
    np.testing.assert_array_equal(planes(out), codes.astype(float))


@pytest.mark.parametrize("size", [(128, 128), (256, 256)])
def test_a_live_streams_deep_frames_are_read_exactly(tmp_path: Path,
                                                     size: tuple[int, int]) -> None:
    """`vsr stream` (fit_frame) by the frame's own tags, at its size or scaled to fit."""
    from vsr.stream.io import fit_frame

    codes = colours(8, 8, 9, 10, False, seed=7)
    path = flat_clip(tmp_path / "live.mkv", codes, "yuv420p10le", matrix=9, full=False)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    image = fit_frame(frame, size, "rgb48le")
    k = size[0] // frame.width
    got = image[BLOCK * k // 2::BLOCK * k, BLOCK * k // 2::BLOCK * k].astype(float)
    want = rgb_of_ycbcr(codes.astype(float), 9, 10, False).clip(0, 1) * 65535
    assert_close(got, want, 0.6 if k == 1 else 2)


def test_read_image_of_a_deep_picture(tmp_path: Path) -> None:
    """vsr.imageio rounds a 10-bit Y'CbCr picture to 8-bit RGB from the exact 16-bit values."""
    from vsr.imageio import read_image

    codes = colours(8, 8, 1, 10, False, seed=8)
    path = flat_clip(tmp_path / "pic.mkv", codes, "yuv444p10le", matrix=1, full=False)
    got = centres(read_image(path).permute(1, 2, 0).numpy())
    assert_close(got, rgb_of_ycbcr(codes.astype(float), 1, 10, False).clip(0, 1) * 255, 0.51)


def test_deep_alpha_video_is_read_and_written_exactly(tmp_path: Path) -> None:
    """yuva420p10: the colour as without alpha, the alpha plane scaled and rounded both ways."""
    from vsr.io.sink import EncodeConfig, PyAVSink

    codes = colours(8, 8, 1, 10, False, seed=9)
    alpha = np.random.default_rng(9).integers(0, 1024, (8, 8, 1)).astype(np.uint16)
    alpha[0, 0], alpha[0, 1] = 1023, 0
    codes = np.concatenate([codes, alpha], -1)
    path = flat_clip(tmp_path / "in.mkv", codes, "yuva420p10le", matrix=1, full=False)
    with open_source(path) as src:
        frame = next(iter(src.frames()))
        want = rgb_of_ycbcr(codes[..., :3].astype(float), 1, 10, False).clip(0, 1) * 65535
        assert_close(centres(frame.image), want, 0.6)
        assert_close(centres(frame.alpha[..., None]), alpha.astype(float) * 65535 / 1023, 1)
        out = tmp_path / "out.mkv"
        with PyAVSink(out, src.info, src.info.width, src.info.height,
                      EncodeConfig(codec="ffv1", pix_fmt="yuva420p10le")) as sink:
            assert sink.alpha
            sink.write(np.concatenate([frame.image, frame.alpha[..., None]], -1), frame.pts)
    np.testing.assert_array_equal(planes(out), codes.astype(float))


@pytest.mark.parametrize("pix_fmt", ["gray16le", "gray10le"])
def test_16_bit_grey_is_written_exactly(tmp_path: Path, pix_fmt: str) -> None:
    """16-bit grey RGB -> grey rounded, full range (swscale wrote 32768 as 32895 in gray16)."""
    bits = 16 if "16" in pix_fmt else 10
    level = np.random.default_rng(10).integers(0, 65536, (8, 8, 1)).astype(np.uint16)
    level[0, 0], level[0, 1] = 65535, 32768
    image = np.repeat(level, 3, -1).repeat(BLOCK, 0).repeat(BLOCK, 1)
    got = planes(_write(tmp_path, image, pix_fmt, 1, False))
    assert_close(got, level.astype(float) * (2 ** bits - 1) / 65535, 0.5)


@pytest.mark.parametrize("pix_fmt", ["gray", "gray10le"])
def test_limited_range_grey_video_is_read_and_written_by_its_tag(tmp_path: Path,
                                                                 pix_fmt: str) -> None:
    """Monochrome HEVC (x265's i400) is grey tagged limited range, which swscale reads (and
    writes) as full: black 16 came out 30 and white 235 as 218 in H.264. Read by the tag; back
    in grey, code for code; in H.264's yuv420p, black and white where they were."""
    from vsr.io.sink import EncodeConfig, PyAVSink

    bits = 10 if "10" in pix_fmt else 8
    k = 2 ** (bits - 8)
    level = np.random.default_rng(11).integers(16 * k, 235 * k + 1, (8, 8, 1)).astype(np.uint16)
    level[0, 0], level[0, 1] = 235 * k, 16 * k
    path = flat_clip(tmp_path / "mono.mkv", level, pix_fmt, matrix=2, full=False,
                     codec="libx265")
    with open_source(path) as src:
        assert (src.info.pix_fmt, src.info.color.range) == (pix_fmt, 1)
        frame = next(iter(src.frames()))
        top = 255 if bits == 8 else 65535
        want = np.repeat((level.astype(float) - 16 * k) * top / (219 * k), 3, -1)
        assert_close(centres(frame.image), want, 0.5)
        assert frame.image.max() == top and frame.image.min() == 0
        for codec, fmt in (("ffv1", pix_fmt), ("libx264", None)):
            out = tmp_path / f"{codec}.mkv"
            with PyAVSink(out, src.info, src.info.width, src.info.height,
                          EncodeConfig(codec=codec, crf=0 if codec == "libx264" else None,
                                       pix_fmt=fmt)) as sink:
                sink.write(frame.image, frame.pts)
            with av.open(str(out)) as c:
                written = next(c.decode(video=0))
                assert written.color_range == 1, codec
            assert written.format.name == ("yuv420p10le" if bits > 8 and codec == "libx264"
                                           else "yuv420p" if codec == "libx264" else pix_fmt)
            # x264 at CRF 0 is lossless: the luma as it was
            np.testing.assert_array_equal(planes(out)[..., :1], level.astype(float))


def test_grey_output_of_colour_input_is_full_range(tmp_path: Path) -> None:
    """--pix-fmt gray for a limited-range Y'CbCr input: grey tagged full and written so (it was
    written full but tagged limited, which a player that honours the tag shows stretched)."""
    image = np.full((BLOCK, 2 * BLOCK, 3), 255, np.uint8)
    image[:, BLOCK:] = 0
    out = _write(tmp_path, image, "gray", 1, False)
    with av.open(str(out)) as c:
        assert next(c.decode(video=0)).color_range == 2
    np.testing.assert_array_equal(planes(out)[..., 0], [[255.0, 0.0]])


def test_a_live_streams_limited_grey_is_read_by_its_tag(tmp_path: Path) -> None:
    """`vsr stream`'s fit_frame at 8 bits: limited grey's 16 is black, 235 white."""
    from vsr.stream.io import fit_frame

    level = np.array([[[235], [16]]], np.uint16)
    path = flat_clip(tmp_path / "mono.mkv", level, "gray", matrix=2, full=False)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    image = fit_frame(frame, (frame.width, frame.height), "rgb24")
    assert centres(image)[0].tolist() == [[255.0] * 3, [0.0] * 3]
