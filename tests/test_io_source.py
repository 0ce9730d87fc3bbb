from fractions import Fraction

import numpy as np
import pytest

from vsr.errors import InputError
from vsr.io.decord_source import DecordSource
from vsr.io.source import PyAVSource, open_source


def test_info_and_timestamps_vfr(clip):
    pts = [0, 40, 80, 150, 170, 260, 300]
    path = clip("vfr.mkv", pts=pts, audio_tracks=1, audio_first=True,
                color={"colorspace": 1, "color_primaries": 1, "color_trc": 1, "color_range": 1})
    with PyAVSource(path) as src:
        info = src.info
        assert (info.width, info.height) == (64, 48)
        assert isinstance(info.frame_rate, Fraction) and isinstance(info.time_base, Fraction)
        assert info.bit_depth == 8 and info.color.matrix == 1 and info.color.range == 1
        assert [o.type for o in info.others] == ["audio"] and info.index == 1
        frames = list(src.frames())
    got = [f.pts * info.time_base for f in frames]
    assert got == [Fraction(p, 1000) for p in pts]
    assert [f.index for f in frames] == list(range(len(pts)))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8


def test_ten_bit_frames_are_uint16(clip):
    with PyAVSource(clip("ten.mkv", pix_fmt="yuv420p10le", frames=3)) as src:
        assert src.info.bit_depth == 10
        assert next(src.frames()).image.dtype == np.uint16


def test_decord_matches_pyav_timestamps(clip):
    path = clip("v.mp4", pts=[0, 33, 80, 120, 200], time_base=Fraction(1, 1000))
    a = [(f.index, f.pts) for f in PyAVSource(path).frames()]
    with open_source(path, "decord") as src:
        assert isinstance(src, DecordSource)
        b = [(f.index, f.pts) for f in src.frames()]
    assert a == b


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_not_media(tmp_path, content):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(InputError):
        PyAVSource(p)


def test_missing(tmp_path):
    with pytest.raises(InputError, match="not found"):
        PyAVSource(tmp_path / "nope.mp4")
