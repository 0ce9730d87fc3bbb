"""Media edge cases of real users' files: `vsr upscale` and the `vsr batch` join keep every
frame with its timestamp and every other stream, and what cannot be written is refused before
any work. Tiny clips made with PyAV, bicubic x2."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import make_clip, packets, video_pts_seconds

from vsr.errors import InputError, OutputError
from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.info import EXACT_RGB
from vsr.io.sink import EncodeConfig
from vsr.io.source import PyAVSource, packet_pts
from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.upscale import UpscaleConfig, upscale_file

_OPTIONS = JobOptions(model="bicubic", scale=2, preset="ultrafast")


def _batch(src: Path, out: Path, segment_frames: int = 10, **options):
    return run_batch(BatchConfig(inputs=(str(src),), output_dir=out,
                                 segment_frames=segment_frames,
                                 options=_OPTIONS.replace(options), devices=("cpu",)))


def _upscale(src: Path, out: Path):
    return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                      encode=_OPTIONS.encode))


def _remux_at(src: Path, dst: Path, start: int) -> Path:
    """``src`` (an MPEG-TS) copied with every timestamp moved so that it starts at ``start``
    ticks of 1/90000 s, as `ffmpeg -output_ts_offset` does; the muxer writes them modulo 2^33."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format="mpegts") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        shift = start - min(s.start_time for s in i.streams)
        for pkt in i.demux():
            if pkt.dts is None and pkt.pts is None:
                continue
            pkt.pts = None if pkt.pts is None else pkt.pts + shift
            pkt.dts = None if pkt.dts is None else pkt.dts + shift
            pkt.stream = streams[pkt.stream.index]
            o.mux(pkt)
    return dst


def _restarting_ts(tmp_path: Path) -> Path:
    """Two MPEG-TS recordings of 10 frames each (10 fps, with AAC), dark then bright, put
    together with cat: the second one's clock starts where the first one's did."""
    parts = []
    for name, shade in (("a", "0x202020"), ("b", "0xe0e0e0")):
        parts.append(tmp_path / f"{name}.ts")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"color=c={shade}:s=64x48:r=10:d=1", "-f", "lavfi", "-i",
                        "sine=d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                        str(parts[-1])], check=True)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    return joined


@pytest.mark.skipif(not ffmpeg_available(), reason="needs the ffmpeg program")
@pytest.mark.parametrize("how", ["pyav", "ffmpeg", "batch"])
def test_a_joined_recording_whose_clock_restarts_is_refused_with_the_remedy(tmp_path, how):
    """Frames of a file whose clock restarts (pieces joined end to end) were sorted into each
    other by their times, dark and bright in turn, exit 0; now one error says so and how to
    make the times continuous, and no output is left. That remux then upscales in order."""
    src = _restarting_ts(tmp_path)
    out = tmp_path / "out" / "joined.mkv"
    out.parent.mkdir()
    said = "joined.ts: the video's timestamps jump back from"
    if how == "batch":
        result = _batch(src, out.parent, segment_frames=3)
        assert len(result.failed) == 1 and said in str(result.failed), result.failed
    else:
        with pytest.raises(InputError, match=said) as exc:
            upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                       encode=_OPTIONS.encode, encoder=how))
        assert "ffmpeg -i joined.ts -map 0 -c copy fixed.mkv" in str(exc.value)
    assert [p.name for p in out.parent.iterdir()] == ([".vsr-batch"] if how == "batch" else [])
    if how == "pyav":
        fixed = tmp_path / "fixed.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-map", "0", "-c", "copy",
                        str(fixed)], check=True)
        assert _upscale(fixed, out).frames_out == 20
        with av.open(str(out)) as c:
            shades = [int(f.to_ndarray(format="gray").mean()) for f in c.decode(video=0)]
        assert all(v < 100 for v in shades[:10]) and all(v > 150 for v in shades[10:]), shades


