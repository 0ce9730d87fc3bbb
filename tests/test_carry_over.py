"""What an output carries over from its input beyond the frames: timecode, chapters, rotation,
tags; and what it cannot carry is dropped with a warning, never a refusal. `vsr upscale` and
the `vsr batch` join behave the same."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import av
import pytest
from conftest import video_pts_seconds

from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.upscale import UpscaleConfig, upscale_file

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")

_CHAPTERS = (";FFMETADATA1\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=200\ntitle=One\n"
             "[CHAPTER]\nTIMEBASE=1/1000\nSTART=200\nEND=400\ntitle=Two\n")


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=64x48:r=25:d=0.4", *map(str, args)], check=True)


def _x264(*extra: str) -> list[str]:
    return ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-g", "5", *extra]


def _upscale(src: Path, out: Path, encoder: str = "pyav") -> None:
    r = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder))
    assert r.frames_in == r.frames_out == 10


def _batch(src: Path, out_dir: Path) -> Path:
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=out_dir,
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",), segment_frames=5))
    assert not result.failed, result.failed
    out = out_dir / src.name
    assert video_pts_seconds(out) == video_pts_seconds(src)
    return out


def _video_tags(path: Path) -> dict[str, str]:
    with av.open(str(path)) as c:
        return dict(c.streams.video[0].metadata)


@pytest.fixture
def timecoded(tmp_path) -> Path:
    """An MP4 with a QuickTime timecode (tmcd) track, as cameras and editors write."""
    path = tmp_path / "tc.mp4"
    _ffmpeg(*_x264("-timecode", "01:00:00:00"), path)
    with av.open(str(path)) as c:
        assert [s.type for s in c.streams] == ["video", "data"]
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_timecode_track_goes_on_as_the_timecode(timecoded, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    _upscale(timecoded, out)
    tags = {k.lower(): v for k, v in _video_tags(out).items()}
    assert tags["timecode"] == "01:00:00:00"
    with av.open(str(out)) as c:
        kinds = [s.type for s in c.streams]
        # the MP4 muxer makes one timecode track of it again; Matroska keeps the tag only
        assert kinds == (["video", "data"] if suffix == ".mp4" else ["video"])
        if suffix == ".mp4":
            assert c.streams[1].metadata["timecode"] == "01:00:00:00"


def test_batch_join_keeps_the_timecode(timecoded, tmp_path):
    out = _batch(timecoded, tmp_path / "bo")
    assert _video_tags(out)["timecode"] == "01:00:00:00"
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "data"]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", "batch", "ffmpeg.mkv"])
def test_chapter_text_track_is_dropped_and_the_chapters_kept(tmp_path, caplog, suffix):
    """Through `--encoder ffmpeg` too: the ffmpeg program failed at its header, after the
    first frame, where the stream was mapped."""
    src = tmp_path / "chap.mp4"
    (tmp_path / "chap.txt").write_text(_CHAPTERS)
    _ffmpeg("-i", tmp_path / "chap.txt", "-map", "0", "-map_chapters", "1", *_x264(), src)
    with av.open(str(src)) as c:
        assert [s.type for s in c.streams] == ["video", "data"]
    caplog.set_level(logging.WARNING, logger="vsr")
    if suffix == "batch":
        out = _batch(src, tmp_path / "bo")
    else:
        out = tmp_path / f"out.{suffix.split('.')[-1]}"
        _upscale(src, out, "ffmpeg" if suffix.startswith("ffmpeg") else "pyav")
    with av.open(str(out)) as c:
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["One", "Two"]
        if out.suffix == ".mkv":  # MP4 writes its chapters as a text track again
            assert [s.type for s in c.streams] == ["video"]
    assert any("not copying stream 1 (data" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("how", ["upscale", "batch", "ffmpeg"])
def test_stale_encode_tags_of_the_video_are_not_copied(tmp_path, how):
    """Matroska's ENCODER and statistics tags (mkvmerge's with a language suffix) describe
    the input's encode; the output's muxer writes its own DURATION. Through --encoder ffmpeg
    they were copied (-map_metadata): NUMBER_OF_FRAMES 99 on a 10-frame output (its
    ENCODER is the ffmpeg program's own, here the same as the input's)."""
    long = tmp_path / "long.mkv"
    _ffmpeg(*_x264(), long)
    src = tmp_path / "st.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(long), "-c", "copy",
                    "-metadata:s:v:0", "NUMBER_OF_FRAMES-eng=99", "-metadata:s:v:0", "BPS=1234",
                    "-metadata:s:v:0", "DURATION=00:00:09.000000000",
                    "-metadata:s:v:0", "COMMENT=kept", str(src)], check=True)
    before = _video_tags(src)
    assert before["ENCODER"].startswith("Lavc") and before["NUMBER_OF_FRAMES-eng"] == "99"
    if how == "batch":
        out = _batch(src, tmp_path / "bo")
    else:
        out = tmp_path / "out.mkv"
        _upscale(src, out, "ffmpeg" if how == "ffmpeg" else "pyav")
    tags = _video_tags(out)
    if how != "ffmpeg":
        assert tags.get("ENCODER") != before["ENCODER"]
    assert "NUMBER_OF_FRAMES-eng" not in tags and "BPS" not in tags
    assert tags["DURATION"].startswith("00:00:00.")
    assert {k.upper(): v for k, v in tags.items()}["COMMENT"] == "kept"


def test_batch_join_keeps_the_rotation(tmp_path):
    plain = tmp_path / "r0.mp4"
    _ffmpeg(*_x264(), plain)
    src = tmp_path / "rot.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(plain), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(src)], check=True)
    out = _batch(src, tmp_path / "bo")
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert round(frame.rotation) == round(next(av.open(str(src)).decode(video=0)).rotation)
        assert round(frame.rotation) in (90, -90)


_PHONE_TAGS = {"com.apple.quicktime.make": "Apple", "com.apple.quicktime.model": "iPhone 12",
               "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
               "com.apple.quicktime.creationdate": "2021-05-01T10:00:00+0200"}


@pytest.mark.parametrize("suffix", [".mov", ".mp4", ".mkv"])
@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_phones_metadata_keys_are_kept(tmp_path, suffix, encoder):
    """A phone's MOV keeps its make, model, place and time of recording as QuickTime
    metadata keys (mdta, named com.apple.quicktime.*), which the MOV/MP4 muxer writes only
    when asked (use_metadata_tags): into .mov and .mp4 they were dropped without a word."""
    src = tmp_path / "phone.mov"
    tags = [arg for key, value in _PHONE_TAGS.items() for arg in ("-metadata", f"{key}={value}")]
    _ffmpeg(*_x264(), "-movflags", "use_metadata_tags", *tags, src)
    out = tmp_path / f"out{suffix}"
    _upscale(src, out, encoder)
    for path in (src, out):
        with av.open(str(path)) as c:  # Matroska's tag names are upper case
            tags = {k.lower(): v for k, v in c.metadata.items()}
            assert {k: tags.get(k.lower()) for k in _PHONE_TAGS} == _PHONE_TAGS, path


def test_the_ffmpeg_encoder_reports_the_packets_it_copied(tmp_path):
    """`vsr upscale --json --encoder ffmpeg` said "copied_packets": {} where it had copied
    the audio and subtitles: a script checking the report thought nothing was carried. The
    counts are the output's, as the PyAV encoder's are."""
    src = tmp_path / "in.mkv"
    (tmp_path / "s.srt").write_text("1\n00:00:00,000 --> 00:00:00,200\nHello\n")
    _ffmpeg("-f", "lavfi", "-i", "sine=d=0.4", "-i", tmp_path / "s.srt", "-map", "0",
            "-map", "1", "-map", "2", *_x264(), "-c:a", "aac", "-c:s", "srt", src)
    reports = {}
    for encoder in ("pyav", "ffmpeg"):
        reports[encoder] = upscale_file(UpscaleConfig(
            input=src, output=tmp_path / f"{encoder}.mkv", model="bicubic", scale=2,
            encoder=encoder)).copied_packets
    with av.open(str(src)) as c:
        audio = sum(1 for p in c.demux(audio=0) if p.size)
    assert reports["ffmpeg"] == reports["pyav"] == {1: audio, 2: 1}


@pytest.mark.parametrize("suffix", [".mov", ".mp4"])
def test_batch_keeps_a_phones_metadata_keys(tmp_path, suffix):
    """`vsr batch` dropped a phone's QuickTime metadata keys (com.apple.quicktime.*) from
    .mov and .mp4 outputs, which `vsr upscale` keeps: the join asks the muxer for
    use_metadata_tags as the sinks do. A full-range .mp4 still gets its 'colr' box beside
    them (write_colr)."""
    src = tmp_path / f"phone{suffix}"
    tags = [arg for key, value in _PHONE_TAGS.items() for arg in ("-metadata", f"{key}={value}")]
    full = ["-color_range", "pc"] if suffix == ".mp4" else []
    _ffmpeg(*_x264(*full), "-movflags", "use_metadata_tags", *tags, src)
    out = _batch(src, tmp_path / "bo")
    for path in (src, out):
        with av.open(str(path)) as c:
            assert {k: c.metadata.get(k) for k in _PHONE_TAGS} == _PHONE_TAGS, path
            if full:
                assert next(c.decode(video=0)).color_range == 2, path
    assert not full or b"colr" in out.read_bytes()
