"""The input's alpha channel is carried: the colour through the model, the alpha plane resized.

Real files through real codecs (PyAV writes the inputs, PyAV reads the outputs back); tiny
frames and the small drn-t-x2-drc50 model keep each test fast.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from vsr.io.sink import EncodeConfig
from vsr.io.source import PyAVSource
from vsr.upscale import UpscaleConfig, upscale_file

MODEL = "drn-t-x2-drc50"  # x2
W, H = 64, 48


def _rgba(i: int = 0) -> np.ndarray:
    """(H, W, 4): a colour gradient; alpha 0 in the left quarter, 128 in the second, opaque
    in the right half."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgba = np.empty((H, W, 4), np.uint8)
    rgba[..., 0] = (xx * 4 + 9 * i) % 256
    rgba[..., 1] = yy * 5
    rgba[..., 2] = 200 - 10 * i
    rgba[..., 3] = np.where(xx < W // 4, 0, np.where(xx < W // 2, 128, 255))
    return rgba


def _png(path: Path, image: np.ndarray) -> Path:
    fmt = "rgba" if image.shape[2] == 4 else "rgb24"
    cc = av.CodecContext.create("png", "w")
    cc.width, cc.height, cc.pix_fmt = W, H, fmt
    frame = av.VideoFrame.from_ndarray(image, format=fmt)
    path.write_bytes(b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None)))
    return path


def _clip(path: Path, codec: str = "ffv1", pix_fmt: str = "yuva420p", frames: int = 4) -> Path:
    """A 64x48 clip with an alpha plane, a keyframe every 2 frames."""
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=25)
        st.width, st.height, st.pix_fmt = W, H, pix_fmt
        st.codec_context.gop_size = 2
        for i in range(frames):
            rgba = _rgba(i)
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)
            if "yuva" in pix_fmt:  # the alpha exactly (swscale's is off by one at 128)
                plane = frame.planes[3]
                dst = np.frombuffer(plane, np.uint8, count=H * plane.line_size)
                dst.reshape(H, plane.line_size)[:, :W] = rgba[..., 3]
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


