"""--encoder ffmpeg keeps the times the PyAV encoder keeps: the last picture's duration, the
Opus of a Matroska file, and reads its input no more often than it must."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.sink import EncodeConfig
from vsr.upscale import UpscaleConfig, upscale_file

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs the ffmpeg program")

TB = Fraction(1, 1000)


def _timed_clip(path: Path, pts: list[int], durations: list[int], *, audio: str | None = "aac",
                audio_rate: int = 48000) -> Path:
    """libx264 pictures at ``pts`` (ms) shown ``durations`` (each packet carries its own), and
    ``audio`` to the video's end."""
    shown = dict(zip(pts, durations, strict=True))
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.time_base = v.codec_context.time_base = TB
        v.codec_context.options = {"preset": "ultrafast"}
        a = out.add_stream(audio, rate=audio_rate) if audio else None
        if a is not None:
            a.layout = "mono"

        def mux(packets):
            for pkt in packets:
                pkt.duration = shown[pkt.pts]
                out.mux(pkt)

        for k, p in enumerate(pts):
            img = np.random.default_rng(k).integers(0, 256, (48, 64, 3), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = p, TB
            mux(v.encode(frame))
        mux(v.encode(None))
        if a is not None:
            n = round((pts[-1] + durations[-1]) * TB * audio_rate)
            fmt = a.codec_context.format.name
            size = a.codec_context.frame_size or 1024
            tone = 0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / audio_rate)
            samples = (tone * 32767).astype(np.int16) if fmt.startswith("s16") \
                else tone.astype(np.float32)
            for s0 in range(0, n, size):
                chunk = samples[s0:s0 + size]
                if len(chunk) < size and audio == "libopus":  # whole frames only
                    chunk = np.pad(chunk, (0, size - len(chunk)))
                af = av.AudioFrame.from_ndarray(chunk[None, :], format=fmt, layout="mono")
                af.sample_rate, af.pts, af.time_base = audio_rate, s0, Fraction(1, audio_rate)
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    return path


def _video_times(path: Path) -> dict[str, object]:
    """The video's pts (s), where its last picture ends (s, pts + duration of the packet
    with the latest pts), the stream's own duration (s: MP4's, or Matroska's DURATION tag),
    the container's duration (s) and the video stream's time base."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pkts = [(p.pts, p.duration) for p in c.demux(s) if p.size]
        last = max(pkts)
        if s.duration is not None:
            stream = (s.duration + (s.start_time or 0)) * s.time_base
        else:
            h, m, sec = s.metadata["DURATION"].split(":")
            stream = Fraction(sec) + 60 * int(m) + 3600 * int(h)
        return {"pts": sorted(p * s.time_base for p, _ in pkts),
                "end": (last[0] + last[1]) * s.time_base, "stream": stream,
                "container": Fraction(c.duration, av.time_base), "tick": s.time_base}


def _both(src: Path, tmp_path: Path, suffix: str, preset: str | None):
    outs = {}
    for encoder in ("pyav", "ffmpeg"):
        out = tmp_path / f"{encoder}{suffix}"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder, encode=EncodeConfig(preset=preset)))
        outs[encoder] = out
    return outs


def _packets(path: Path, kind: str) -> list[tuple[int, int, int]]:
    with av.open(str(path)) as c:
        return [(p.pts, p.dts, p.duration) for p in c.demux(getattr(c.streams, kind)[0])
                if p.size]


# 25 fps, the last picture shown 2 s (a title card), with AAC or without audio; 25 fps with
# a 2 s hole in the middle and a last picture of one frame step (its rate on average is no
# frame step: ffmpeg 5.1 gave the last picture 1/that rate, 0.14 s)
_CLIPS = {"long_last": ([40 * k for k in range(12)], [40] * 11 + [2000], "aac"),
          "long_last_silent": ([40 * k for k in range(12)], [40] * 11 + [2000], None),
          "gap": ([40 * k for k in range(6)] + [2240 + 40 * k for k in range(6)],
                  [40] * 5 + [2000] + [40] * 6, "aac")}


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("preset", ["ultrafast", None], ids=["no_bframes", "bframes"])
@pytest.mark.parametrize("shape", list(_CLIPS))
def test_the_last_picture_keeps_its_time_through_ffmpeg(tmp_path, suffix, preset, shape):
    """ffmpeg 5.1 gives every encoded packet one frame step of the pipe's declared rate, so
    a last picture shown 2 s came out shown 0.1 s: the file's video ended 1.9 s early and
    its audio outlasted it. The last pictures now keep their times, as with the PyAV
    encoder: the video's end, its stream duration and the container's within a tick; the
    audio's packets untouched."""
    pts, durations, audio = _CLIPS[shape]
    src = _timed_clip(tmp_path / f"in{suffix}", pts, durations, audio=audio)
    outs = _both(src, tmp_path, suffix, preset)
    want, got = _video_times(outs["pyav"]), _video_times(outs["ffmpeg"])
    tick = max(want["tick"], got["tick"])
    assert got["pts"] == want["pts"]
    end = Fraction(pts[-1] + durations[-1]) * TB
    assert abs(want["end"] - end) <= tick  # the PyAV encoder's, as the input's
    # Matroska: ffmpeg 5.1 writes no CodecDelay for AAC (Opus only), FFmpeg 8 copies the
    # input's 21 ms and counts it in the file's duration: the same packets, 21 ms apart
    keys = ("end", "stream") if audio and suffix == ".mkv" else ("end", "stream", "container")
    for key in keys:
        assert abs(got[key] - want[key]) <= tick, (key, float(got[key]), float(want[key]))
    if audio:
        assert _packets(outs["ffmpeg"], "audio") == _packets(outs["pyav"], "audio")


