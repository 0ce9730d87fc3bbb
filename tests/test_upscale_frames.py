"""`vsr upscale --frames N`: the first N frames of a longer input (a preview), with every other
stream ending where the video does, not where the input's do."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
from conftest import make_clip, video_pts_seconds

from vsr.errors import ConfigError
from vsr.upscale import UpscaleConfig, upscale_file


def _run(src: Path, out: Path, frames: int | None):
    return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                      frames=frames))


def _packets(path: Path, kind: str) -> list[tuple[Fraction, Fraction]]:
    """(start, end) in seconds of each packet of the first ``kind`` stream."""
    with av.open(str(path)) as c:
        s = next(s for s in c.streams if s.type == kind)
        return [(p.pts * p.time_base, (p.pts + (p.duration or 0)) * p.time_base)
                for p in c.demux(s) if p.size and p.pts is not None]


def test_the_first_frames_and_the_audio_up_to_their_end_in_mp4(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=25, audio_tracks=1)
    out = tmp_path / "out.mp4"
    result = _run(src, out, 5)
    assert (result.frames_in, result.frames_out) == (5, 5)
    assert video_pts_seconds(out) == video_pts_seconds(src)[:5]
    audio = _packets(out, "audio")
    whole = _packets(src, "audio")
    assert 0 < len(audio) < len(whole) and audio == [(a, min(b, Fraction(1, 5)))
                                                     for a, b in whole[:len(audio)]]
    assert audio[-1][1] == Fraction(1, 5)  # the last packet cut where the fifth frame ends
    with av.open(str(out)) as c:
        assert [round(float(s.duration * s.time_base), 3) for s in c.streams] == [0.2, 0.2]
    assert result.copied_packets == {1: len(audio)}


def test_a_subtitle_past_the_end_is_cut_or_left_out(tmp_path: Path) -> None:
    """Matroska: the cue from 0.10 s to 0.25 s ends at 0.20 s, the one from 0.30 s is gone;
    the audio stops with the packet that starts before the end."""
    src = make_clip(tmp_path / "in.mkv", frames=25, audio_tracks=1, subtitle=True)
    out = tmp_path / "out.mkv"
    _run(src, out, 5)
    assert [(float(a), float(b)) for a, b in _packets(out, "subtitle")] == [(0.1, 0.2)]
    assert max(a for a, _ in _packets(out, "audio")) < Fraction(1, 5)


def test_more_frames_than_the_input_has_is_the_whole_input(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=8, audio_tracks=1)
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    assert _run(src, cut, 100).frames_out == 8
    _run(src, whole, None)
    assert video_pts_seconds(cut) == video_pts_seconds(whole)
    assert _packets(cut, "audio") == _packets(whole, "audio")


def test_frames_is_checked_with_the_config(tmp_path: Path) -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="frames"):
            UpscaleConfig(input="a.mp4", output="b.mp4", frames=bad)
    with pytest.raises(ConfigError, match="frames .* needs encoder pyav"):
        UpscaleConfig(input="a.mp4", output="b.mp4", frames=3, encoder="ffmpeg")


def test_the_cli_takes_frames_and_refuses_it_with_the_ffmpeg_encoder(cli_error, tmp_path):
    src = make_clip(tmp_path / "in.mkv", frames=6)
    line = cli_error("upscale", str(src), str(tmp_path / "o.mkv"), "--frames", "2",
                     "--encoder", "ffmpeg")
    assert "needs encoder pyav" in line, line
    line = cli_error("upscale", str(src), str(tmp_path / "o.mkv"), "--frames", "0", code=2)
    assert "'--frames'" in line, line
    assert not list(tmp_path.glob("*o.mkv*"))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_chapters_past_the_end_are_left_out_and_the_last_cut(tmp_path: Path, suffix: str) -> None:
    """Chapters at 0-0.4 s and 0.4-1 s, the first 5 frames (0.2 s): one chapter, 0-0.2 s. The
    MP4 kept its chapter track of the whole input and declared a duration of 1 s."""
    plain = make_clip(tmp_path / f"plain{suffix}", frames=25, audio_tracks=1)
    src = tmp_path / f"in{suffix}"
    ms = Fraction(1, 1000)
    with av.open(str(plain)) as c, av.open(str(src), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in c.streams}
        out.set_chapters([{"id": 1, "start": 0, "end": 400, "time_base": ms,
                           "metadata": {"title": "one"}},
                          {"id": 2, "start": 400, "end": 1000, "time_base": ms,
                           "metadata": {"title": "two"}}])
        for pkt in c.demux():
            if pkt.size:
                pkt.stream = streams[pkt.stream.index]
                out.mux(pkt)
    out = tmp_path / f"out{suffix}"
    _run(src, out, 5)
    with av.open(str(out)) as c:
        chapters = [(c_["start"] * c_["time_base"], c_["end"] * c_["time_base"],
                     c_["metadata"].get("title")) for c_ in c.chapters()]
        assert chapters == [(0, Fraction(1, 5), "one")]
        assert c.duration is not None and c.duration / 1e6 < 0.25
