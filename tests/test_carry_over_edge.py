"""Streams an output container cannot hold as they are: a clear error before any work for
audio, subtitles and attachments, a warning for cover art it cannot keep; never a stream
lost without a word, or written as something no player reads."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.errors import OutputError
from vsr.io.passthrough import check_carry
from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.upscale import UpscaleConfig, upscale_file

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")

_SRT = "1\n00:00:00,000 --> 00:00:00,200\nHello\n\n2\n00:00:00,200 --> 00:00:00,400\nWorld\n"
_FONT = bytes(range(256)) * 8  # Matroska keeps any bytes as an attachment


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=64x48:r=25:d=0.4", *map(str, args)], check=True)


_X264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-g", "5")
_SINE = ("-f", "lavfi", "-i", "sine=d=0.4")


def _upscale(src: Path, out: Path, encoder: str = "pyav"):
    return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                      encoder=encoder))


def _nothing_left(folder: Path, *inputs: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in inputs)


def _kinds(path: Path) -> list[tuple[str, str | None, int]]:
    with av.open(str(path)) as c:
        return [(s.type, s.codec_context.name if s.codec_context else None,
                 int(s.disposition) & int(av.stream.Disposition.attached_pic))
                for s in c.streams]


@pytest.mark.parametrize("codec", ["srt", "ass", "flac"])
def test_what_mpegts_writes_as_private_data_is_refused_before_work(tmp_path, codec):
    """`vsr upscale in.mkv out.ts` with SRT or ASS subtitles (or FLAC audio) finished without
    a word, but the MPEG-TS muxer has no stream type for them and wrote opaque private data:
    ffprobe and players read the track back as `bin_data` (PyAV: a data stream of no codec),
    so the subtitles or the audio were lost. It is now refused, naming the stream."""
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "clip.mkv"
    if codec == "flac":
        _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "flac", src)
    else:
        (tmp_path / "s.srt").write_text(_SRT)
        _ffmpeg("-i", tmp_path / "s.srt", "-map", "0", "-map", "1", *_X264, "-c:s", codec, src)
    kind = "audio" if codec == "flac" else "subtitle"
    with pytest.raises(OutputError, match=rf"cannot carry stream 1 \({kind}, .*private data"):
        _upscale(src, tmp_path / "out.ts")
    _nothing_left(tmp_path, *[p for p in (tmp_path / "in", tmp_path / "s.srt") if p.exists()])
    out = tmp_path / "ok.mkv"  # Matroska keeps it
    _upscale(src, out)
    assert _kinds(out)[1][0] == kind


@pytest.mark.parametrize(("codec", "suffix"), [("libopus", ".ts"), ("aac", ".ts"),
                                               ("aac", ".m2ts")])
def test_mpegts_keeps_what_it_has_a_stream_type_for(tmp_path, codec, suffix):
    """The trial does not refuse audio MPEG-TS carries: Opus by its registration; AAC, which
    the Blu-ray mode of .m2ts writes as private data that readers find by its content."""
    src = tmp_path / "in.mkv"
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", codec, src)
    out = tmp_path / f"out{suffix}"
    assert check_carry(src, out, 0) == [1]
    _upscale(src, out)
    assert [k[:2] for k in _kinds(out)] == [("video", "h264"), ("audio", codec[3:]
                                                                if codec == "libopus" else codec)]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_audio_the_header_refuses_is_named_before_work(tmp_path, encoder):
    """Opus into .mov: the stream is added, and only the header fails, so the user got
    `cannot start writing out.mov: Invalid argument`, naming neither stream nor cause
    (through `--encoder ffmpeg`: `ffmpeg exited with 1: Error initializing output stream`)."""
    src = tmp_path / "opus.mkv"
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "libopus", src)
    with pytest.raises(OutputError, match=r"mov cannot carry stream 1 \(audio, opus\)"):
        _upscale(src, tmp_path / "out.mov", encoder)
    _nothing_left(tmp_path, src)


@pytest.fixture
def mp4_cover(tmp_path) -> tuple[Path, bytes]:
    """An MP4 with cover art (an attached JPEG picture), as taggers and phones write."""
    pic = tmp_path / "cover.jpg"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=32x32",
                    "-frames:v", "1", str(pic)], check=True)
    src = tmp_path / "in" / "cov.mp4"
    src.parent.mkdir(exist_ok=True)
    _ffmpeg(*_SINE, "-i", pic, "-map", "0", "-map", "1", "-map", "2", *_X264, "-c:a", "aac",
            "-c:v:1", "copy", "-disposition:v:1", "attached_pic", src)
    assert _kinds(src)[2] == ("video", "mjpeg", 1024)
    return src, pic.read_bytes()


def test_mp4_cover_art_goes_into_matroska_as_an_attachment(mp4_cover, tmp_path):
    """The Matroska muxer took the picture stream and wrote it as a one-frame MJPEG video
    track, no longer cover art (a second video track to players); it now goes on as the
    attachment Matroska keeps covers in, with its bytes."""
    src, picture = mp4_cover
    out = tmp_path / "out.mkv"
    result = _upscale(src, out)
    assert result.copied_packets[2] == 1
    assert _kinds(out) == [("video", "h264", 0), ("audio", "aac", 0), ("video", "mjpeg", 1024)]
    with av.open(str(out)) as c:
        cover = c.streams[2]
        assert cover.metadata["mimetype"] == "image/jpeg"
        assert cover.metadata["filename"] == "cover.jpg"
        assert bytes(next(p for p in c.demux(cover) if p.size)) == picture


@pytest.mark.parametrize("suffix", [".mov", ".avi", "ffmpeg.mkv"])
def test_cover_art_the_output_cannot_keep_is_dropped_with_a_warning(mp4_cover, tmp_path,
                                                                    caplog, suffix):
    """MOV left the cover out without a word (the result still counted its packet as copied);
    AVI made it a one-frame video track. It is now left out, with a warning. So is a cover
    into Matroska through `--encoder ffmpeg`, whose stream copy made it a video track."""
    src, _ = mp4_cover
    out = tmp_path / f"out.{suffix.split('.')[-1]}"
    caplog.set_level(logging.WARNING, logger="vsr")
    result = _upscale(src, out, "ffmpeg" if suffix.startswith("ffmpeg") else "pyav")
    assert [k[0] for k in _kinds(out)] == ["video", "audio"]
    assert 2 not in result.copied_packets
    assert any("not copying stream 2 (cover art, mjpeg)" in r.getMessage()
               and "cannot hold cover art" in r.getMessage() for r in caplog.records)


@pytest.fixture
def with_font(tmp_path) -> Path:
    font = tmp_path / "font.ttf"
    font.write_bytes(_FONT)
    src = tmp_path / "in" / "font.mkv"
    src.parent.mkdir(exist_ok=True)
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "aac", "-attach", font,
            "-metadata:s:t", "mimetype=application/x-truetype-font", src)
    font.unlink()
    return src


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_attachment_into_a_format_without_attachments_is_refused_before_work(with_font,
                                                                            tmp_path, suffix):
    """A font attachment into .mp4 failed as `cannot start writing out.mp4: Invalid
    argument`; into .ts it went without a word, as an empty data stream."""
    with pytest.raises(OutputError, match="cannot carry attachment 'font.ttf'"):
        _upscale(with_font, tmp_path / f"out{suffix}")
    _nothing_left(tmp_path, tmp_path / "in")
    out = tmp_path / "out.mkv"
    _upscale(with_font, out)
    with av.open(str(out)) as c:
        [font] = c.streams.attachments
        assert font.name == "font.ttf" and bytes(font.data) == _FONT


def test_check_carry_refuses_without_writing(with_font, mp4_cover, tmp_path):
    """What `vsr batch` can ask before its first segment: the same refusal, no file made."""
    src, _ = mp4_cover
    # what a stream copy carries (the ffmpeg program's map): the cover only into MP4 (into
    # Matroska vsr's own writer makes it an attachment), attachments as they are
    assert check_carry(src, tmp_path / "a.mp4", 0) == [1, 2]
    assert check_carry(src, tmp_path / "b.mov", 0) == check_carry(src, tmp_path / "c.mkv", 0) \
        == [1]
    assert check_carry(with_font, tmp_path / "c.mkv", 0) == [1, 2]
    assert check_carry(src, tmp_path / "x.unknownsuffix", 0) is None  # ffmpeg's own to judge
    with pytest.raises(OutputError, match="cannot carry attachment 'font.ttf'"):
        check_carry(with_font, tmp_path / "d.mp4", 0)
    _nothing_left(tmp_path, tmp_path / "in", tmp_path / "cover.jpg")


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_mov_text_suggests_a_container_that_takes_it(tmp_path, suffix):
    """MP4's mov_text subtitles into .mkv: the error advised `(e.g. .mkv)`, the very container
    that refused them, and into .avi it advised .mkv too. The advice is now the first
    container that takes the stream, tried: here the input's own."""
    (tmp_path / "s.srt").write_text(_SRT)
    src = tmp_path / "movtext.mp4"
    _ffmpeg("-i", tmp_path / "s.srt", "-map", "0", "-map", "1", *_X264, "-c:s", "mov_text", src)
    with pytest.raises(OutputError, match=r"stream 1 \(subtitle, mov_text\).*\(e\.g\. \.mp4\)$"):
        _upscale(src, tmp_path / f"out{suffix}")