def _opus_times(path: Path) -> tuple[list[int], int]:
    """The Opus packets' pts (ms) and the stream's pre-skip (samples)."""
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        assert a.time_base == TB
        pre_skip = int.from_bytes(bytes(a.codec_context.extradata)[10:12], "little")
        return [p.pts for p in c.demux(a) if p.size], pre_skip


@pytest.mark.parametrize("suffix, codec", [(".mkv", "libx264"), (".webm", "libvpx-vp9")])
def test_opus_in_matroska_keeps_its_times_through_ffmpeg(tmp_path, suffix, codec):
    """Told to keep negative times (-avoid_negative_ts disabled), ffmpeg 5.1's Matroska
    muxer writes the blocks of an Opus stream at its packets' times, without the codec
    delay (CodecDelay, the pre-skip: 312 samples, 6.5 ms) that every reader takes off again:
    the audio came out 6-7 ms early. The PyAV encoder's are the input's."""
    src = _timed_clip(tmp_path / "in.mkv", [40 * k for k in range(25)], [40] * 25,
                      audio="libopus")
    want, pre_skip = _opus_times(src)
    assert pre_skip > 0 and want[0] < 0
    for encoder in ("pyav", "ffmpeg"):
        out = tmp_path / f"{encoder}{suffix}"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder, encode=EncodeConfig(codec=codec)))
        assert _opus_times(out) == (want, pre_skip), encoder


def test_the_sink_reads_its_input_twice_at_most(tmp_path, monkeypatch):
    """The input was opened three times before the first frame (the copy check, the tags
    and the dispositions); the tags and dispositions are read in one go now. The copy
    check (vsr.io.passthrough.check_carry) opens it once more."""
    from vsr.io import ffmpeg_sink
    from vsr.io.source import PyAVSource

    src = _timed_clip(tmp_path / "in.mkv", [40 * k for k in range(4)], [40] * 4)
    info = PyAVSource(src).info
    opened: list[str] = []
    real_open = av.open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(str(src)):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    with ffmpeg_sink.FfmpegSink(tmp_path / "o.mkv", info, 64, 48,
                                EncodeConfig(preset="ultrafast")) as sink:
        sink.write(np.zeros((48, 64, 3), np.uint8), 0, 40)
    assert len(opened) <= 2, opened


@pytest.mark.parametrize("suffix, shape", [(".mp4", "constant"), (".mkv", "constant"),
                                           (".mkv", "gap")])
