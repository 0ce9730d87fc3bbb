"""8-bit YUV <-> RGB conversions are exact: no level lost on the way in or out.

swscale's default YUV -> RGB path (its SIMD tables, taken for widths of a multiple of 8 or
16) comes out 1 to 1.5 levels dark on average in every channel (up to 2.8); its RGB -> YUV
default and the ffmpeg program's scale filter round badly (up to 0.66 and 0.86 levels off).
Measured here against the standard equations (ITU-R BT.601 / BT.709, limited range) on flat
blocks of random colours, so that chroma interpolation plays no part: what is left is rounding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from tests.test_colour_deep import BLOCK, flat_clip, planes, rgb_of_ycbcr, ycbcr_of_rgb
from vsr.io.source import open_source

MATRIX = {"bt709": 1, "bt601": 5}  # AVColorSpace


def _rgb_of_yuv(yuv: np.ndarray, matrix: str) -> np.ndarray:
    """(..., 3) limited-range Y'CbCr -> (..., 3) R'G'B' in 8-bit levels, unrounded."""
    return rgb_of_ycbcr(yuv, MATRIX[matrix], 8, False) * 255


def _yuv_of_rgb(rgb: np.ndarray, matrix: str) -> np.ndarray:
    return ycbcr_of_rgb(rgb / 255, MATRIX[matrix], 8, False)


def _colours(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """(rows, cols, 3) random limited-range Y'CbCr whose RGB lies inside 1..254 (no clipping)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < rows * cols:
        yuv = np.array([rng.integers(16, 236), rng.integers(16, 241), rng.integers(16, 241)])
        rgb = _rgb_of_yuv(yuv.astype(float), "bt709")
        if (rgb > 1).all() and (rgb < 254).all() and ((_rgb_of_yuv(yuv.astype(float), "bt601")
                                                      > 1).all()):
            out.append(yuv)
    return np.array(out, np.uint8).reshape(rows, cols, 3)


def _centres(image: np.ndarray) -> np.ndarray:
    """The centre pixel of each block of ``image`` (H, W, C)."""
    return image[BLOCK // 2::BLOCK, BLOCK // 2::BLOCK].astype(float)


def _assert_exact(got: np.ndarray, want: np.ndarray) -> None:
    err = got - want
    assert np.abs(err.reshape(-1, 3).mean(0)).max() < 0.1, err.reshape(-1, 3).mean(0)
    assert np.abs(err).max() <= 0.6, np.abs(err).max()


@pytest.mark.parametrize("matrix", ["bt709", "bt601"])
def test_a_videos_frames_are_read_exactly(tmp_path: Path, matrix: str) -> None:
    colours = _colours(3, 4)
    path = flat_clip(tmp_path / "flat.mkv", colours, "yuv420p", matrix=MATRIX[matrix], full=False)
    with open_source(path) as src:
        image = next(iter(src.frames())).image
    _assert_exact(_centres(image), _rgb_of_yuv(colours.astype(float), matrix))


def test_the_codec_round_trip_of_the_degradations_keeps_the_levels() -> None:
    """`--degrade ...,x264:...` (training and `vsr eval --video`): lossless x264 gives back the
    RGB it was given, within rounding twice (in and out)."""
    import torch

    from vsr.codecs import code_clip

    colours = _colours(8, 8, seed=1)  # 64 blocks: one rounding bias shows against the others
    rgb = np.clip(_rgb_of_yuv(colours.astype(float), "bt601").round(), 0, 255).astype(np.uint8)
    image = torch.from_numpy(rgb.repeat(BLOCK, 0).repeat(BLOCK, 1)).permute(2, 0, 1)
    back = code_clip(torch.stack([image] * 3), "x264", crf=0, preset="ultrafast")
    err = _centres(back[-1].permute(1, 2, 0).numpy()) - _centres(image.permute(1, 2, 0).numpy())
    assert np.abs(err.reshape(-1, 3).mean(0)).max() < 0.25, err.reshape(-1, 3).mean(0)
    assert np.abs(err).max() <= 1.5, np.abs(err).max()


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_written_frames_are_converted_exactly(tmp_path: Path, encoder: str) -> None:
    """RGB -> Y'CbCr rounded, not truncated (swscale's default and the ffmpeg program's scale
    filter were up to 0.66 and 0.86 levels off): by the PyAV sink and by --encoder ffmpeg."""
    from vsr.io.ffmpeg_sink import FfmpegSink
    from vsr.io.sink import EncodeConfig, PyAVSink

    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg program")

    colours = _colours(8, 8, seed=2)  # 64 blocks: rounding averages out
    source_path = flat_clip(tmp_path / "in.mkv", colours, "yuv420p", matrix=MATRIX["bt709"],
                     full=False)
    rgb = np.clip(_rgb_of_yuv(colours.astype(float), "bt709").round(), 0, 255)
    with open_source(source_path) as src:
        info = src.info
    out = tmp_path / "out.mkv"
    image = rgb.astype(np.uint8).repeat(BLOCK, 0).repeat(BLOCK, 1)
    sink_class = PyAVSink if encoder == "pyav" else FfmpegSink
    with sink_class(out, info, image.shape[1], image.shape[0],
                    EncodeConfig(codec="ffv1", pix_fmt="yuv420p")) as sink:
        sink.write(image, 0)
    err = planes(out) - _yuv_of_rgb(rgb, "bt709")
    assert np.abs(err.reshape(-1, 3).mean(0)).max() < 0.1, err.reshape(-1, 3).mean(0)
    assert np.abs(err).max() <= 0.52, np.abs(err).max()  # rounded, not truncated


def test_a_live_streams_frames_are_read_exactly(tmp_path: Path) -> None:
    """`vsr stream` converts each decoded frame itself (by the frame's own colour tags)."""
    from vsr.stream.io import fit_frame

    colours = _colours(3, 4, seed=3)
    path = flat_clip(tmp_path / "live.mkv", colours, "yuv420p", matrix=MATRIX["bt709"],
                     full=False)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    image = fit_frame(frame, (frame.width, frame.height), "rgb24")
    _assert_exact(_centres(image), _rgb_of_yuv(colours.astype(float), "bt709"))
