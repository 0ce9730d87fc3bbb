"""`vsr stream` refuses what would destroy data and fails loudly: a DST that is a link to SRC,
an existing DST file without --overwrite (also one that appears while the stream waits for
its first frame), unknown container formats, and a source that breaks mid-stream (exit 1,
the output still closed cleanly). It does not break on what a live source does: video that
stalls while its audio goes on (bounded), a packet a decoder fails on with another error than
InvalidDataError, a clock that jumps back (no audio lost, the old clock's late audio on its
clock), bytes the demuxer cannot resynchronise on (EAGAIN: skipped; for ever: the source has
ended). A library caller's stats callback that raises stops the stream cleanly. Real files,
codecs, FIFOs and 127.0.0.1 sockets."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    H,
    Lines,
    W,
    connect_tcp,
    free_port,
    make_ts,
    read_stamp,
    stamped,
    wait_for,
)

from vsr.errors import ConfigError
from vsr.stream import StreamConfig


def run_vsr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*VSR, *args, *BICUBIC, "--drop", "none"], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one `Error:` line on stderr and no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamps(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_destination_that_links_to_the_source_is_refused(tmp_path, link, cli_error):
    src = tmp_path / "src.ts"
    make_ts(str(src), 12)
    before = digest(src)
    dst = tmp_path / "link.ts"
    (os.symlink if link == "symlink" else os.link)(src, dst)
    for extra in ((), ("--overwrite",)):  # --overwrite never lets it replace its own source
        line = cli_error("stream", str(src), str(dst), *extra, *BICUBIC)
        assert "source and destination are the same file" in line
        assert digest(src) == before
    # the same file under another spelling of its name (file: URL, a detour in the path)
    line = cli_error("stream", f"file:{src}", str(tmp_path / "." / "src.ts"), *BICUBIC)
    assert "same" in line and digest(src) == before


def test_an_existing_output_file_needs_overwrite(tmp_path, cli_error):
    src, dst = tmp_path / "in.ts", tmp_path / "keep.ts"
    make_ts(str(src), 6)
    dst.write_bytes(b"precious recording\n")
    assert "use --overwrite" in cli_error("stream", str(src), str(dst), *BICUBIC)
    assert dst.read_bytes() == b"precious recording\n"
    assert "output is a directory" in cli_error("stream", str(src), str(tmp_path), *BICUBIC)
    result = run_vsr(str(src), str(dst), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert stamps(dst) == list(range(6))
    # a FIFO that exists is no file to keep: written to without --overwrite
    fifo, got = tmp_path / "out.fifo", bytearray()
    os.mkfifo(fifo)

    def drain() -> None:
        with open(fifo, "rb") as f:
            got.extend(f.read())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    result = run_vsr(str(src), str(fifo), "--format", "mpegts")
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    (tmp_path / "got.ts").write_bytes(bytes(got))
    assert stamps(tmp_path / "got.ts") == list(range(6))


def test_an_output_file_that_appears_before_the_first_frame_is_kept(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    dst = tmp_path / "out.ts"
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", str(dst), *BICUBIC,
                             "--drop", "none"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    try:
        with connect_tcp(port, proc, err) as conn:
            dst.write_bytes(b"written meanwhile\n")  # after the start, before any frame
            make_ts(str(tmp_path / "in.ts"), 6)
            conn.sendall((tmp_path / "in.ts").read_bytes())
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.join(timeout=5)
    assert [line for line in err.lines if line.startswith("Error:")] == [
        f"Error: output exists (use --overwrite): {dst}"], "\n".join(err.lines)
    assert dst.read_bytes() == b"written meanwhile\n"


def test_unknown_container_formats_fail_when_the_config_is_built(tmp_path, cli_error):
    with pytest.raises(ConfigError, match="unknown input format 'bogus'"):
        StreamConfig(src="-", dst="-", input_format="bogus")
    with pytest.raises(ConfigError, match="did you mean nut"):
        StreamConfig(src="-", dst="-", output_format="nutt")
    with pytest.raises(ConfigError, match="'lavfi' is not an output format"):
        StreamConfig(src="-", dst="-", output_format="lavfi")
    StreamConfig(src="-", dst="-", input_format="mpegts", output_format="matroska")
    # the ffmpeg program muxes these, with muxers PyAV's build may lack: it judges the name
    StreamConfig(src="-", dst="-", output_format="only-ffmpeg-has-it", via_ffmpeg=True)
    StreamConfig(src="-", dst="srt://127.0.0.1:9000", output_format="only-ffmpeg-has-it")
    src, dst = tmp_path / "in.ts", tmp_path / "out.ts"
    make_ts(str(src), 6)
    for option in ("--input-format", "--format"):
        line = cli_error("stream", str(src), str(dst), option, "bogus", *BICUBIC)
        assert "format 'bogus'" in line
        assert not dst.exists()


def test_a_source_that_fails_midway_exits_1_with_the_output_closed(tmp_path):
    # a tcp source reset mid-stream (damaged data is no failure: tests/test_stream_network.py)
    port, dst = free_port(socket.SOCK_STREAM), tmp_path / "out.ts"
    src = tmp_path / "in.ts"
    make_ts(str(src), 200)
    data = src.read_bytes()
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", str(dst), *BICUBIC,
                             "--drop", "none"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    with connect_tcp(port, proc, err) as conn:
        conn.sendall(data[:len(data) // 2 // 188 * 188])
        wait_for(lambda: True if dst.exists() and dst.stat().st_size else None, proc, err,
                 "the first frames out")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    code = proc.wait(timeout=60)
    err.join(timeout=5)
    line = error_line(subprocess.CompletedProcess(proc.args, code, "", "\n".join(err.lines)))
    assert f"source tcp://127.0.0.1:{port}?listen=1" in line and "reset by peer" in line
    assert "Errno" not in line and line.count("tcp://") == 1, line
    with av.open(str(dst)) as c:  # closed cleanly: what was written before reads back
        frames = list(c.decode(video=0))
    assert 0 < len(frames) < 200 and frames[0].width == 2 * W
    assert f"closed with {len(frames)} frames" in line


def test_a_source_that_cannot_be_reached_says_why_in_plain_words(tmp_path, cli_error):
    """`Error: source tcp://...: [Errno 111] Connection refused: 'tcp://...'` (the URL twice),
    for a protocol this FFmpeg lacks `[Errno 1330794744] Protocol not found`, for a silent
    source FFmpeg's own "immediate exit requested"."""
    port, dst = free_port(socket.SOCK_STREAM), tmp_path / "out.ts"
    # nothing came in: no totals line before it (it named the error too)
    line = cli_error("stream", f"tcp://127.0.0.1:{port}", str(dst), *BICUBIC)
    assert line == f"Error: source tcp://127.0.0.1:{port}: connection refused"
    line = cli_error("stream", "nosuchproto://127.0.0.1:9", str(dst), *BICUBIC)
    assert "Errno" not in line, line
    # a UDP source nobody sends to: FFmpeg's read timeout said "immediate exit requested"
    udp = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    line = cli_error("stream", udp, str(dst), *BICUBIC, "--timeout", "0.5",
                     also=("    ",))  # a stats line every 2 s while it waits
    # the open waits at least 5 s for a first packet, and the line says the time it waited
    said = re.fullmatch(rf"Error: source {udp}: nothing received for (\d+\.\d) s", line)
    assert said and 5.0 <= float(said[1]) < 30, line
    assert not dst.exists()