def test_mpeg_ts_whose_clock_wraps_batch_matches_upscale(tmp_path):
    """A broadcast recording whose 33-bit clock wraps one second in (started near 95443 s):
    FFmpeg reads the times before the wrap as negative, and NUT, the segments' container,
    refuses a negative pts, so every segmented batch of it failed ("writing seg-00000.nut
    failed: Invalid argument"); segments now hold the times shifted up, the join takes the
    shift off again."""
    plain = make_clip(tmp_path / "plain.ts", frames=40, audio_tracks=1,
                      time_base=Fraction(1, 90000), color={"gop_size": 10})
    (tmp_path / "in").mkdir()
    src = _remux_at(plain, tmp_path / "in" / "rec.ts", 2**33 - 90000)
    times = video_pts_seconds(src)
    assert len(times) == 40 and times[0] < 0 < times[-1]  # the wrap is inside the clip
    single = tmp_path / "single.ts"
    assert _upscale(src, single).frames_out == 40
    result = _batch(src, tmp_path / "out")
    assert not result.failed and result.segments_computed == 4
    joined = tmp_path / "out" / "rec.ts"
    assert video_pts_seconds(joined) == video_pts_seconds(single) == times
    assert packets(joined, "audio") == packets(single, "audio") == packets(src, "audio")


def _png(size: tuple[int, int] = (16, 12)) -> bytes:
    cc = av.CodecContext.create("png", "w")
    cc.width, cc.height, cc.pix_fmt = *size, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 200, np.uint8),
                                       format="rgb24")
    return b"".join(bytes(p) for p in [*cc.encode(frame), *cc.encode(None)])


