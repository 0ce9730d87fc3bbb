"""The upscaled video stream itself: its pixel format and colour description for each output
codec, with both encoders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest

from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.sink import EncodeConfig
from vsr.upscale import UpscaleConfig, upscale_file

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs the ffmpeg program")

_BT709 = ("-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709",
          "-color_range", "tv")


def _clip(path: Path, pix_fmt: str, *tags: str) -> Path:
    """Four FFV1 frames of 64x48 in ``pix_fmt`` with the colour ``tags`` (ffmpeg options)."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=64x48:r=25:d=0.16", "-c:v", "ffv1", "-pix_fmt", pix_fmt, *tags,
                    str(path)], check=True)
    return path


def _upscale(src: Path, out: Path, codec: str, encoder: str):
    return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                      encoder=encoder, encode=EncodeConfig(codec=codec)))


def _frame_colour(path: Path) -> tuple[int, int, int]:
    """(primaries, transfer, matrix) of the first decoded frame: what the bitstream says,
    which decoders use over the container's description."""
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return frame.color_primaries, frame.color_trc, frame.colorspace


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_prores_keeps_the_colour_description_in_its_frame_headers(tmp_path, encoder):
    """prores_ks writes primaries, transfer and matrix from each frame, not from the encoder's
    settings: a BT.709 input came out with all three unspecified in every frame header (the
    MOV 'colr' box said BT.709, but FFmpeg's decoder, and so a second vsr run, read the
    frames' own)."""
    src = _clip(tmp_path / "in.mkv", "yuv422p10le", *_BT709)
    assert _frame_colour(src) == (1, 1, 1)
    out = tmp_path / "out.mov"
    _upscale(src, out, "prores_ks", encoder)
    assert _frame_colour(out) == (1, 1, 1)