def stalling_mkv(path: Path, frames: int, audio_s: float) -> tuple[list[bytes], int]:
    """Stamped video that stops after ``frames`` frames, and AAC (of noise: no two packets
    alike) that goes on for ``audio_s`` s, as Matroska (an MPEG-TS demuxer holds the last
    frame back until the next one starts). Returns the audio packets in file order and how
    many come before the last video packet."""
    with av.open(str(path), "w", format="matroska") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "mono"
        noise = np.random.default_rng(0).uniform(-0.2, 0.2, int(audio_s * 48000))
        for i, at in enumerate(range(0, len(noise) - 1023, 1024)):
            if i * 1024 * 25 // 48000 < frames and i % 2 == 0:  # a frame each 2 audio frames
                f = av.VideoFrame.from_ndarray(stamped(i // 2), format="rgb24")
                f.pts, f.time_base = i // 2 * 3600, Fraction(1, 90000)
                for p in v.encode(f):
                    out.mux(p)
            af = av.AudioFrame.from_ndarray(noise[None, at:at + 1024].astype(np.float32),
                                            format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, at, Fraction(1, 48000)
            for p in a.encode(af):
                out.mux(p)
        for s in (v, a):
            for p in s.encode(None):
                out.mux(p)
    with av.open(str(path)) as c:
        order = [(p.stream.type, bytes(p)) for p in c.demux() if p.size]
    last_video = max(i for i, (kind, _) in enumerate(order) if kind == "video")
    audio = [data for kind, data in order if kind == "audio"]
    return audio, sum(kind == "audio" for kind, _ in order[:last_video])


def audio_packets(source: Path | bytes) -> list[tuple[bytes, int]]:
    """(payload, dts) of the audio packets of a file or of MPEG-TS bytes."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as c:
        return [(bytes(p), p.dts) for p in c.demux(c.streams.audio[0]) if p.size]


# `vsr stream` with the audio bound (vsr.stream.audio.MAX_QUEUED) lowered to argv[1]
_BOUNDED = ("import sys; import vsr.stream.audio as a; a.MAX_QUEUED = int(sys.argv.pop(1)); "
            "from vsr.cli.main import main; main()")


def test_audio_while_the_video_stalls_stays_bounded(tmp_path):
    """Video that stops after 6 frames while the audio goes on for 10 s (~470 packets): the
    audio waiting for a frame to place it by stays within MAX_QUEUED packets (lowered to 40),
    the oldest dropped, counted as audio_skipped and warned of once; the newest go out."""
    src, dst, bound = tmp_path / "in.mkv", tmp_path / "out.mkv", 40
    sent, before = stalling_mkv(src, frames=6, audio_s=10)
    result = subprocess.run([sys.executable, "-c", _BOUNDED, str(bound), "stream", str(src),
                             str(dst), *BICUBIC, "--drop", "none", "--json"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("audio dropped for want of video") == 1, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["frames_out"] == 6 and final["error"] is None
    got = audio_packets(dst)
    assert all(b[1] > a[1] for a, b in zip(got, got[1:], strict=False))
    assert final["audio_in"] == len(sent) and final["audio_out"] == len(got)
    assert final["audio_out"] + final["audio_skipped"] == final["audio_in"]
    # those read while frames came all out; of the rest, the newest, as many as the bound
    # leaves beside those still queued for the writer (some of the first)
    tail = len(got) - before
    assert [p for p, _ in got[:before]] == sent[:before]
    assert bound - before <= tail <= bound and [p for p, _ in got[before:]] == sent[-tail:]


def mjpeg_mkv(path: Path, frames: int, damaged: int) -> None:
    """Stamped MJPEG in Matroska whose frame ``damaged`` declares 3x3 luma sampling: FFmpeg's
    decoder has no pixel format for that and fails with PATCHWELCOME, not INVALIDDATA (as
    fuzzing found of damaged MJPEG; HEVC and VP9 fail with EINVAL too)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        v = out.add_stream("mjpeg", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuvj420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(stamped(i), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    data = bytearray(buf.getvalue())
    # SOF0: FF C0, length (2), bits (1), height (2), width (2), components (1), then per
    # component its id and sampling factors: the luma's are 10 + 1 bytes after the marker
    sofs = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xc0"]
    assert len(sofs) == frames and data[sofs[damaged] + 11] == 0x22
    data[sofs[damaged] + 11] = 0x33
    path.write_bytes(bytes(data))


def test_a_packet_a_decoder_fails_on_with_another_error_is_skipped(tmp_path):
    """Not only InvalidDataError: a packet the decoder fails on with PatchWelcomeError is
    skipped and counted as corrupt, and the stream goes on (the input ended there)."""
    src, dst = tmp_path / "in.mkv", tmp_path / "out.ts"
    mjpeg_mkv(src, 30, damaged=10)
    with av.open(str(src)) as c, pytest.raises(av.error.PatchWelcomeError):
        for packet in c.demux(video=0):
            packet.decode()
    result = subprocess.run([*VSR, str(src), str(dst), *BICUBIC, "--drop", "none", "--json"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["error"] is None and final["corrupt"] == 1 and final["frames_out"] == 29
    assert "corrupt data skipped" in result.stderr
    assert stamps(dst) == [i for i in range(30) if i != 10]


@pytest.mark.parametrize("ahead_s", [5.0, 0.6])
def test_no_audio_is_lost_where_the_clock_jumps_back(tmp_path, ahead_s):
    """An encoder restarted on the same connection: its clock starts again at 0, less than
    JUMP_S back (6.2 s; 1.8 s: within the clip just sent). The new clock's audio read before
    its first frame waits for that frame and goes out after the audio out before; it was
    placed on the old clock and dropped as not monotonic (2 of 116 packets)."""
    from test_stream_network import stream_tcp, ts

    first, second = ts(30, shift_s=ahead_s), ts(30)  # 1.2 s each
    sent = audio_packets(first) + audio_packets(second)
    result, final, dst = stream_tcp(tmp_path, first, second)
    assert result.returncode == 0, result.stderr
    got = audio_packets(Path(dst))
    assert final["audio_skipped"] == 0
    assert final["audio_out"] == final["audio_in"] == len(got) == len(sent)
    assert [p for p, _ in got] == [p for p, _ in sent]  # byte for byte, in order
    assert all(b[1] > a[1] for a, b in zip(got, got[1:], strict=False))
    with av.open(dst) as c:
        video = [f.pts for f in c.decode(video=0)]
    assert len(video) == 60 and all(b > a for a, b in zip(video, video[1:], strict=False))
    assert (got[-1][1] - got[0][1]) / 90000 < 5 and (video[-1] - video[0]) / 90000 < 5


def test_the_total_line_gives_the_whole_runs_rates(tmp_path):
    """The final line's fps were those of the last stats interval only (`total: in 50 (0.0
    fps)` for a piped file); they are the whole run's, as its latency already was."""
    src, dst = tmp_path / "in.ts", tmp_path / "out.ts"
    make_ts(str(src), 40)
    result = subprocess.run([*VSR, str(src), str(dst), *BICUBIC, "--drop", "none", "--json",
                             "--stats-interval", "0.1"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(ln) for ln in result.stdout.strip().splitlines()]
    final = lines[-1]
    assert final["final"] and final["frames_in"] == final["frames_out"] == 40
    whole = 40 / final["elapsed_s"]
    assert abs(final["fps_in"] - whole) < 0.02 * whole + 0.01, (final, whole)
    assert abs(final["fps_out"] - whole) < 0.02 * whole + 0.01, (final, whole)


def test_a_silent_source_with_reconnect_says_so(tmp_path):
    """A UDP source that sends nothing, with --reconnect: each retry said `source unavailable
    ([Errno 1414092869] Immediate exit requested)`, FFmpeg's read timeout in its own words."""
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen([*VSR, f"udp://127.0.0.1:{port}", str(tmp_path / "out.ts"),
                             *BICUBIC, "--reconnect", "--timeout", "0.5"],
                            stderr=subprocess.PIPE, env=ENV)
    err = Lines(proc.stderr)
    try:
        wait_for(lambda: True if any("retrying" in ln for ln in list(err.lines)) else None,
                 proc, err, "a retry", timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    err.join(timeout=5)
    said = [ln for ln in err.lines if "retrying" in ln]
    assert all("no data from the source for 0.5 s" in ln for ln in said), said
    assert not any("Immediate exit" in ln for ln in err.lines), err.lines


def unsyncable(size: int, seed: int = 0) -> bytes:
    """Random bytes without an MPEG-TS sync byte (0x47): past resync_size (64 KiB) of them the
    demuxer says EAGAIN ('Resource temporarily unavailable') instead of giving a packet."""
    data = np.random.default_rng(seed).integers(0, 256, size, np.uint8)
    data[data == 0x47] = 0
    return data.tobytes()


def test_bytes_the_demuxer_cannot_resync_on_are_skipped(tmp_path):
    """200 KB of damage with no sync byte between two clips: the demuxer's EAGAIN (av's
    BlockingIOError, errno 11) ended the connection (exit 1 after 29 frames, 'Resource
    temporarily unavailable'); it is damaged data, skipped and counted, and the read goes on."""
    from test_stream_network import stream_tcp, ts

    result, final, dst = stream_tcp(tmp_path, ts(30), unsyncable(200_000), ts(30))
    assert result.returncode == 0, result.stderr
    assert final["error"] is None and final["corrupt"] >= 1 and final["frames_out"] == 60
    assert stamps(Path(dst)) == [*range(30), *range(30)]
    assert final["audio_out"] == final["audio_in"] and final["audio_skipped"] == 0


def _then_garbage(tmp_path, data: bytes) -> tuple[dict, Path]:
    """`vsr stream --timeout 1` from a tcp listener sent ``data``, then endless bytes with no
    sync byte, until vsr closes the connection; (final stats, output)."""
    port, dst = free_port(socket.SOCK_STREAM), tmp_path / "out.ts"
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", str(dst), *BICUBIC,
                             "--drop", "none", "--json", "--timeout", "1"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    junk = unsyncable(64 * 1024)
    with connect_tcp(port, proc, err) as conn:
        conn.sendall(data)
        start = time.monotonic()
        with contextlib.suppress(OSError):  # vsr closes the connection: the end of the test
            while proc.poll() is None and time.monotonic() - start < 60:
                conn.sendall(junk)
                time.sleep(0.02)
        code = proc.wait(timeout=60)
        took = time.monotonic() - start
    out.join(timeout=5)
    err.join(timeout=5)
    assert code == 0, "\n".join(err.lines)
    assert 1 <= took < 30, f"read garbage for {took:.0f} s"
    final = out.stats()[-1]
    # (not counted as corrupt over the network: the demuxer skips such bytes in one read,
    # which the read timeout ends; from a pipe they are, tests/test_stream_edge.py)
    assert final["error"] is None
    return final, dst


def test_a_source_that_sends_only_garbage_ends_after_the_timeout(tmp_path):
    """Frames, then endless bytes with no sync byte: no data for --timeout s (the source has
    ended, exit 0), not a failure at the demuxer's first EAGAIN, nor a read that goes on for
    as long as garbage comes."""
    from test_stream_network import ts

    final, dst = _then_garbage(tmp_path, ts(30))
    # every frame: also the last, which libavformat's H.264 parser holds until the next one
    # starts (tests/test_stream_edge.py)
    assert final["frames_out"] == 30
    assert stamps(dst) == list(range(30))


def test_a_source_that_ends_in_garbage_drains_its_decoder(tmp_path):
    """Ended by the read timeout in garbage: the frame MPEG-2's decoder held back was lost
    (28 of 30); it is drained as at an end of file, and the parser's last one comes out too."""
    from test_stream_network import _coded_ts

    final, dst = _then_garbage(tmp_path, _coded_ts(30, "mpeg2video"))
    assert final["frames_out"] == 30
    assert stamps(dst) == list(range(30))


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "ValueError",
                                    "KeyboardInterrupt at the end"])
def test_an_exception_in_the_stats_callback_stops_the_stream_cleanly(tmp_path, raised):
    """The caller's stats callback raising: a KeyboardInterrupt is Ctrl-C (a clean stop, the
    totals returned), also from the final report (there it escaped as itself); any other
    exception stops the stream cleanly too, then propagates (it aborted the output: VP9's
    encoder, which holds frames back, was not flushed, and the Matroska file had no frame).
    Clean: the frames in flight come out, and the encoder's: the output has every frame
    written, in order."""
    from vsr.io.sink import EncodeConfig
    from vsr.stream import run_stream

    src, dst = tmp_path / "in.ts", tmp_path / "out.mkv"
    make_ts(str(src), 40)
    config = StreamConfig(src=str(src), dst=str(dst), model="bicubic", scale=2, device="cpu",
                          drop="none", stats_interval_s=0.001,
                          encode=EncodeConfig(codec="libvpx-vp9"))  # lags: holds frames back
    seen: list = []

    def stats(s) -> None:
        seen.append(s)
        if s.final if raised.endswith("the end") else not s.final and s.frames_out >= 10:
            raise ValueError("the caller's bug") if raised == "ValueError" else KeyboardInterrupt

    if raised == "ValueError":
        with pytest.raises(ValueError, match="the caller's bug"):
            run_stream(config, stats=stats)
        written = seen[-1].frames_out  # at least: the stop writes those in flight too
    else:
        try:
            final = run_stream(config, stats=stats)
        except KeyboardInterrupt:  # would end pytest's run
            pytest.fail("the KeyboardInterrupt escaped run_stream")
        assert final.final and seen[-1] is final
        written = final.frames_out
        assert written == 40 if raised.endswith("the end") else written < 40
    assert written >= 10
    got = stamps(dst)
    assert got == list(range(len(got))) and len(got) >= written
    if raised != "ValueError":
        assert len(got) == written


def test_the_stats_callbacks_exception_survives_an_output_that_then_fails(tmp_path, caplog):
    """The stats callback raises, and the output (a FIFO whose reader went away meanwhile)
    then fails to close: the close's OutputError was raised and the caller's exception lost.
    The caller's exception propagates; the close's failure is logged and is its context."""
    from vsr.errors import OutputError
    from vsr.io.sink import EncodeConfig
    from vsr.stream import run_stream

    src, dst = tmp_path / "in.ts", tmp_path / "out.fifo"
    make_ts(str(src), 40, audio=False)  # ADTS AAC would need its config to go into Matroska
    os.mkfifo(dst)
    hang_up = threading.Event()

    def receive() -> None:  # reads the output until told to go away
        fd = os.open(dst, os.O_RDONLY)
        try:
            while not hang_up.is_set():
                if select.select([fd], [], [], 0.05)[0] and not os.read(fd, 1 << 16):
                    return
        finally:
            os.close(fd)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    config = StreamConfig(src=str(src), dst=str(dst), model="bicubic", scale=2, device="cpu",
                          drop="none", stats_interval_s=0.001, output_format="matroska",
                          encode=EncodeConfig(codec="libvpx-vp9"))  # holds frames back

    def stats(s) -> None:
        if s.frames_out >= 10:
            hang_up.set()  # the receiver goes away: what is still to write cannot be
            receiver.join(timeout=10)
            raise ValueError("the caller's bug")

    with pytest.raises(ValueError, match="the caller's bug") as raised:
        run_stream(config, stats=stats)
    assert isinstance(raised.value.__context__, OutputError), raised.value.__context__
    assert any("abandoned after the stats callback failed" in r.getMessage()
               for r in caplog.records)


def _ts_packets(data: bytes) -> list[bytearray]:
    return [bytearray(data[i:i + 188]) for i in range(0, len(data), 188)]


def _pid(p: bytearray) -> int:
    return ((p[1] & 0x1F) << 8) | p[2]


def _starts(p: bytearray) -> bool:  # payload_unit_start_indicator: a PES (or section) begins
    return bool(p[1] & 0x40)


def late_old_audio(first: bytes, second: bytes, audio_pid: int = 0x101,
                   video_pid: int = 0x100) -> bytes:
    """``first`` then ``second`` (MPEG-TS), with the last two audio PES of ``first`` moved into
    ``second`` after the start of its second video PES: the demuxer (the H.264 parser holds a
    frame until the next one starts) gives them after the last frame of ``first`` and before
    the first of ``second``, as an encoder restarted with its audio late does. Continuity
    counters renumbered: no damage."""
    a, b = _ts_packets(first), _ts_packets(second)
    audio_starts = [i for i, p in enumerate(a) if _pid(p) == audio_pid and _starts(p)]
    cut = audio_starts[-2]
    moved = [p for p in a[cut:] if _pid(p) == audio_pid]
    a = a[:cut] + [p for p in a[cut:] if _pid(p) != audio_pid]
    at = [i for i, p in enumerate(b) if _pid(p) == video_pid and _starts(p)][1] + 1
    out = a + b[:at] + moved + b[at:]
    counters: dict[int, int] = {}
    for p in out:
        if p[3] & 0x10:  # a payload: the continuity counter counts it
            cc = counters[_pid(p)] = (counters.get(_pid(p), -1) + 1) % 16
            p[3] = (p[3] & 0xF0) | cc
    return b"".join(bytes(p) for p in out)


@pytest.mark.parametrize("ahead_s", [5.0, 0.6])
def test_old_clock_audio_read_after_a_jump_back_stays_on_its_clock(tmp_path, ahead_s):
    """The clock jumps back (by 6.2 s; 1.8 s) and the old clock's last audio packets arrive
    after its last frame: they went out on the new clock, 6.2 s ahead, and the new clock's
    audio after them was dropped as not monotonic (56 of 116 packets skipped). They go out on
    their own clock, right after the audio before them, and the new clock's after them."""
    from test_stream_network import stream_tcp, ts

    first, second = ts(30, shift_s=ahead_s), ts(30)
    data = late_old_audio(first, second)
    with av.open(io.BytesIO(data)) as c:  # the order the reader sees
        order = [(p.stream.type, float(p.pts * p.time_base)) for p in c.demux() if p.size]
    video = [i for i, (kind, _) in enumerate(order) if kind == "video"]
    last_old, first_new = next((a, b) for a, b in zip(video, video[1:], strict=False)
                               if order[b][1] < order[a][1])  # where the clock jumps back
    assert [t for kind, t in order[last_old + 1:first_new] if t >= ahead_s + 1]  # old audio
    result, final, dst = stream_tcp(tmp_path, data)
    assert result.returncode == 0, result.stderr
    old, new = audio_packets(first), audio_packets(second)
    got = audio_packets(Path(dst))
    assert final["audio_skipped"] == 0 and final["corrupt"] == 0
    assert final["audio_out"] == final["audio_in"] == len(got) == len(old) + len(new)
    assert [p for p, _ in got] == [p for p, _ in old + new]  # byte for byte, each on its clock
    assert len({o[1] - i[1] for i, o in zip(old, got, strict=False)}) == 1  # one shift
    assert all(b[1] > a[1] for a, b in zip(got, got[1:], strict=False))
    assert (got[-1][1] - got[0][1]) / 90000 < 5


def test_a_port_out_of_range_and_closed_standard_streams_are_one_line(tmp_path):
    """udp://host:99999 went to port 34463 (FFmpeg takes it modulo 65536), exit 0; a closed
    stdin or stdout (`<&-`, `>&-`) was 'internal error: AttributeError: ... buffer'."""
    src = tmp_path / "in.ts"
    make_ts(str(src), 5, audio=False)
    for dst in ("udp://127.0.0.1:99999", "srt://127.0.0.1:70000"):
        assert error_line(run_vsr(str(src), dst)) == (
            f"Error: bad dst {dst}: Port out of range 0-65535")
    closed = [*VSR, *BICUBIC]
    out = subprocess.run([*closed, str(src), "-"], capture_output=False, stdout=None,
                         stderr=subprocess.PIPE, text=True, env=ENV, timeout=120,
                         preexec_fn=lambda: os.close(1))
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        "Error: standard output is closed: there is nowhere to write -"]
    out = subprocess.run([*closed, "-", str(tmp_path / "o.ts")], stderr=subprocess.PIPE,
                         text=True, env=ENV, timeout=120, preexec_fn=lambda: os.close(0))
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        "Error: standard input is closed: there is nothing to read as -"]
    assert not (tmp_path / "o.ts").exists()


def test_a_statistics_reader_that_goes_leaves_the_stream_going(tmp_path):
    """`vsr stream - out.ts --json | head -1`: the first write after head left raised
    BrokenPipeError, which click turned into a silent exit 1 mid-stream."""
    src = tmp_path / "in.ts"
    make_ts(str(src), 50, audio=False)
    data = src.read_bytes()
    out = tmp_path / "out.ts"
    proc = subprocess.Popen([*VSR, "-", str(out), *BICUBIC, "--drop", "none", "--json",
                             "--stats-interval", "0.2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        for k in range(10):  # two seconds of input
            proc.stdin.write(data[k * len(data) // 10:(k + 1) * len(data) // 10])
            proc.stdin.flush()
            if k == 0:
                json.loads(proc.stdout.readline())  # one statistics line, then the reader goes
                proc.stdout.close()
            time.sleep(0.2)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode()
    assert "the reader of the statistics has gone; the stream goes on" in stderr, stderr
    assert len(stamps(out)) == 50


def test_a_second_program_is_picked_as_a_file_would_be_and_keeps_every_frame(tmp_path):
    """A two-program MPEG-TS: the first video was upscaled, the other dropped without a
    word; and where the video upscaled is not stream 0, its last frames were lost (PyAV's
    flush packet at the end says stream_index 0: the decoder was never drained)."""
    src = tmp_path / "two.ts"
    lavfi = ("testsrc2=s=64x48:r=25:d=2", "sine=f=440:d=2", "testsrc=s=96x72:r=25:d=2",
             "sine=f=880:d=2")
    subprocess.run(["ffmpeg", "-v", "error", "-y",
                    *[a for spec in lavfi for a in ("-f", "lavfi", "-i", spec)],
                    *[a for k in range(4) for a in ("-map", str(k))], "-c:v", "libx264",
                    "-c:a", "aac", "-program", "title=P1:st=0:st=1", "-program",
                    "title=P2:st=2:st=3", str(src)], check=True)
    out = tmp_path / "out.ts"
    r = subprocess.run([*VSR, str(src), str(out), *BICUBIC, "--drop", "none"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "has 2 video streams (programs?): upscaling stream 2 (96x72)" in r.stderr
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, len(c.streams.audio)) == (192, 2)
        assert sum(1 for _ in c.decode(video=0)) == 50