@pytest.mark.parametrize("how", ["upscale", "batch"])
def test_the_videos_own_flags_are_kept(tmp_path, how):
    """The copied streams kept their flags but the re-encoded video lost its own: an MP4's
    default video track came out of `vsr upscale` (and the batch join) into Matroska marked
    not default (FlagDefault 0), and its forced flag was lost."""
    src = tmp_path / "in" / "clip.mp4"
    src.parent.mkdir()
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "aac",
            "-disposition:v:0", "default+forced", src)
    if how == "batch":
        from vsr.jobs import BatchConfig, JobOptions, run_batch

        result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "out",
                                       template="{stem}.mkv",
                                       options=JobOptions(model="bicubic", scale=2),
                                       devices=("cpu",), segment_frames=5))
        assert not result.failed, result.failed
        out = tmp_path / "out" / "clip.mkv"
    else:
        out = tmp_path / "out.mkv"
        _upscale(src, out)
    flags = []
    for path in (src, out):
        with av.open(str(path)) as c:
            flags.append([s.disposition for s in c.streams])
    d = av.stream.Disposition
    assert flags[0][0] == d.default | d.forced
    assert flags[1] == flags[0]


def _empty_audio(tmp_path: Path) -> Path:
    """A Matroska file whose audio track holds no packets (a muted camera channel)."""
    full = tmp_path / "full.mkv"
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "aac", full)
    src = tmp_path / "in" / "empty.mkv"
    src.parent.mkdir(exist_ok=True)
    with av.open(str(full)) as i, av.open(str(src), "w") as o:
        v = o.add_stream_from_template(i.streams[0])
        o.add_stream_from_template(i.streams[1])
        for pkt in i.demux(i.streams[0]):
            if pkt.dts is not None:
                pkt.stream = v
                o.mux(pkt)
    full.unlink()
    return src


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_track_without_packets_left_out_by_mp4_is_said(tmp_path, caplog, suffix):
    """The MP4 muxer writes no track for a stream without samples: an empty audio track
    vanished from the output without a word. Matroska keeps it (no warning then)."""
    src = _empty_audio(tmp_path)
    caplog.set_level(logging.WARNING, logger="vsr")
    out = tmp_path / f"out{suffix}"
    _upscale(src, out)
    said = [r.getMessage() for r in caplog.records if "holds no packets" in r.getMessage()]
    kinds = [k[0] for k in _kinds(out)]
    if suffix == ".mp4":
        assert kinds == ["video"]
        assert said == ["stream 1 (audio) holds no packets: the mp4 muxer leaves it out"]
    else:
        assert kinds == ["video", "audio"] and not said


