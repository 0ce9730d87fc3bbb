import av
import numpy as np
import pytest
from conftest import packets, video_pts_seconds

from vsr.errors import OutputError
from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.sink import EncodeConfig, PyAVSink, VideoEncoder, choose_pix_fmt, rgb_frame
from vsr.io.source import PyAVSource
from vsr.upscale import UpscaleConfig, upscale_file


def _rich_clip(clip):
    return clip("rich.mkv", frames=8, pix_fmt="yuv420p10le", audio_tracks=2, subtitle=True,
                attachment=True, color={"colorspace": 1, "color_primaries": 1, "color_trc": 1,
                                        "color_range": 1})


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_matroska_all_tracks_10bit_colour(clip, tmp_path, encoder):
    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("ffmpeg program not installed")
    src = _rich_clip(clip)
    out = tmp_path / "out.mkv"
    r = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder=encoder))
    assert r.frames_in == r.frames_out == 8
    with av.open(str(out)) as c:
        kinds = [s.type for s in c.streams]
        assert kinds == ["video", "audio", "audio", "subtitle", "attachment"]
        v = c.streams.video[0].codec_context
        assert (v.width, v.height) == (128, 96)
        assert v.pix_fmt == "yuv420p10le"
        assert (v.colorspace, v.color_primaries, v.color_trc, v.color_range) == (1, 1, 1, 1)
        att = c.streams[4]
        assert bytes(att.data) == b"attached bytes"
        langs = [s.metadata.get("language") for s in c.streams.audio]
        assert langs == ["eng", "fra"]
    assert packets(out, "audio") == packets(src, "audio")
    assert packets(out, "subtitle") == packets(src, "subtitle")
    assert video_pts_seconds(out) == video_pts_seconds(src)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgb_frame_holds_the_exact_pixels(dtype):
    rng = np.random.default_rng(0)
    # 51 px wide rows are padded in the frame's buffer (line size > width * 3)
    img = rng.integers(0, np.iinfo(dtype).max, (37, 51, 3), dtype=dtype, endpoint=True)
    frame = rgb_frame(img)
    assert frame.format.name == ("rgb24" if dtype == np.uint8 else "rgb48le")
    assert frame.planes[0].line_size > 51 * 3 * img.itemsize
    assert np.array_equal(frame.to_ndarray(), img)
    view = img.transpose(1, 0, 2)  # not contiguous
    assert np.array_equal(rgb_frame(view).to_ndarray(), view)
    if dtype == np.uint16:  # big-endian input still lands as the frame's little-endian
        assert np.array_equal(rgb_frame(img.astype(">u2")).to_ndarray(), img)


def test_pix_fmt_choice():
    from fractions import Fraction

    from vsr.io.info import StreamInfo

    info = StreamInfo(path="x", container="mkv", index=0, codec="h264", width=2, height=2,
                      frame_rate=Fraction(25), time_base=Fraction(1, 25), start_pts=0, frames=1,
                      duration_s=None, pix_fmt="yuv420p10le", bit_depth=10)
    assert choose_pix_fmt("libx264", info, None) == "yuv420p10le"
    assert choose_pix_fmt("prores_ks", info, None) == "yuv422p10le"
    assert choose_pix_fmt("mpeg4", info, None) == "yuv420p"


def test_abort_leaves_nothing(clip, tmp_path):
    src = clip("a.mp4", frames=3)
    out = tmp_path / "o.mp4"
    info = PyAVSource(src).info
    with pytest.raises(RuntimeError), PyAVSink(out, info, 64, 48, EncodeConfig()) as sink:
        sink.write(np.zeros((48, 64, 3), np.uint8), 0)
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


@pytest.mark.parametrize("kind", ["pyav", "ffmpeg", "image"])
@pytest.mark.parametrize("bad", [(10, 10, 3, np.uint8), (96, 128, 4, np.uint8),
                                 (96, 128, 3, np.float32), (96, 128, 3, np.int16)])
def test_rejects_wrong_frames(clip, tmp_path, kind, bad):
    """Every sink takes (H, W, 3) uint8/uint16 of its size (RGBA only where it keeps an
    input's alpha): anything else is an OutputError, and nothing is left behind."""
    from vsr.io.ffmpeg_sink import FfmpegSink
    from vsr.io.image import ImageSink

    if kind == "ffmpeg" and not ffmpeg_available():
        pytest.skip("no ffmpeg program")
    info = PyAVSource(clip("a.mp4", frames=2)).info
    out = tmp_path / ("o.png" if kind == "image" else "o.mp4")
    open_sink = {"pyav": lambda: PyAVSink(out, info, 128, 96),
                 "ffmpeg": lambda: FfmpegSink(out, info, 128, 96),
                 "image": lambda: ImageSink(out, 128, 96)}[kind]
    *shape, dtype = bad
    with pytest.raises(OutputError, match="a frame must be"), open_sink() as sink:
        sink.write(np.zeros(shape, dtype), 0)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.mp4"]