def _with_cover(src: Path, dst: Path, picture: bytes) -> Path:
    """``src`` (Matroska) copied with a cover picture attached, as mkvmerge and FFmpeg
    attach one: FFmpeg reads an image attachment as a one-picture video stream."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        o.add_attachment(name="cover.png", mimetype="image/png", data=picture)
        for pkt in i.demux():
            if pkt.size:
                pkt.stream = streams[pkt.stream.index]
                o.mux(pkt)
    return dst


def _covers(path: Path) -> list[tuple[str, bytes]]:
    with av.open(str(path)) as c:
        pics = [s for s in c.streams.video
                if int(s.disposition) & int(av.stream.Disposition.attached_pic)]
        return [(s.metadata.get("filename"), bytes(next(c.demux(s)))) for s in pics]


def test_matroska_cover_art_is_carried_by_upscale_and_batch(tmp_path):
    """The Matroska muxer takes no picture stream, so the cover attachment FFmpeg reads as
    one was dropped with a warning (`not copying stream 2 (video, png)`), Matroska into
    Matroska too; it now goes on as an attachment again, by `vsr upscale` and the join."""
    plain = make_clip(tmp_path / "plain.mkv", frames=20, audio_tracks=1, color={"gop_size": 10})
    (tmp_path / "in").mkdir()
    picture = _png()
    src = _with_cover(plain, tmp_path / "in" / "film.mkv", picture)
    assert _covers(src) == [("cover.png", picture)]
    single = tmp_path / "single.mkv"
    result = _upscale(src, single)
    assert result.frames_out == 20 and result.copied_packets[2] == 1
    assert _covers(single) == [("cover.png", picture)]
    assert packets(single, "audio") == packets(src, "audio")
    batch = _batch(src, tmp_path / "out")
    assert not batch.failed and batch.segments_computed == 2
    joined = tmp_path / "out" / "film.mkv"
    assert _covers(joined) == [("cover.png", picture)]
    assert video_pts_seconds(joined) == video_pts_seconds(single)
    assert packets(joined, "audio") == packets(src, "audio")


def test_batch_refuses_a_codec_its_container_cannot_hold_before_any_segment(tmp_path):
    """`--codec ffv1` into a .mov: `vsr upscale` refuses it before any work, but `vsr batch`
    computed every segment and then failed at the join with `ValueError: 'mov' format does not
    support 'ffv1' codec`; it now fails the file plainly before the first segment."""
    (tmp_path / "in").mkdir()
    src = make_clip(tmp_path / "in" / "clip.mov", frames=20, color={"gop_size": 10})
    result = _batch(src, tmp_path / "out", codec="ffv1", preset=None)
    [failed] = result.failed
    assert failed["error"].startswith("the output format of clip.mov (mov) cannot hold ffv1")
    assert result.segments_computed == 0 and not (tmp_path / "out" / "clip.mov").exists()


@pytest.mark.parametrize("codec", ["libvpx-vp9", "ffv1", "prores_ks"])
@pytest.mark.parametrize("how", ["pyav", "ffmpeg", "batch"])
def test_mpeg_ts_refuses_a_codec_it_would_write_as_private_data(tmp_path, codec, how):
    """MPEG-TS takes any codec and writes one it has no stream type for as opaque private
    data: a .ts of VP9, FFV1 or ProRes read back as a 'bin_data' stream, no video, exit 0."""
    if how == "ffmpeg" and not ffmpeg_available():
        pytest.skip("no ffmpeg program")
    (tmp_path / "in").mkdir()
    src = make_clip(tmp_path / "in" / "clip.mp4", frames=4)
    out = tmp_path / "out" / "clip.ts"
    want = f"the output format of clip.ts (mpegts) cannot hold {codec} video"
    if how == "batch":
        result = run_batch(BatchConfig(inputs=(str(src),), output_dir=out.parent,
                                       template="{stem}.ts", devices=("cpu",),
                                       options=JobOptions(model="bicubic", scale=2,
                                                          codec=codec)))
        [failed] = result.failed
        assert failed["error"].startswith(want)
    else:
        out.parent.mkdir()
        with pytest.raises(OutputError, match=want.replace("(", r"\(").replace(")", r"\)")):
            upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                       encoder=how, encode=EncodeConfig(codec=codec)))
    assert not out.exists()
    ok = tmp_path / "ok.ts"  # and what it holds goes on being written
    upscale_file(UpscaleConfig(input=src, output=ok, model="bicubic", scale=2,
                               encode=EncodeConfig(codec="mpeg2video")))
    with av.open(str(ok)) as c:
        assert [s.type for s in c.streams] == ["video"]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def _testsrc(frames: int, size: str = "64x48") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25", "-frames:v", str(frames)]


def _probe(path: Path, entries: str, kind: str = "frame") -> list[str]:
    """ffprobe's values of ``entries`` (comma-separated) for the video stream's frames or
    (``kind`` "stream") the stream: one "a,b" row each."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0",
                          "-show_entries", f"{kind}={entries}", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)[f"{kind}s"]
    return [",".join(str(row.get(k, "N/A")) for k in entries.split(",")) for row in rows]


def _source_times(path: Path) -> list[Fraction]:
    with PyAVSource(path) as src:
        return [f.pts * src.info.time_base for f in src.frames()]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
