"""Media edge cases of real users' files: `vsr upscale` and the `vsr batch` join keep every
frame with its timestamp and every other stream, and what cannot be written is refused before
any work. Tiny clips made with PyAV, bicubic x2."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from conftest import make_clip, packets, video_pts_seconds

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