def _decoded(path: Path) -> tuple[str, list[np.ndarray]]:
    """The video stream's pixel format and its frames as (H, W, 4) RGBA; VP8/VP9 through
    libvpx, whose decoder reads the alpha plane FFmpeg's own ignores."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        name = {"vp8": "libvpx", "vp9": "libvpx-vp9"}.get(s.codec_context.name)
        if name is not None:
            cc = av.CodecContext.create(name, "r")
            frames = [f for p in c.demux(s) for f in cc.decode(p if p.size else None)]
        else:
            frames = list(c.decode(s))
        return s.codec_context.pix_fmt, [f.to_ndarray(format="rgba") for f in frames]


def _check_alpha(rgba: np.ndarray, tolerance: int = 0) -> None:
    """The x2 output's alpha: transparent, half and opaque where the input was (away from the
    edges between them, where the bicubic resize blends)."""
    a = rgba[..., 3].astype(int)
    assert rgba.shape[:2] == (2 * H, 2 * W)
    assert np.abs(a[:, : 2 * W // 4 - 4] - 0).max() <= tolerance
    assert np.abs(a[:, 2 * W // 4 + 4: W - 4] - 128).max() <= tolerance
    assert np.abs(a[:, W + 4:] - 255).max() <= tolerance
    edge = a[H, W - 4: W + 4]  # the step from 128 to 255: softened (bicubic), not cut
    assert ((edge > 140) & (edge < 245)).any(), edge


def _alpha_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]


def test_an_rgba_png_is_written_as_rgba_with_its_alpha_upscaled(tmp_path, caplog):
    """The colour is the model's, bit for bit what the same picture without alpha gives; the
    alpha is resized: opaque stays 255, transparent 0. No warning."""
    rgba = _rgba()
    src, rgb_src = _png(tmp_path / "sprite.png", rgba), _png(tmp_path / "rgb.png", rgba[..., :3])
    with PyAVSource(src) as s:
        frame = next(s.frames())
        assert s.info.alpha and frame.alpha is not None and frame.alpha.dtype == np.uint8
        assert np.array_equal(frame.alpha, rgba[..., 3])
    with caplog.at_level(logging.WARNING):
        result = upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.png", model=MODEL))
        upscale_file(UpscaleConfig(input=rgb_src, output=tmp_path / "up-rgb.png", model=MODEL))
    assert _alpha_warnings(caplog) == []
    assert result.pix_fmt == "rgba"
    pix_fmt, [out] = _decoded(tmp_path / "up.png")
    _, [rgb_out] = _decoded(tmp_path / "up-rgb.png")
    assert pix_fmt == "rgba"
    _check_alpha(out)
    assert np.array_equal(out[..., :3], rgb_out[..., :3])


@pytest.mark.parametrize("suffix", [".webp", ".tif"])
def test_webp_and_tiff_pictures_keep_alpha_too(tmp_path, suffix):
    src = _png(tmp_path / "sprite.png", _rgba())
    upscale_file(UpscaleConfig(input=src, output=tmp_path / f"up{suffix}", model=MODEL))
    _, [out] = _decoded(tmp_path / f"up{suffix}")
    _check_alpha(out)


def test_an_alpha_free_input_hands_out_no_alpha(tmp_path):
    """Frames of an input without alpha are as before: colour only."""
    src = _png(tmp_path / "rgb.png", _rgba()[..., :3])
    with PyAVSource(src) as s:
        assert not s.info.alpha
        assert next(s.frames()).alpha is None


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_an_ffv1_yuva420p_clip_keeps_its_alpha(tmp_path, caplog, encoder):
    """FFV1 (yuva420p) in, FFV1 out: the encoder picks yuva420p, every frame has the alpha."""
    from vsr.io.ffmpeg_sink import ffmpeg_available

    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("no ffmpeg program")
    src = _clip(tmp_path / "overlay.mkv")
    out_path = tmp_path / "up.mkv"
    with caplog.at_level(logging.WARNING):
        result = upscale_file(UpscaleConfig(input=src, output=out_path, model=MODEL,
                                            encode=EncodeConfig(codec="ffv1"), encoder=encoder))
    assert _alpha_warnings(caplog) == []
    assert result.frames_out == 4 and result.pix_fmt == "yuva420p"
    pix_fmt, frames = _decoded(out_path)
    assert pix_fmt == "yuva420p" and len(frames) == 4
    for f in frames:  # the ffmpeg program's swscale puts 128 at 129 or 130
        _check_alpha(f, tolerance=0 if encoder == "pyav" else 2)


def test_a_vp9_webm_with_alpha_is_read_and_written_with_it(tmp_path):
    """VP9's alpha travels beside each frame in WebM; FFmpeg's VP9 decoder ignores it, so the
    source reads it with libvpx's. Written back as VP9 in WebM, it is kept (lossy: near)."""
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("no libvpx-vp9 in this PyAV")
    src = _clip(tmp_path / "overlay.webm", codec="libvpx-vp9")
    with PyAVSource(src) as s:
        assert s.info.alpha and s.info.pix_fmt == "yuva420p"
    upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.webm", model=MODEL,
                               encode=EncodeConfig(codec="libvpx-vp9")))
    _, frames = _decoded(tmp_path / "up.webm")
    assert len(frames) == 4
    for f in frames:
        _check_alpha(f, tolerance=4)