@pytest.mark.parametrize("bframes", [0, 2])
def test_avi_frames_keep_their_times(tmp_path, codec, bframes):
    """AVI stores no pts, only each chunk's frame slot (its dts); PyAV's libavformat guesses
    a pts one frame late from it for H.264 and for MPEG-4 with B-frames, so every frame of
    such an AVI, vsr's own .avi outputs included, was read a frame late, without a word. The
    source now gives the k-th decoded frame the k-th slot: frame i at i/25 s, as ffprobe
    says where it can tell (its FFmpeg 5 guesses wrong with B-frames)."""
    src = tmp_path / "in.avi"
    _ffmpeg(*_testsrc(9), "-c:v", codec, "-bf", str(bframes), str(src))
    times = _source_times(src)
    assert times == [Fraction(i, 25) for i in range(9)]
    with PyAVSource(src) as part:  # a batch segment's frames: sought, then the same times
        assert [f.pts for f in part.frames_between(4, 8)] == [4, 5, 6, 7]
    with av.open(str(src)) as c:  # what a plan made from packets alone should count
        slots = sorted(packet_pts(c, p) for p in c.demux(video=0) if p.size)
    assert slots == list(range(9))
    if not bframes:
        assert [Fraction(t) for t in _probe(src, "best_effort_timestamp_time")] == times


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_upscale_to_avi_keeps_every_frame_time_and_rate(tmp_path, encoder):
    """Into .avi the encoder worked in the input's time base (1/16000 for an MP4): the AVI
    muxer then filled the ticks between frames with empty chunks and declared 600 fps and 192
    frames for 8, and vsr refused its own output as truncated ("decoded 8 of 192 frames").
    AVI output is now written one frame a tick; an AVI upscaled keeps every frame's time."""
    mp4 = make_clip(tmp_path / "in.mp4", frames=8, time_base=Fraction(1, 16000))
    avi = tmp_path / "in.avi"
    _ffmpeg(*_testsrc(8), "-c:v", "libx264", "-bf", "0", str(avi))
    for src in (mp4, avi):
        out = tmp_path / f"up-{src.suffix[1:]}-{encoder}.avi"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder, encode=_OPTIONS.encode))
        assert _probe(out, "avg_frame_rate,nb_frames", "stream") == ["25/1,8"]
        probed = [Fraction(t) for t in _probe(out, "best_effort_timestamp_time")]
        assert probed == _source_times(out) == _source_times(src) == [
            Fraction(i, 25) for i in range(8)]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_variable_rate_input_into_avi_keeps_every_frame_and_says_why_times_moved(
        tmp_path, caplog, encoder):
    """AVI has one frame a tick: frames of a variable-rate input closer than a tick move to
    the next one. Every frame is kept, and the warning says so (it blamed the input's
    timestamps for running backwards; through `--encoder ffmpeg`, ffmpeg moved them without
    a word)."""
    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("no ffmpeg program")
    src = tmp_path / "vfr.mp4"
    with av.open(str(src), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, step in enumerate((40, 5, 50, 5, 40, 5, 40, 40)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 30, np.uint8), "rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += step
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    out_avi = tmp_path / "up.avi"
    with caplog.at_level("WARNING", logger="vsr.io.sink"):
        upscale_file(UpscaleConfig(input=src, output=out_avi, model="bicubic", scale=2,
                                   encoder=encoder, encode=_OPTIONS.encode))
    assert len(_source_times(out_avi)) == 8
    said = [r.getMessage() for r in caplog.records]
    assert any("AVI holds one frame per tick" in m for m in said), said
    assert not any("ran backwards" in m for m in said), said


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_hevc_mp4_limited_range_without_colour_description_keeps_its_range(tmp_path,
                                                                           encoder):
    """An HEVC MP4 whose stream says limited (tv) range and nothing else came out of
    `vsr upscale` (libx264, MP4) with its range unspecified: x264 writes the range only
    beside a colour description. The MP4's 'colr' box now carries it."""
    src = tmp_path / "tv.mp4"
    _ffmpeg(*_testsrc(5), "-c:v", "libx265", "-x265-params", "log-level=error",
            "-pix_fmt", "yuv420p", "-color_range", "tv", str(src))
    assert _probe(src, "color_range,color_space", "stream") == ["tv,N/A"]
    out = tmp_path / f"up-{encoder}.mp4"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                               encoder=encoder, encode=_OPTIONS.encode))
    assert _probe(out, "codec_name,color_range,color_space", "stream") == ["h264,tv,N/A"]