def test_a_batch_refuses_what_its_output_cannot_carry_before_any_segment(tmp_path):
    """`vsr batch in/ -o out --name '{stem}.ts'` on a clip with SRT subtitles computed every
    segment and failed only at the join. It now fails that file before any segment."""
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "clip.mkv"
    (tmp_path / "s.srt").write_text(_SRT)
    _ffmpeg("-i", tmp_path / "s.srt", "-map", "0", "-map", "1", *_X264, "-c:s", "srt", src)
    done = []
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "out",
                                   template="{stem}.ts",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",), segment_frames=2),
                       progress=lambda p: done.append(p))
    assert [f["input"] for f in result.failed] == [str(src)]
    assert "cannot carry stream 1 (subtitle" in result.failed[0]["error"]
    segments = tmp_path / "out" / ".vsr-batch" / "segments"
    assert not segments.exists() or not any(p.is_file() for p in segments.rglob("*"))


def _first_times(path: Path) -> tuple[float, float]:
    """The earliest video and audio presentation times, in seconds."""
    first: dict[str, float] = {}
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.pts is not None:
                t = float(p.pts * p.time_base)
                first[p.stream.type] = min(t, first.get(p.stream.type, t))
    return first["video"], first["audio"]


@pytest.mark.parametrize("suffix", [".flv", ".nut"])
@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg", "batch"])
def test_audio_that_starts_below_zero_into_a_format_that_cannot_keep_it(tmp_path, suffix,
                                                                        encoder):
    """AAC's priming starts the audio at -1024 samples: into .flv its time (and the video's
    first decode times) wrapped to 2**32 ms less a few; .nut refused it ("Invalid argument").
    Such formats now shift every stream together, as FFmpeg does by default; audio and video
    keep their offset. (`vsr batch` still joins video-only NUT segments kept as they are.)"""
    src = tmp_path / "aac.mp4"
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "aac", src)
    video, audio = _first_times(src)
    assert audio < 0 <= video
    out = tmp_path / f"out{suffix}"
    if encoder == "batch":  # the join, of NUT segments that keep their times
        out = tmp_path / f"aac{suffix}"
        batch = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path,
                                      template="{dir}/{stem}" + suffix,
                                      options=JobOptions(model="bicubic", scale=2),
                                      devices=("cpu",), segment_frames=4))
        assert not batch.failed, batch.failed
    else:
        assert _upscale(src, out, encoder).frames_out == 10
    v_out, a_out = _first_times(out)
    assert 0 <= a_out < 1 and abs((a_out - v_out) - (audio - video)) < 0.002


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_video_only_nut_keeps_its_times(tmp_path, encoder):
    """NUT keeps the decode times below zero of a video with B-frames: without a copied stream
    that needs the shift, nothing is moved (the frames keep the input's times)."""
    src = tmp_path / "v.mp4"
    _ffmpeg(*_X264, src)
    out = tmp_path / "out.nut"
    _upscale(src, out, encoder)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert [f.time for f in b.decode(video=0)] == [f.time for f in a.decode(video=0)]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg", "batch"])