def test_an_output_that_cannot_hold_alpha_warns_and_names_codecs_that_can(tmp_path, caplog):
    """libx264 has no alpha: the output is RGB as before, and the warning says which codecs
    would keep the alpha. A --pix-fmt without alpha wins over the input's alpha."""
    src = _clip(tmp_path / "overlay.mkv")
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.mp4", model=MODEL,
                                   encode=EncodeConfig(codec="libx264")))
    [said] = _alpha_warnings(caplog)
    assert said.startswith("overlay.mkv has an alpha channel (yuva420p) that libx264 video "
                           "cannot hold: the colour is upscaled, the output has no alpha; ")
    assert "--codec ffv1" in said and "prores_ks" in said and ".png" in said
    assert _decoded(tmp_path / "up.mp4")[0] == "yuv420p"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.mkv", model=MODEL,
                                   encode=EncodeConfig(codec="ffv1", pix_fmt="yuv444p")))
    [said] = _alpha_warnings(caplog)
    assert "ffv1 video in pixel format yuv444p cannot hold" in said
    pix_fmt, frames = _decoded(tmp_path / "up.mkv")
    assert pix_fmt == "yuv444p" and (frames[0][..., 3] == 255).all()


def _gif(path: Path, transparent: bool) -> Path:
    """A 3-frame 64x48 GIF; colour 0 (the lower half) see-through if ``transparent``."""
    with av.open(str(path), "w") as out:
        st = out.add_stream("gif", rate=10)
        st.width, st.height, st.pix_fmt = W, H, "pal8"
        for i in range(3):
            frame = av.VideoFrame(W, H, "pal8")
            index = np.frombuffer(frame.planes[0], np.uint8)
            index[:] = 0
            index[: index.size // 2] = 1
            colours = np.frombuffer(frame.planes[1], np.uint32)  # 0xAARRGGBB
            colours[:] = 0xFF102030
            colours[1] = 0xFF00FF00 | (40 * i)
            if transparent:
                colours[0] = 0
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


def test_an_opaque_gif_is_not_said_to_have_alpha(tmp_path, caplog):
    """FFmpeg decodes every GIF as bgra: the alpha warning came for every GIF. It is judged
    by the first frame's pixels; a see-through GIF still has alpha."""
    opaque, clear = _gif(tmp_path / "opaque.gif", False), _gif(tmp_path / "clear.gif", True)
    with PyAVSource(opaque) as s:
        assert s.info.pix_fmt == "bgra" and not s.info.alpha
    with PyAVSource(clear) as s:
        assert s.info.alpha
    with caplog.at_level(logging.WARNING):
        upscale_file(UpscaleConfig(input=opaque, output=tmp_path / "up.mp4", model=MODEL))
    assert _alpha_warnings(caplog) == []


def _batch(*args: str) -> tuple[int, dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vsr", "batch", *args, "--json", "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    return r.returncode, json.loads(lines[-1]) if lines else {}, r.stderr


def test_batch_keeps_alpha_across_the_segment_join(tmp_path):
    """Segments are FFV1 in NUT, joined into the output: every frame keeps its alpha; VP9's
    segments are Matroska for a WebM output, which keeps its alpha too."""
    src = _clip(tmp_path / "overlay.mkv", frames=8)
    code, report, err = _batch(str(src), "-o", str(tmp_path / "out"), "--model", MODEL,
                               "--codec", "ffv1", "--segment-frames", "2")
    assert code == 0 and len(report["done"]) == 1, err
    assert "4 segments computed" in err, err
    assert "alpha" not in err, err
    pix_fmt, frames = _decoded(tmp_path / "out" / "overlay.mkv")
    assert pix_fmt == "yuva420p" and len(frames) == 8
    for f in frames:
        _check_alpha(f)
    if "libvpx-vp9" not in av.codecs_available:
        return
    # VP9's alpha goes beside each frame, which NUT drops: into a WebM output the segments
    # are Matroska, so it is kept, with upscale's timestamps
    code, report, err = _batch(str(src), "-o", str(tmp_path / "vp9"), "--model", MODEL,
                               "--codec", "libvpx-vp9", "--segment-frames", "2",
                               "--name", "{stem}.webm")
    assert code == 0 and len(report["done"]) == 1 and "4 segments computed" in err, err
    assert "alpha" not in err, err
    whole = tmp_path / "whole.webm"
    r = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(src), str(whole), "--model",
                        MODEL, "--codec", "libvpx-vp9"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    joined = tmp_path / "vp9" / "overlay.webm"
    for path in (joined, whole):
        pix_fmt, frames = _decoded(path)
        assert len(frames) == 8
        for f in frames:
            _check_alpha(f, tolerance=8)  # VP9 is lossy
    with av.open(str(joined)) as a, av.open(str(whole)) as b:
        assert [p.pts for p in a.demux(video=0) if p.size] == \
            [p.pts for p in b.demux(video=0) if p.size]


def test_libx265_prints_nothing_on_stderr(tmp_path, capfd):
    """x265 wrote its "x265 [info]" banner straight to stderr; the library never prints."""
    if "libx265" not in av.codecs_available:
        pytest.skip("no libx265 in this PyAV")
    # 6 frames: a clip of 1 or 2 fails now and then in libx265's mux ("Invalid argument"),
    # with or without this change
    src = _clip(tmp_path / "clip.mkv", pix_fmt="yuv420p", frames=6)
    capfd.readouterr()
    upscale_file(UpscaleConfig(input=src, output=tmp_path / "up.mkv", model=MODEL,
                               encode=EncodeConfig(codec="libx265")))
    err = capfd.readouterr().err
    assert "x265 [" not in err, err


def test_svt_av1_prints_nothing_on_stderr(tmp_path):
    """SVT-AV1 wrote about 20 "Svt[info]" lines to stderr at each encoder it opened (each
    batch segment); it reads SVT_LOG once per process, so this runs in a process of its own."""
    if "libsvtav1" not in av.codecs_available:
        pytest.skip("no SVT-AV1 in this PyAV")
    src = _clip(tmp_path / "clip.mkv", pix_fmt="yuv420p", frames=3)
    env = {k: v for k, v in os.environ.items() if k != "SVT_LOG"}
    run = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(src),
                          str(tmp_path / "up.mkv"), "--model", "bicubic", "--scale", "2",
                          "--codec", "libsvtav1", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Svt[" not in run.stderr, run.stderr


def test_a_y4m_output_fails_on_one_line_naming_the_output(tmp_path):
    """The y4m muxer takes raw pictures only: the error named the temporary file and showed
    FFmpeg's error number; `vsr batch` computed every segment before it (found by fuzzing),
    and now refuses before any."""
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    src = _clip(tmp_path / "clip.mkv", pix_fmt="yuv420p", frames=2)
    r = subprocess.run([sys.executable, "-m", "vsr", "upscale", str(src),
                        str(tmp_path / "out.y4m"), "--model", MODEL], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    said = ("the output format of out.y4m (yuv4mpegpipe) holds raw pictures only, not libx264 "
            "video: use --codec rawvideo, or a container that holds it (e.g. .mkv)")
    assert lines == [f"Error: {said}"], r.stderr
    assert "partial" not in r.stderr and not list(tmp_path.glob("*.y4m"))
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "b",
                                   template="out.y4m", devices=("cpu",),
                                   options=JobOptions(model="bicubic", scale=2)))
    [failed] = result.failed
    assert failed["error"] == said and result.segments_computed == 0


def test_a_cmyk_jpeg_has_no_alpha(tmp_path, caplog):
    """FFmpeg decodes a CMYK JPEG as gbrap: it was taken for a picture with alpha (a warning,
    and an RGBA PNG of opaque alpha). A JPEG holds none: RGB, the colours as Pillow makes
    them, no warning."""
    from PIL import Image

    src = tmp_path / "cmyk.jpg"
    rgb = Image.new("RGB", (32, 24), (200, 60, 30))
    rgb.convert("CMYK").save(src, quality=100)
    with PyAVSource(src) as s:
        assert not s.info.alpha
    caplog.set_level(logging.WARNING, logger="vsr")
    out = tmp_path / "up.png"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2))
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    with Image.open(out) as got, Image.open(src) as shown:
        assert got.mode == "RGB"
        want = np.asarray(shown.convert("RGB"), dtype=int).mean(axis=(0, 1))
        assert np.abs(np.asarray(got, dtype=int).mean(axis=(0, 1)) - want).max() < 3