def _gif(path: Path, frames: list[np.ndarray]) -> Path:
    """An animated GIF of palette pictures (H, W) of indices: 0 transparent, 1 red, 2 green."""
    palette = np.full(256, 0xFF000000, np.uint32)
    palette[:3] = (0x00000000, 0xFFFF0000, 0xFF00FF00)
    with av.open(str(path), "w") as out:
        st = out.add_stream("gif", rate=10)
        st.height, st.width = frames[0].shape
        st.pix_fmt = "pal8"
        for i, index in enumerate(frames):
            f = av.VideoFrame(st.width, st.height, "pal8")
            line = f.planes[0].line_size
            rows = np.frombuffer(f.planes[0], np.uint8, count=st.height * line)
            rows.reshape(st.height, line)[:, :st.width] = index
            np.frombuffer(f.planes[1], np.uint32, count=256)[:] = palette
            f.pts = i
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return path


def test_a_gif_opaque_at_first_and_see_through_later_keeps_its_alpha(tmp_path, caplog):
    """A GIF decodes as bgra, opaque or not, so its alpha was judged by the first frame
    only: one whose first frame is opaque and whose later ones show through came out without
    alpha and without a word. The later frames are now looked at (only where the GIF's blocks
    give a later picture a transparent colour); a GIF opaque throughout still has none."""
    opaque = np.ones((24, 32), np.uint8)
    hole = opaque.copy()
    hole[4:12, 4:12] = 0
    later = _gif(tmp_path / "later.gif", [opaque, hole, hole, hole])
    with av.open(str(later)) as c:
        decoded = [f.to_ndarray(format="rgba")[..., 3].min() for f in c.decode(video=0)]
    assert decoded[0] == 255 and min(decoded) == 0  # opaque first, see-through later
    with PyAVSource(later) as src:
        assert src.info.alpha
        assert [int(f.alpha.min()) for f in src.frames()] == decoded
    out = tmp_path / "up.mkv"
    upscale_file(UpscaleConfig(input=later, output=out, model="bicubic", scale=2,
                               encode=EncodeConfig(codec="ffv1")))
    with av.open(str(out)) as c:
        assert [f.to_ndarray(format="rgba")[..., 3].min() for f in c.decode(video=0)] == decoded
    assert not [r for r in caplog.records if "alpha" in r.getMessage()]
    plain = _gif(tmp_path / "plain.gif", [opaque, opaque * 2, opaque])
    with PyAVSource(plain) as src:
        assert not src.info.alpha and all(f.alpha is None for f in src.frames())


def _joined_ts(tmp_path: Path, second: list[str]) -> Path:
    """Two H.264 MPEG-TS parts cut together as a recorder or `cat` does: five 64x48 yuv420p
    frames, then five made with the ffmpeg arguments ``second`` (a second later)."""
    first, other, joined = tmp_path / "a.ts", tmp_path / "b.ts", tmp_path / "joined.ts"
    _ffmpeg(*_testsrc(5), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(first))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=rate=25:" + second[0], "-frames:v", "5",
            "-c:v", "libx264", *second[1:], "-output_ts_offset", "1", str(other))
    joined.write_bytes(first.read_bytes() + other.read_bytes())
    return joined


@pytest.mark.parametrize(("second", "change"), [
    (["size=80x48", "-pix_fmt", "yuv420p"], "its picture size from 64x48 to 80x48"),
    (["size=64x48", "-pix_fmt", "yuv420p10le"], "its pixel format from yuv420p to yuv420p10le"),
])
def test_a_size_or_depth_change_mid_file_is_one_input_error(tmp_path, second, change):
    """A file whose second part has another picture size failed with an OutputError about
    the sink's frame shape, and one whose second part is 10-bit was handed out and encoded at
    the first part's 8 bits without a word. Both are now one InputError naming the change
    and where it is; no output is left."""
    src = _joined_ts(tmp_path, second)
    out = tmp_path / "up.mkv"
    with pytest.raises(InputError) as err:
        _upscale(src, out)
    assert str(err.value) == (f"joined.ts changes {change} at 2.400s; vsr upscales one size "
                              "and format a file: cut it there and upscale each part")
    assert not out.exists()


