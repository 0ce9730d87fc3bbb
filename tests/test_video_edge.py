"""The upscaled video stream itself: its pixel format and colour description for each output
codec, with both encoders."""

from __future__ import annotations

import logging
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from vsr.errors import ConfigError, OutputError
from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.sink import EncodeConfig
from vsr.upscale import UpscaleConfig, upscale_file

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs the ffmpeg program")

_BT709 = ("-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709",
          "-color_range", "tv")


def _clip(path: Path, pix_fmt: str, *tags: str, source: str = "testsrc2=") -> Path:
    """Four FFV1 frames of 64x48 in ``pix_fmt`` with the colour ``tags`` (ffmpeg options),
    of the lavfi ``source`` (its name and options up to the size)."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    f"{source}s=64x48:r=25:d=0.16", "-c:v", "ffv1", "-pix_fmt", pix_fmt, *tags,
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


def _program_takes(codec: str, pix_fmt: str) -> bool:
    said = subprocess.run(["ffmpeg", "-hide_banner", "-h", f"encoder={codec}"],
                          capture_output=True, text=True).stdout
    return pix_fmt in said.split()


def _pix_fmt(path: Path) -> str:
    with av.open(str(path)) as c:
        return c.streams.video[0].codec_context.pix_fmt


def test_the_ffmpeg_encoder_picks_from_the_ffmpeg_programs_own_formats(tmp_path):
    """The pixel format was chosen from PyAV's encoder, which may lack what the ffmpeg
    program's has: a 10-bit input through --encoder ffmpeg --codec libvpx-vp9 came out 8-bit
    (PyAV's libvpx is built without high bit depth, the program's is not), and an encoder
    PyAV lacks (libaom-av1) got 4:2:0 whatever the input."""
    if not _program_takes("libvpx-vp9", "yuv422p10le"):
        pytest.skip("the ffmpeg program's libvpx-vp9 has no 10-bit 4:2:2")
    src = _clip(tmp_path / "in.mkv", "yuv422p10le", *_BT709)
    out = tmp_path / "out.mkv"
    _upscale(src, out, "libvpx-vp9", "ffmpeg")
    assert _pix_fmt(out) == "yuv422p10le"


def test_an_encoder_that_cannot_keep_the_depth_says_so(tmp_path, caplog):
    """A 10-bit input encoded at 8 bits (PyAV's libvpx-vp9 takes 8-bit formats only) was
    written without a word: HDR video banded. A --pix-fmt asked for is not warned of."""
    if any("p10" in f.name for f in av.codec.Codec("libvpx-vp9", "w").video_formats):
        pytest.skip("PyAV's libvpx-vp9 encodes 10 bits here")
    src = _clip(tmp_path / "in.mkv", "yuv420p10le", *_BT709)
    caplog.set_level(logging.WARNING, logger="vsr")
    r = _upscale(src, tmp_path / "out.webm", "libvpx-vp9", "pyav")
    assert r.pix_fmt == "yuv420p"
    [said] = [rec.getMessage() for rec in caplog.records if "bits" in rec.getMessage()]
    assert said.startswith("in.mkv: libvpx-vp9 encodes 8 bits at most here: the 10-bit "
                           "input is written at 8 bits (yuv420p);"), said
    caplog.clear()
    upscale_file(UpscaleConfig(input=src, output=tmp_path / "asked.webm", model="bicubic",
                               scale=2, encode=EncodeConfig(codec="libvpx-vp9",
                                                            pix_fmt="yuv420p")))
    assert not [rec for rec in caplog.records if "bits" in rec.getMessage()]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_an_anamorphic_video_keeps_its_pixel_shape(tmp_path, encoder):
    """A stored picture shown wider than it is (a DVD's 720x576 at 16:9; here 16:11 pixels):
    through --encoder ffmpeg the sample aspect ratio was lost, so the video showed squeezed
    with square pixels."""
    src = _clip(tmp_path / "in.mkv", "yuv420p", "-vf", "setsar=16/11")
    out = tmp_path / "out.mp4"
    _upscale(src, out, "libx264", encoder)
    for path in (src, out):
        with av.open(str(path)) as c:
            assert c.streams.video[0].sample_aspect_ratio == Fraction(16, 11), path


def _luma(path: Path) -> tuple[float, int]:
    """The first frame's mean luma (in its own bit depth) and the range it is read in."""
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return float(frame.to_ndarray()[0].mean()), frame.color_range


@pytest.mark.parametrize(("codec", "suffix"), [("prores_ks", ".mov"), ("mpeg2video", ".mkv"),
                                               ("libvpx", ".webm")])
@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_full_range_input_into_a_codec_without_a_range_flag_keeps_its_levels(
        tmp_path, encoder, codec, suffix):
    """ProRes, MPEG-2 and VP8 have no full-range flag (their decoders read every frame as
    limited range): a full-range input was written with its full-range levels and read back
    as limited, its contrast stretched (a dark grey 43 came back 30). It is written at
    limited range."""
    src = _clip(tmp_path / "in.mkv", "yuv420p", *_BT709[:-1], "pc",
                source="color=c=0x202020:")
    out = tmp_path / f"out{suffix}"
    _upscale(src, out, codec, encoder)
    (full, full_range), (limited, limited_range) = _luma(src), _luma(out)
    assert (full_range, limited_range) == (2, 1)
    scale = 1023 if _pix_fmt(out).endswith("10le") else 255
    assert abs(limited / scale * 255 - (16 + full * 219 / 255)) < 1.5, (full, limited)


@pytest.mark.parametrize(("codec", "suffix", "pix_fmt"), [
    ("ffv1", ".mkv", "rgb24"), ("utvideo", ".avi", "rgb24"), ("png", ".mov", "pal8")])
def test_an_rgb_input_into_a_lossless_codec_stays_rgb(tmp_path, codec, suffix, pix_fmt):
    """A lossless codec keeps RGB frames RGB: an RGB input (a PNG sequence, a GIF, a screen
    capture) into --codec ffv1 was written as yuv420p, its colour converted and its chroma
    halved each way, while a planar RGB input (gbrp) into the same codec stayed RGB; a
    palette input into --codec png was written with a palette, which the upscaled colours
    are not of."""
    src = tmp_path / "in.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=64x48:r=25:d=0.12", "-c:v", "png", "-pix_fmt", pix_fmt,
                    str(src)], check=True)
    out = tmp_path / f"out{suffix}"
    r = _upscale(src, out, codec, "pyav")
    assert av.VideoFormat(r.pix_fmt).is_rgb, r.pix_fmt
    with av.open(str(out)) as c:
        assert av.VideoFormat(c.streams.video[0].codec_context.pix_fmt).is_rgb