def test_a_nut_whose_only_other_stream_is_left_out_keeps_its_times(tmp_path, encoder, caplog):
    """What is copied decides NUT's shift, not what the input holds: cover art, which NUT
    cannot hold and is left out, made the PyAV sink and the batch join shift the video by
    its encoder's B-frame delay (0.08 s) as if audio were copied beside it."""
    src = tmp_path / "cover.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=red:s=32x32:d=0.04", "-map", "0", "-map", "1",
            "-c:v:0", "libx264", "-pix_fmt", "yuv420p", "-g", "5", "-c:v:1", "mjpeg",
            "-disposition:v:1", "attached_pic", src)
    with av.open(str(src)) as c:
        assert [s.disposition.name for s in c.streams] == ["default", "attached_pic"]
    out = tmp_path / "cover.nut"
    caplog.set_level(logging.WARNING, logger="vsr")
    if encoder == "batch":
        batch = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path,
                                      template="{dir}/{stem}.nut",
                                      options=JobOptions(model="bicubic", scale=2),
                                      devices=("cpu",), segment_frames=4))
        assert not batch.failed, batch.failed
    else:
        _upscale(src, out, encoder)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert [s.type for s in b.streams] == ["video"]
        assert [f.time for f in b.decode(video=0)] == [f.time for f in a.decode(video=0)]