def test_a_chroma_layout_change_mid_file_converts_each_frame_by_its_own(tmp_path):
    """yuv420p then yuv444p at the same depth: every frame comes out as RGB from its own
    format (as PyAV converts it), and all ten are upscaled."""
    src = _joined_ts(tmp_path, ["size=64x48", "-pix_fmt", "yuv444p"])
    with av.open(str(src)) as c:
        expected = [(f.format.name, f.to_ndarray(format="rgb24", interpolation=EXACT_RGB))
                    for f in c.decode(video=0)]
    assert [name for name, _ in expected] == ["yuv420p"] * 5 + ["yuv444p"] * 5
    with PyAVSource(src) as s:
        got = [f.image for f in s.frames()]
    assert len(got) == 10
    assert all(np.array_equal(a, b) for a, (_, b) in zip(got, expected, strict=True))
    assert _upscale(src, tmp_path / "up.mkv").frames_out == 10


_OPENED: list[str] | None = None  # while set, the paths Python opens (an audit hook)
_HOOKED: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None:
        _OPENED.append(str(args[0]))


@pytest.mark.parametrize("suffix", [".jpg", ".gif"])
def test_a_jpeg_or_gif_input_is_read_once_for_its_checks(tmp_path, suffix):
    """Before FFmpeg opens a picture, its header is read for the declared size and a JPEG's
    or GIF's blocks walked for a cut-off end: two opens of the file, one each. One now."""
    global _OPENED
    src = tmp_path / f"in{suffix}"
    _ffmpeg(*_testsrc(1), str(src))
    if not _HOOKED:
        sys.addaudithook(_audit)  # stays for the session; records only while _OPENED is set
        _HOOKED.append(True)
    _OPENED = []
    try:
        with PyAVSource(src) as s:
            assert s.info.width == 64
        opened = [p for p in _OPENED if p == str(src)]
    finally:
        _OPENED = None
    assert len(opened) == 1


def test_an_avi_with_dropped_frames_is_not_refused_as_truncated(tmp_path):
    """A capture AVI marks each dropped frame with an empty chunk; its frame count includes
    them, so one with 15 of 25 dropped was refused ("truncated or damaged: decoded 10 of 25
    frames"). An AVI is now judged by the time its slots span; one cut short still fails."""
    gaps = make_clip(tmp_path / "drops.avi", pts=[0, 1, 2, 3, 4, 20, 21, 22, 23, 24],
                     time_base=Fraction(1, 25))
    with av.open(str(gaps)) as c:
        assert c.streams.video[0].frames == 25
    assert _source_times(gaps) == [Fraction(p, 25) for p in (0, 1, 2, 3, 4, 20, 21, 22, 23, 24)]
    whole = tmp_path / "whole.avi"
    _ffmpeg(*_testsrc(100), "-c:v", "libx264", "-bf", "0", str(whole))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.avi is truncated or damaged"):
        _source_times(cut)


@pytest.mark.parametrize(("source", "suffix"), [("avi", ".mkv"), ("mp4", ".avi")])
def test_batch_joins_avi_input_and_output_with_every_frame_time(tmp_path, source, suffix):
    """`vsr batch` of an AVI (a time base of one frame) into Matroska failed at the join:
    'segments do not join: dts 41 after pts 2' (the join compared each packet with the last
    one's dts after the muxer had rescaled it to its own 1/1000). Into .avi, the join wrote
    an MP4's 1/16000 ticks (600 fps declared). Both now join, frame times as upscale's."""
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / f"clip.{source}"
    if source == "avi":
        _ffmpeg(*_testsrc(40), "-c:v", "libx264", "-g", "10", str(src))
    else:
        make_clip(src, frames=40, time_base=Fraction(1, 16000), color={"gop_size": 10})
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "out",
                                   options=_OPTIONS, segment_frames=10,
                                   template="{dir}/{stem}" + suffix, devices=("cpu",)))
    assert not result.failed and result.segments_computed >= 3, result
    out = tmp_path / "out" / f"clip{suffix}"
    assert _source_times(out) == _source_times(src) == [Fraction(i, 25) for i in range(40)]
    if suffix == ".avi":
        assert _probe(out, "avg_frame_rate,nb_frames", "stream") == ["25/1,40"]