def test_a_codec_the_container_cannot_hold_names_one_that_can(tmp_path):
    """--codec utvideo into .mkv said 'use ... a container that can (e.g. .mkv)': the very
    container that could not. It names one whose muxer takes the codec."""
    src = _clip(tmp_path / "in.mkv", "yuv420p")
    with pytest.raises(OutputError, match=r"cannot hold utvideo video; use another --codec "
                                          r"\(matroska holds libx264 or libvpx-vp9\), "
                                          r"or a container that can \(e\.g\. \.avi\)"):
        _upscale(src, tmp_path / "out.mkv", "utvideo", "pyav")


def test_a_pix_fmt_the_ffmpeg_programs_encoder_lacks_is_refused_before_any_work(tmp_path):
    """The program's encoder says what it takes: a --pix-fmt outside that is the
    ConfigError choose_pix_fmt raises, as with the PyAV encoder (ffmpeg wrote yuv444p instead,
    and the result said gbrp)."""
    if _program_takes("libx264", "gbrp"):
        pytest.skip("the ffmpeg program's libx264 takes gbrp here")
    src = _clip(tmp_path / "in.mkv", "yuv420p", *_BT709)
    out = tmp_path / "out.mkv"
    with pytest.raises(ConfigError, match="libx264 cannot encode gbrp"):
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder="ffmpeg",
                                   encode=EncodeConfig(codec="libx264", pix_fmt="gbrp")))
    assert not out.exists()