def test_a_clip_that_ends_right_is_not_copied_again(tmp_path, monkeypatch, suffix, shape):
    """The copy that sets the last durations reads and writes the whole file: only where
    ffmpeg's file ends the last picture elsewhere than the input (not for a constant frame
    rate, nor for a Matroska file whose last picture lasts its default duration, whatever
    the pictures before it: the first check copied those too)."""
    from vsr.io import ffmpeg_sink

    def no_copy(*args, **kwargs):
        raise AssertionError("copied again")

    monkeypatch.setattr(ffmpeg_sink, "_remux", no_copy)
    pts, durations = ([40 * k for k in range(12)], [40] * 12) if shape == "constant" \
        else _CLIPS["gap"][:2]
    src = _timed_clip(tmp_path / f"in{suffix}", pts, durations)
    out = tmp_path / f"o{suffix}"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                               encoder="ffmpeg", encode=EncodeConfig(preset="ultrafast")))
    assert _video_times(out)["end"] == Fraction(pts[-1] + durations[-1]) * TB


def test_a_failed_copy_keeps_ffmpegs_file_and_says_so(tmp_path, monkeypatch, caplog):
    """Where the copy that sets the last durations fails, the file is ffmpeg's (complete,
    the last picture one frame step), a warning says so, and no temporary file is left."""
    from vsr.errors import OutputError
    from vsr.io import ffmpeg_sink

    def failing(src, dst, *args):
        dst.write_bytes(b"half a file")
        raise OutputError("no room")

    monkeypatch.setattr(ffmpeg_sink, "_remux", failing)
    src = _timed_clip(tmp_path / "in.mp4", [40 * k for k in range(12)], [40] * 11 + [2000])
    out = tmp_path / "o.mp4"
    r = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder="ffmpeg", encode=EncodeConfig(preset="ultrafast")))
    assert r.frames_out == 12
    assert _video_times(out)["end"] < Fraction(2440) * TB
    assert "copying the file to set them failed: no room" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "o.mp4"]


def test_a_stop_during_the_copy_leaves_no_file(tmp_path, monkeypatch):
    from vsr.errors import Interrupted
    from vsr.io import ffmpeg_sink

    def stopped(src, dst, *args):
        dst.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ffmpeg_sink, "_remux", stopped)
    src = _timed_clip(tmp_path / "in.mkv", [40 * k for k in range(12)], [40] * 11 + [2000])
    with pytest.raises(Interrupted, match="no output was written"):
        upscale_file(UpscaleConfig(input=src, output=tmp_path / "o.mkv", model="bicubic",
                                   scale=2, encoder="ffmpeg",
                                   encode=EncodeConfig(preset="ultrafast")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]


def _colour(path: Path) -> tuple[int, int, int, int]:
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return cc.color_range, cc.colorspace, cc.color_primaries, cc.color_trc


# (matrix, primaries, transfer): PAL's (its transfer, BT.470BG, is gamma 2.8), Display P3
# with sRGB's transfer (phones), xvYCC, BT.470M's gamma 2.2
@pytest.mark.parametrize("described", [(5, 5, 5), (1, 12, 13), (1, 1, 11), (6, 4, 4)],
                         ids=["pal", "display_p3", "xvycc", "gamma22"])
def test_the_ffmpeg_encoder_keeps_every_colour_description(clip, tmp_path, described):
    """The ffmpeg sink named only the common descriptions: Display P3 primaries and the
    xvYCC transfer came out unspecified, and a gamma 2.2 or 2.8 transfer (PAL video) failed
    the run ('ffmpeg exited with 1: Invalid argument': the setparams filter calls them
    bt470m and bt470bg). Each comes out as with the PyAV encoder, which keeps them."""
    matrix, primaries, transfer = described
    src = clip("in.mp4", frames=3, color={"colorspace": matrix, "color_primaries": primaries,
                                           "color_trc": transfer, "color_range": 1})
    got = {}
    for encoder in ("pyav", "ffmpeg"):
        out = tmp_path / f"{encoder}.mp4"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder, encode=EncodeConfig(preset="ultrafast")))
        got[encoder] = _colour(out)
    assert got["pyav"] == (1, *described)
    assert got["ffmpeg"] == got["pyav"]