def test_batch_of_an_xvid_avi_with_b_frames_is_one_task_with_every_frame(tmp_path):
    """An AVI of MPEG-4 Part 2 with B-frames (Xvid, DivX) failed in batch: 'segment 1:
    decoded 38 frames where the file has 40'. Its GOPs are open: started at a keyframe, the
    decoder loses the B-frames shown before it, and each later frame took the next AVI frame
    slot, two too early. Such a file is not cut; its frames are upscale's."""
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "xvid.avi"
    _ffmpeg(*_testsrc(40), "-c:v", "mpeg4", "-bf", "2", "-g", "10", "-q:v", "5", str(src))
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "out",
                                   options=_OPTIONS, segment_frames=10,
                                   template="{dir}/{stem}.mkv", devices=("cpu",)))
    assert not result.failed and result.segments_computed == 1, result
    single = tmp_path / "single.mkv"
    _upscale(src, single)
    assert _source_times(tmp_path / "out" / "xvid.mkv") == _source_times(single) == [
        Fraction(i, 25) for i in range(40)]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
@pytest.mark.parametrize("colour_range", ["pc", "tv"])
def test_grey_video_keeps_its_contrast_and_jpeg_yuv_its_matrix(tmp_path, colour_range, encoder):
    """Grey input was written as H.264 4:0:0 at full range, undeclared: FFmpeg decodes it as
    limited yuv420p, the contrast stretched (mean 64.9 -> 57.8). JPEG YUV (yuvj420p) lost its
    matrix: a BT.709 one came out untagged, coded in BT.601."""
    grey = tmp_path / "grey.mkv"  # a dark ramp, which upscaling keeps and a stretch does not
    _ffmpeg("-f", "lavfi", "-i", "nullsrc=size=64x48:rate=25,geq=lum='10+X*2':cb=128:cr=128",
            "-frames:v", "3", "-c:v", "ffv1", "-pix_fmt", "gray", "-color_range", colour_range,
            str(grey))
    jpeg = tmp_path / "j709.mp4"
    _ffmpeg(*_testsrc(3), "-c:v", "libx264", "-pix_fmt", "yuvj420p", "-colorspace", "bt709",
            "-color_primaries", "bt709", "-color_trc", "bt709", str(jpeg))
    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("no ffmpeg program")
    for src in (grey, jpeg):
        out = tmp_path / f"up_{src.stem}.mp4"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder, encode=_OPTIONS.encode))
        with PyAVSource(src) as a, PyAVSource(out) as b:
            before, after = next(a.frames()).image, next(b.frames()).image
            if src is jpeg:
                assert b.info.color.matrix == a.info.color.matrix == 1  # BT.709
        for k in range(3):  # the picture as bright in each colour (and the ramp as steep)
            assert abs(float(after[..., k].mean()) - float(before[..., k].mean())) < 2.5, k
            if src is grey:
                assert abs(float(after[..., k].std()) - float(before[..., k].std())) < 2.5, k


def test_batch_keeps_a_limited_range_without_colour_description_in_mp4(tmp_path):
    """As `vsr upscale` (above): the join now writes MP4's 'colr' box for the range."""
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "tv.mp4"
    _ffmpeg(*_testsrc(20), "-c:v", "libx265", "-x265-params", "log-level=error",
            "-pix_fmt", "yuv420p", "-color_range", "tv", str(src))
    result = _batch(src, tmp_path / "out")
    assert not result.failed, result
    assert _probe(tmp_path / "out" / "tv.mp4", "codec_name,color_range,color_space",
                  "stream") == ["h264,tv,N/A"]