def test_frames_closer_than_a_gif_tick_are_all_written(tmp_path, caplog):
    """A 120 fps clip as .gif: GIF's delays are hundredths of a second, and the frames that
    shared one made the muxer refuse the run ("writing out.gif failed: Invalid argument").
    Every frame is written now, those too close moved to the next tick, with a warning.
    Found by fuzzing."""
    from conftest import make_clip, video_pts_seconds

    src = make_clip(tmp_path / "fast.mkv", frames=12, rate=Fraction(120))
    out = tmp_path / "out.gif"
    with caplog.at_level(logging.WARNING):
        result = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
    assert result.frames_out == 12
    times = video_pts_seconds(out)
    assert len(times) == 12 and all(b > a for a, b in zip(times, times[1:], strict=False))
    assert any("GIF holds one frame per tick of 0.01 s" in r.getMessage()
               for r in caplog.records)


def test_frames_closer_than_a_millisecond_keep_their_order_in_matroska(tmp_path, caplog):
    """A 2000 fps Y4M (timed by its rate) as .mkv: Matroska's clock is a millisecond, and
    frames two to a tick came out with equal timestamps, without a word (players show one of
    each pair). Now every frame has its own tick, those too close moved, with a warning.
    Found by fuzzing."""
    import numpy as np
    from conftest import video_pts_seconds

    src = tmp_path / "fast.y4m"
    with av.open(str(src), "w") as out:
        s = out.add_stream("rawvideo", rate=2000)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(10):
            img = np.full((32, 32, 3), 20 * i, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode(None):
            out.mux(pkt)
    out = tmp_path / "out.mkv"
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
    times = video_pts_seconds(out)
    assert len(times) == 10 and all(b > a for a, b in zip(times, times[1:], strict=False))
    assert any("MATROSKA holds one frame per tick of 0.001 s" in r.getMessage()
               for r in caplog.records)


def test_a_y4m_output_has_the_inputs_rate_and_a_format_it_holds(tmp_path):
    """Y4M keeps no timestamps: its header's rate is the time base, and a 12 fps Matroska
    input came out "F1000:1" (played 83 times too fast). And rawvideo of an RGB input kept
    the RGB format, which the muxer refused with a line that blamed the codec. Found by
    fuzzing."""
    from conftest import make_clip

    src = make_clip(tmp_path / "in.mkv", frames=5, rate=Fraction(12))
    rgb = tmp_path / "rgb.mkv"
    with av.open(str(src)) as c, av.open(str(rgb), "w") as out:
        s = out.add_stream("ffv1", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "bgr0"
        for frame in c.decode(video=0):
            for pkt in s.encode(frame.reformat(format="bgr0")):
                out.mux(pkt)
        for pkt in s.encode(None):
            out.mux(pkt)
    for name, clip in (("yuv.y4m", src), ("rgb.y4m", rgb)):
        out = tmp_path / name
        result = upscale_file(UpscaleConfig(input=clip, output=out, model="bicubic", scale=2,
                                            encode=EncodeConfig(codec="rawvideo")))
        assert result.frames_out == 5
        header = out.read_bytes().split(b"\n", 1)[0].split()
        assert b"F12:1" in header and header[1:3] == [b"W128", b"H96"], header
        with av.open(str(out)) as c:
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
            assert sum(1 for _ in c.decode(video=0)) == 5


def test_a_jump_of_days_between_frames_into_mp4_says_so(cli_error, tmp_path):
    """A recording whose clock jumps by about 11.6 days: MP4's 32-bit sample times cannot hold
    it, and the line was FFmpeg's "Not yet implemented in FFmpeg, patches welcome". It names
    the jump now; .mkv takes the same input. Found by fuzzing."""
    from conftest import make_clip, video_pts_seconds

    pts = [0, 83, 167, 250, 10**9 + 333, 10**9 + 417, 10**9 + 500]
    src = make_clip(tmp_path / "jump.mkv", frames=len(pts), pts=pts)
    line = cli_error("upscale", str(src), str(tmp_path / "out.mp4"), "--model", "bicubic",
                     "--scale", "2")
    assert line == ("Error: out.mp4: the video jumps 1,000,000 s between two frames (at 0.250 "
                    "s), more than MP4 can hold; write .mkv, which can"), line
    assert not list(tmp_path.glob("*out.mp4*"))
    upscale_file(UpscaleConfig(input=src, output=tmp_path / "out.mkv", model="bicubic", scale=2))
    assert len(video_pts_seconds(tmp_path / "out.mkv")) == len(pts)