def test_x264_output_of_a_tiny_video_is_the_same_every_run(clip, tmp_path):
    """x264's AVX-512 routines read memory they did not write on frames this small, so the same
    16x16 -> 32x32 upscale came out in 2-3 versions over 40 runs in one process (1 of 3 such
    checks); the sink leaves AVX-512 out (vsr.device.x264_asm_without_avx512)."""
    import hashlib
    import os

    from vsr.device import x264_asm_without_avx512

    src = clip("tiny.mp4", frames=8, size=(16, 16))
    with PyAVSource(src) as s:
        info = s.info
    with av.open(str(tmp_path / "probe.mp4"), "w") as out:  # the options the encoder opens with
        stream = out.add_stream("libx264", rate=25)
        VideoEncoder(stream, info, 32, 32, EncodeConfig())
        asm = x264_asm_without_avx512()
        assert stream.codec_context.options.get("x264-params") == (asm and f"asm={asm}")
    rng = np.random.default_rng(0)
    kept, seen = [], set()
    for i in range(40):
        kept.append(os.urandom(int(rng.integers(1000, 300_000))))  # other allocations between
        if len(kept) > 30:
            kept.pop(int(rng.integers(0, len(kept))))
        out = tmp_path / f"o{i}.mp4"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
        with PyAVSource(out) as s:
            seen.add(hashlib.md5(b"".join(f.image.tobytes() for f in s.frames())).hexdigest())
    assert len(seen) == 1


def test_ffmpeg_failure_names_the_reason_not_the_generic_closing_line(tmp_path):
    """ffmpeg ends a refused header with "Error initializing output stream 0:0 --", which was
    all the user saw; the line before it says what failed."""
    from vsr.io.ffmpeg_sink import _last_line

    with open(tmp_path / "log", "w+b") as log:
        log.write(b"[mp4 @ 0x55a755f95b80] Could not find tag for codec pcm_s16le in stream #1,"
                  b" codec not currently supported in container\n"
                  b"Could not write header for output file #0 (incorrect codec parameters ?):"
                  b" Invalid argument\nError initializing output stream 0:0 -- \n\n")
        assert _last_line(log) == ("Could not find tag for codec pcm_s16le in stream #1, codec "
                                   "not currently supported in container")
        log.seek(0)
        log.truncate()
        log.write(b"Error initializing output stream 0:0 --\n")
        assert _last_line(log) == "Error initializing output stream 0:0 --"


@pytest.mark.parametrize("encoder", ["pyav", pytest.param("ffmpeg", marks=pytest.mark.skipif(
    not ffmpeg_available(), reason="needs the ffmpeg program"))])
def test_an_odd_size_x264_cannot_code_in_420_is_refused_naming_it(clip, tmp_path, encoder):
    """63x47 upscaled x3 is 189x141, which 4:2:0 cannot halve: x264 said 'Generic error in an
    external library' (and x265 wrote its own lines to stderr first). One line names the size
    and what to change; in 4:4:4 the same run works."""
    src = clip("odd.mkv", size=(63, 47), pix_fmt="yuv444p", frames=3)
    out = tmp_path / "o.mp4"

    def run(pix_fmt: str):
        return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=3,
                                          encoder=encoder, encode=EncodeConfig(
                                              preset="ultrafast", pix_fmt=pix_fmt)))

    with pytest.raises(OutputError, match=r"libx264 cannot code a 189x141 picture in yuv420p, "
                                          r"whose colour planes are 1/2 as wide and 1/2 as high"):
        run("yuv420p")
    assert list(tmp_path.glob("*o.*")) == []
    assert run("yuv444p").frames_out == 3


def _slideshow(path, last_s: int):
    """Four pictures a second apart, the last shown ``last_s`` seconds (its packet's
    duration), as slideshow makers write them."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.options = {"preset": "ultrafast"}
        for k in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 * k, np.uint8),
                                               format="rgb24")
            frame.pts = k
            for pkt in s.encode(frame):
                pkt.duration = last_s if pkt.pts == 3 else 1
                out.mux(pkt)
        for pkt in s.encode(None):
            pkt.duration = last_s if pkt.pts == 3 else 1
            out.mux(pkt)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", "batch.mkv"])
def test_the_last_picture_keeps_its_time(tmp_path, suffix):
    """A slideshow's last picture shown 5 s came out shown one frame step (1 s): the file
    ended at 5 s instead of 8. Each packet now carries its frame's duration; the batch join,
    whose NUT segments keep none, gives the last one the time to the input's declared end."""
    src = _slideshow(tmp_path / "slides.mp4", 5)
    with av.open(str(src)) as c:
        assert float(c.duration / av.time_base) == 8.0
    if suffix.startswith("batch"):
        from vsr.jobs import BatchConfig, JobOptions, run_batch

        result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "out",
                                       template="{stem}.mkv", segment_frames=2, devices=("cpu",),
                                       options=JobOptions(model="bicubic", scale=2)))
        assert not result.failed, result.failed
        out = tmp_path / "out" / "slides.mkv"
    else:
        out = tmp_path / f"up{suffix}"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encode=EncodeConfig(preset="ultrafast")))
    assert video_pts_seconds(out) == video_pts_seconds(src)
    with av.open(str(out)) as c:
        assert abs(float(c.duration / av.time_base) - 8.0) < 0.01