def test_a_png_cut_inside_its_header_is_an_input_error(tmp_path):
    """A PNG cut to 16-23 bytes (inside its IHDR) was 'internal error: error: unpack requires
    a buffer of 8 bytes' from the size check that runs before FFmpeg opens it."""
    whole = tmp_path / "whole.png"
    _ffmpeg(*_testsrc(1), str(whole))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:20])
    with pytest.raises(InputError):
        _upscale(cut, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_libx265_on_tiny_pictures_is_one_error_not_a_crash(tmp_path):
    """PyAV's libx265 corrupts its heap on some pictures under 50x32 (34-48 wide, 16-30 high;
    five 40x28 frames of noise through PyAV aborted the process: 'corrupted size vs.
    prev_size', exit -6), and refuses those under 16 pixels a side. `vsr upscale --codec
    libx265` to such a size is one Error line, before any work, and nothing is written."""
    src = make_clip(tmp_path / "tiny.mkv", frames=3, size=(20, 14))
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(src), str(out / "up.mkv"),
                          "--model", "bicubic", "--scale", "2", "--codec", "libx265"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == ("Error: libx265 cannot encode a 40x28 picture here (PyAV's "
                                  "x265 fails, or aborts the process, on pictures under "
                                  "64x32); use another --codec, e.g. libx264"), run.stderr
    assert list(out.iterdir()) == []


def test_x265_degradation_of_small_clips_is_coded_not_crashed():
    """`--degrade bicubic,x265:crf=28` (eval and training) on small LR clips or crops: x265
    refused pictures under 16 pixels ('Invalid argument') and aborted the process on some
    under 50x32. Such clips are now coded inside padded frames and cropped back."""
    code = ("import numpy as np, torch\n"
            "from vsr.codecs import code_clip\n"
            "rng = np.random.default_rng(0)\n"
            "for h, w in ((28, 40), (8, 8), (31, 33), (5, 100)):\n"
            "    clip = torch.from_numpy(rng.integers(0, 256, (3, 3, h, w), dtype=np.uint8))\n"
            "    print(tuple(code_clip(clip, 'x265', 28, 'medium').shape))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[:4] == ["(3, 3, 28, 40)", "(3, 3, 8, 8)", "(3, 3, 31, 33)",
                                          "(3, 3, 5, 100)"]


@pytest.mark.parametrize("how", ["upscale", "batch"])
def test_of_several_video_streams_the_one_ffmpeg_picks_is_upscaled_and_said(tmp_path, caplog,
                                                                            how):
    """A 32x24 preview track before the 64x48 video, neither marked default: the first was
    upscaled and the video copied as it was, without a word. Now the largest is upscaled (a
    stream marked default first, as the ffmpeg program picks), the other is copied, and one
    warning says which."""
    src = tmp_path / "two.mkv"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-f", "lavfi", "-i",
            "testsrc=size=64x48:rate=25", "-frames:v", "6", "-map", "0", "-map", "1",
            "-c:v", "libx264", "-disposition:v:0", "0", "-disposition:v:1", "0", str(src))
    caplog.set_level(logging.WARNING)
    if how == "batch":
        assert not _batch(src, tmp_path / "out", segment_frames=2).failed
        out = tmp_path / "out" / "two.mkv"
    else:
        out = tmp_path / "up.mkv"
        _upscale(src, out)
    with av.open(str(out)) as c:
        assert [(s.codec_context.width, s.codec_context.height) for s in c.streams] == \
            [(32, 24), (128, 96)]
    said = [r.getMessage() for r in caplog.records if "video streams" in r.getMessage()]
    assert said == ["two.mkv has 2 video streams: upscaling stream 1 (64x48), the one the "
                    "ffmpeg program picks (by size, one marked default first), copying "
                    "stream 0"], said
    from vsr.io.source import open_source

    with pytest.raises(InputError, match="more than one video stream, and decord reads the "
                                         "one it picks; use --decoder pyav"):
        open_source(src, "decord")  # which may not be the one the others take