def _adts_then_raw(tmp_path: Path) -> Path:
    """A NUT of 12 frames whose AAC audio comes as ADTS frames, but for its 11th packet,
    whose ADTS header is gone: muxers that keep AAC raw (MP4, Matroska) convert ADTS with a
    bitstream filter chosen by the first packet, which refuses that packet mid-file."""
    adts = tmp_path / "a.aac"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *_SINE[:-1], "sine=d=0.5",
                    "-c:a", "aac", "-f", "adts", str(adts)], check=True)
    src = tmp_path / "in" / "adts.nut"
    src.parent.mkdir()
    with av.open(str(adts)) as a_in, av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.options = {"preset": "ultrafast"}
        audio = out.add_stream_from_template(a_in.streams.audio[0])
        pictures = []
        for k in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * k, np.uint8),
                                               format="rgb24")
            frame.pts = k
            pictures += video.encode(frame)
        pictures += video.encode(None)
        sound = [p for p in a_in.demux(a_in.streams.audio[0]) if p.size]
        assert all(bytes(p)[:2] == b"\xff\xf1" for p in sound)  # ADTS sync words
        raw = av.Packet(bytes(sound[10])[7:])
        raw.pts, raw.dts, raw.duration = sound[10].pts, sound[10].dts, sound[10].duration
        raw.time_base = sound[10].time_base
        sound[10] = raw
        queue = [(p.dts * p.time_base, 0, p) for p in pictures]
        queue += [(p.dts * p.time_base, 1, p) for p in sound]
        for _, kind, p in sorted(queue, key=lambda item: item[:2]):
            p.stream = audio if kind else video
            out.mux(p)
    return src


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_copied_packet_the_muxer_refuses_mid_file_is_one_error_naming_the_stream(
        tmp_path, cli_error, suffix, encoder):
    """The copy's own write failure (not the video's) names the stream and the output, and
    leaves nothing: 'copying stream 1 into OUT failed: ...'. Through `--encoder ffmpeg` it
    named no stream: ffmpeg's last line, 'av_interleaved_write_frame(): Invalid data found
    when processing input', says only that the one before it failed."""
    src = _adts_then_raw(tmp_path)
    out = tmp_path / f"out{suffix}"
    line = cli_error("upscale", str(src), str(out), "--model", "bicubic", "--scale", "2",
                     "--preset", "ultrafast", "--encoder", encoder)
    why = "Invalid data found when processing input"
    if encoder == "pyav":
        assert line == f"Error: copying stream 1 into {out} failed: {why}", line
    else:
        assert line == ("Error: ffmpeg exited with 1: Error applying bitstream filters to an "
                        f"output packet for stream #1: {why}"), line
    _nothing_left(tmp_path, src.parent, tmp_path / "a.aac")


def _audio_cut_by_its_edit_list(path: Path) -> Path:
    """An MP4 whose AAC track's samples are all 1024 long and whose edit list ends 546
    samples into the last one (22050 of 22528): as cameras and editors write a trim. The
    ffmpeg program's muxer puts the short last duration in the sample table instead, so its
    last entry is made a whole sample here."""
    _ffmpeg("-f", "lavfi", "-i", "sine=d=0.5", "-map", "0", "-map", "1", *_X264, "-c:a", "aac",
            path)
    data = bytearray(path.read_bytes())
    stts = [m.start() for m in re.finditer(b"stts", data)]
    box = stts[-1] - 4  # the audio track's (the video's comes first)
    entries = int.from_bytes(data[box + 12:box + 16], "big")
    last = box + 16 + 8 * (entries - 1)
    assert int.from_bytes(data[last + 4:last + 8], "big") == 546
    data[last + 4:last + 8] = (1024).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def _audio_end(path: Path) -> tuple[int, int]:
    """(duration, last packet's duration) of the audio stream, in its time base."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        *_, last = (p for p in c.demux(stream) if p.size)
        return stream.duration, last.duration


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_cut_by_an_edit_list_ends_where_the_input_does(tmp_path, suffix):
    """FFmpeg 8's MOV demuxer hands the last packet its whole sample's duration where the
    edit list ends inside it; copied as it was, the output's audio ran 485 samples (11 ms)
    past the input's end (the ffmpeg program, 5.1, cuts it). Its duration now stops there."""
    src = _audio_cut_by_its_edit_list(tmp_path / "cut.mp4")
    assert _audio_end(src) == (22050, 1024)
    out = tmp_path / f"out{suffix}"
    _upscale(src, out)
    assert _audio_end(out) == (22050, 546)


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_flac_goes_into_mp4_with_either_encoder(tmp_path, encoder):
    """PyAV's muxer takes FLAC in MP4, so the trial let it through; the ffmpeg program of
    FFmpeg 5.1 still calls it experimental and failed at its header, after the first frame
    ('flac in MP4 support is experimental, add -strict -2'). Its muxer is told to take it."""
    src = tmp_path / "flac.mkv"
    _ffmpeg(*_SINE, "-map", "0", "-map", "1", *_X264, "-c:a", "flac", src)
    out = tmp_path / "out.mp4"
    _upscale(src, out, encoder)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert b.streams.audio[0].codec_context.name == "flac"
        got, had = ([(p.pts * p.time_base, bytes(p)) for p in c.demux(audio=0) if p.size]
                    for c in (b, a))
        assert [data for _, data in got] == [data for _, data in had]
        # Matroska keeps milliseconds, MP4 the samples: the times agree within one
        pairs = zip(got, had, strict=True)
        assert all(abs(t - u) <= Fraction(1, 1000) for (t, _), (u, _) in pairs)
