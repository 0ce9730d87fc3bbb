import shutil
import subprocess
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


def test_decord_keeps_a_late_video_start_and_refuses_what_it_would_get_wrong(tmp_path):
    """decord counts times from the stream's start: a video starting 0.5 s after its audio
    came out at 0, out of sync. It ignores an MP4 edit list (a trim by -ss with -c copy):
    the hidden frames came out first, every picture shifted against its time. It turns a
    rotated video itself, into RGBA: an internal shape error."""
    late = tmp_path / "late.mp4"
    _ffmpeg("-itsoffset", "0.5", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=2", "-f",
            "lavfi", "-i", "sine=d=2.5", "-fps_mode", "passthrough", "-c:v", "libx264",
            "-bf", "2", "-c:a", "aac", late)
    want = [(f.index, f.pts) for f in PyAVSource(late).frames()]
    assert want[0][1] > 0
    with open_source(late, "decord") as src:
        assert [(f.index, f.pts) for f in src.frames()] == want
    trimmed = tmp_path / "trimmed.mp4"
    _ffmpeg("-ss", "1.2", "-i", late, "-c", "copy", trimmed)  # 0.7 s into the video
    with pytest.raises(InputError, match=r"edit list trims it.*use --decoder pyav"):
        open_source(trimmed, "decord")
    turned = tmp_path / "turned.mp4"
    _ffmpeg("-i", late, "-c", "copy", "-metadata:s:v:0", "rotate=90", turned)
    with pytest.raises(InputError, match="turned -?90 degrees.*use --decoder pyav"):
        open_source(turned, "decord")


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_not_media(tmp_path, content):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(InputError):
        PyAVSource(p)


def test_missing(tmp_path):
    with pytest.raises(InputError, match="not found"):
        PyAVSource(tmp_path / "nope.mp4")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg program")


def test_cut_off_matroska_is_refused(clip, tmp_path):
    """Matroska declares no frame count: a half-copied (or still growing) file used to come
    out with half its frames and exit 0. Its video stream's DURATION tag now judges it."""
    full = clip("full.mkv", frames=50, audio_tracks=1, color={"gop_size": 10})
    half = tmp_path / "half.mkv"
    half.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    with PyAVSource(full) as src:
        assert len(list(src.frames())) == 50
    with PyAVSource(half) as src, pytest.raises(InputError, match="half.mkv is truncated"):
        list(src.frames())


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_audio_longer_than_video_is_whole(tmp_path, suffix):
    """The container's duration includes audio: it never judges the video."""
    path = tmp_path / f"long_audio{suffix}"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.4", "-f", "lavfi", "-i",
            "sine=d=1.5", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", path)
    with PyAVSource(path) as src:
        assert len(list(src.frames())) == 10


@needs_ffmpeg
def test_mp4_edit_list_trim_is_whole(tmp_path):
    """`ffmpeg -ss 0.3 -c copy` of a B-frame clip keeps its pre-roll samples behind an edit
    list: 50 samples, 42 frames shown. It used to be refused as truncated (42 of 50)."""
    src, trimmed = tmp_path / "bf.mp4", tmp_path / "trim.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=2", "-f", "lavfi", "-i", "sine=d=2",
            "-c:v", "libx264", "-preset", "ultrafast", "-bf", "3", "-g", "12", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-shortest", src)
    _ffmpeg("-ss", "0.3", "-i", src, "-c", "copy", trimmed)
    with PyAVSource(trimmed) as s:
        assert s.info.frames == 50  # the samples the header declares
        frames = list(s.frames())
    assert len(frames) == 42
    assert [f.pts * s.info.time_base for f in frames] == [Fraction(i, 25) for i in range(42)]


@pytest.mark.parametrize("fmt, mode", [("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB"),
                                       ("PPM", "RGB"), ("PPM", "L"), ("PPM", "1")],
                         ids=["webp", "bmp", "tiff", "ppm", "pgm", "pbm"])
def test_a_picture_without_a_picture_suffix_is_a_picture(tmp_path, fmt, mode):
    """A WebP, BMP, TIFF or PNM file named without a picture suffix ("photo", "x.dat") was
    taken for a video: "a video input needs a video output, not up.png" (a PNG was not)."""
    from PIL import Image

    from vsr.upscale import UpscaleConfig, upscale_file

    for name in ("photo", "x.dat"):
        src = tmp_path / name
        Image.new(mode, (16, 12), 255 if mode != "RGB" else (255, 255, 255)).save(src, fmt)
        with PyAVSource(src) as source:
            assert source.info.is_image and source.info.frames == 1, source.info.container
        out = tmp_path / f"{name}-up.png"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
        with Image.open(out) as im:
            assert im.size == (32, 24) and np.asarray(im).min() == 255