def test_an_animated_gif_keeps_each_pictures_delay(tmp_path):
    """100/200/300/400 ms pictures came out 100/200/300/250: the last one's delay was lost."""
    from PIL import Image

    src = tmp_path / "anim.gif"
    pictures = [Image.new("RGB", (32, 24), (60 * k, 0, 0)) for k in range(4)]
    pictures[0].save(src, save_all=True, append_images=pictures[1:], duration=[100, 200, 300,
                                                                              400], loop=0)
    out = tmp_path / "up.gif"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                               encode=EncodeConfig(codec="gif")))
    delays = []
    with Image.open(out) as im:
        for k in range(im.n_frames):
            im.seek(k)
            delays.append(im.info["duration"])
    assert delays == [100, 200, 300, 400]


@pytest.mark.parametrize("name, codec", [("o.mpg", "mpeg2video"), ("o.mkv", "mpeg1video"),
                                         ("o.h264", "libx264"), ("o.hevc", "libx265")])
def test_frame_rate_timed_outputs_are_written_one_frame_a_tick(clip, tmp_path, name, codec):
    """MPEG-1/2 video takes only its standard frame rates as time base: it refused an MP4's
    1/1000 ('does not support 1000/1 fps') in every container. Raw streams keep no
    timestamps: a .h264 played at the time base's rate (1000 fps), 0.001 s for the clip."""
    src = clip("in.mp4", frames=6, size=(64, 48))
    out = tmp_path / name
    r = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encode=EncodeConfig(codec=codec)))
    assert r.frames_out == 6
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.framerate == 25  # H.264: its VUI timing
        assert sum(1 for _ in c.decode(video=0)) == 6


def test_a_retimed_last_picture_keeps_its_time(tmp_path):
    """A repeated pts is moved one tick on by the order; the duration stayed keyed by the old
    pts, so the last picture lost its 5 s (and the entry was never let go)."""
    src = _slideshow(tmp_path / "slides.mp4", 5)
    source = PyAVSource(src)
    frames = list(source.frames())
    tick = int(1 / source.info.time_base)  # one second in the input's time base
    assert [f.duration for f in frames] == [tick, tick, tick, 5 * tick]
    out = tmp_path / "o.mp4"  # its time base is the input's: the moved pts stays apart
    with PyAVSink(out, source.info, 64, 48, EncodeConfig(preset="ultrafast")) as sink:
        for f, pts in zip(frames, (0, tick, 2 * tick, 2 * tick), strict=True):
            sink.write(f.image, pts, f.duration)
    assert sink._held == {} and sink._durations == {}
    last = video_pts_seconds(out)[-1]
    with av.open(str(out)) as c:
        assert abs(float(c.duration / av.time_base) - (float(last) + 5)) < 0.01


def _probe_streams(path, entries: str) -> list[str]:
    import subprocess

    return subprocess.run(["ffprobe", "-v", "error", "-show_entries", entries, "-of",
                           "csv=p=0", str(path)], check=True, capture_output=True,
                          text=True).stdout.split()


@pytest.mark.skipif(not ffmpeg_available(), reason="no ffmpeg program")
def test_the_ffmpeg_encoder_keeps_dispositions_and_mpeg_ts_times(tmp_path):
    """`--encoder ffmpeg` marked a subtitle track the input left off as default (players then
    showed it), and moved every stream of a .ts output 1.4 s later (the ffmpeg program's mux
    delay); the PyAV encoder did neither."""
    import subprocess

    subs = tmp_path / "s.srt"
    subs.write_text("1\n00:00:00,200 --> 00:00:00,900\nHallo\n")
    mkv, ts = tmp_path / "two_subs.mkv", tmp_path / "in.ts"
    lavfi = ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi, "-i", subs, "-i", subs, "-map", "0",
                    "-map", "1", "-map", "2", "-c:v", "libx264", "-c:s", "copy",
                    "-disposition:s:0", "0", "-disposition:s:1", "forced", mkv], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi, "-f", "lavfi", "-i", "sine=d=1",
                    "-c:v", "libx264", "-c:a", "aac", ts], check=True)
    for src, entries in ((ts, "stream=start_time"), (mkv, "stream_disposition=default,forced")):
        out = tmp_path / f"up{src.suffix}"
        upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encoder="ffmpeg", encode=EncodeConfig(preset="ultrafast")))
        assert _probe_streams(out, entries) == _probe_streams(src, entries), entries
