"""`vsr stream` against a hostile network, on 127.0.0.1 with real sockets and codecs: damaged
MPEG-TS (skipped, counted), a source that gains a stream, a clock that jumps hours with audio
on it, and tcp:// outputs nobody connects to, whose receiver stops reading or goes away."""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    H,
    Lines,
    Sender,
    W,
    connect_tcp,
    free_port,
    make_ts,
    read_stamp,
    stamped,
    wait_for,
)
from test_stream_hardening import error_line

from vsr.errors import ConfigError
from vsr.stream import StreamConfig


def ts(frames: int, audio: bool = True, shift_s: float = 0.0) -> bytes:
    """make_ts's stamped clip, its clock moved by ``shift_s`` (video and audio alike)."""
    buf, out = io.BytesIO(), io.BytesIO()
    make_ts(buf, frames, audio=audio)
    if not shift_s:
        return buf.getvalue()
    buf.seek(0)
    with av.open(buf, format="mpegts") as c, av.open(out, "w", format="mpegts") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in c.streams}
        for p in c.demux():
            if p.size:
                shift = round(Fraction(shift_s) / p.time_base)
                p.pts, p.dts = p.pts + shift, p.dts + shift
                p.stream = streams[p.stream_index]
                o.mux(p)
    return out.getvalue()


def stream_tcp(tmp_path, *chunks: bytes) -> tuple[subprocess.CompletedProcess, dict, str]:
    """`vsr stream` from a tcp listener sent ``chunks`` to a file; (result, final stats, out)."""
    port, dst = free_port(socket.SOCK_STREAM), str(tmp_path / "out.ts")
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", dst, *BICUBIC, "--drop",
                             "none", "--json"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = Lines(proc.stderr.buffer)
    with connect_tcp(port, proc, err) as conn:
        for chunk in chunks:
            conn.sendall(chunk)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    err.join(timeout=5)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, "\n".join(err.lines))
    assert "Traceback" not in result.stderr, result.stderr
    final = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return result, final, dst


def stamps(path: str) -> list[int]:
    with av.open(path) as c:
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_damaged_ts_packets_are_skipped_and_counted(tmp_path):
    data = bytearray(ts(60))
    rng = random.Random(7)
    at = len(data) // 2 // 188 * 188
    data[at:at + 20 * 188] = bytes(rng.getrandbits(8) for _ in range(20 * 188))
    junk = bytes(rng.getrandbits(8) for _ in range(5000))  # before and after the stream too
    result, final, dst = stream_tcp(tmp_path, junk, bytes(data), junk)
    assert result.returncode == 0, result.stderr
    assert final["corrupt"] >= 1 and "corrupt data skipped" in result.stderr
    got = stamps(dst)
    # what follows the damage decodes concealed (no keyframe comes to mend it) to the end
    assert 40 <= len(got) < 60 and got[:20] == list(range(20))


def test_a_packet_the_decoder_rejects_is_skipped_and_counted(tmp_path):
    from conftest import make_clip

    clip = make_clip(tmp_path / "mid.mp4", frames=200)
    data = bytearray(clip.read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    at = mdat + (len(data) - mdat) // 2 if moov < mdat else mdat + (moov - mdat) // 2
    data[at:at + 300] = b"\xff" * 300  # the decoder rejects the packet; the next ones decode
    bad = tmp_path / "mid_corrupt.mp4"
    bad.write_bytes(bytes(data))
    result = subprocess.run([*VSR, str(bad), str(tmp_path / "out.ts"), *BICUBIC, "--drop",
                             "none", "--json"], capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["corrupt"] == 1 and final["frames_out"] >= 190


def test_a_source_that_gains_a_stream_ends_cleanly(tmp_path):
    # video only, then the PMT gains an audio stream (an encoder adding audio); the end of
    # such an input made PyAV fail with an IndexError; 40 frames: past the probe at the open
    result, final, dst = stream_tcp(tmp_path, ts(40, audio=False), ts(20))
    assert result.returncode == 0, result.stderr
    assert final["error"] is None and final["frames_out"] == 60
    assert stamps(dst) == [*range(40), *range(20)]


def test_a_clock_that_jumps_hours_does_not_jump_the_output(tmp_path):
    first, second = ts(30), ts(30, shift_s=3 * 3600)
    result, final, dst = stream_tcp(tmp_path, first, second)
    assert result.returncode == 0, result.stderr
    with av.open(dst) as c:
        video = [f.pts for f in c.decode(video=0)]
    with av.open(dst) as c:
        audio = [p.dts for p in c.demux(c.streams.audio[0]) if p.size]
    # the second half follows the first, on both tracks: no gap of hours (nor any gap of
    # seconds), every audio packet out, all strictly increasing
    assert len(video) == 60 and (video[-1] - video[0]) / 90000 < 5
    assert final["audio_out"] == final["audio_in"] == len(audio)
    assert (audio[-1] - audio[0]) / 90000 < 5
    assert all(b > a for a, b in zip(video, video[1:], strict=False))
    assert all(b > a for a, b in zip(audio, audio[1:], strict=False))


class NoiseFeed(threading.Thread):
    """Sends frames of noise (large once coded losslessly: socket buffers fill fast) to a
    tcp source at 100 fps until stopped or the source goes."""

    def __init__(self, port: int, proc: subprocess.Popen, err: Lines) -> None:
        super().__init__(daemon=True)
        self.out = wait_for(lambda: Sender(f"tcp://127.0.0.1:{port}"), proc, err,
                            f"tcp port {port} to accept").out
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        stream, i = self.out.streams.video[0], 0
        with contextlib.suppress(OSError, av.error.FFmpegError):
            while not self.halt.wait(0.01):
                f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (H, W, 3), np.uint8),
                                               format="rgb24")
                f.pts, f.time_base = i * 3600, Fraction(1, 90000)
                for p in stream.encode(f):
                    self.out.mux(p)
                i += 1


@contextlib.contextmanager
def live_to_tcp_listener():
    """`vsr stream` of a live noise feed to a tcp listener; yields (proc, stderr, its port)."""
    src, dst = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{src}?listen=1",
                             f"tcp://127.0.0.1:{dst}?listen=1", *BICUBIC, "--crf", "0",
                             "--max-latency", "200"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    feed = NoiseFeed(src, proc, err)
    try:
        yield proc, err, dst
    finally:
        feed.halt.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.join(timeout=5)


def wait_line(proc: subprocess.Popen, err: Lines, text: str) -> None:
    wait_for(lambda: True if any(text in line for line in err.lines) else None, proc, err,
             repr(text), timeout=90)


@pytest.mark.parametrize("receiver", [pytest.param("never connects", marks=pytest.mark.slow),
                                      "never reads"])
def test_a_tcp_output_that_takes_no_data_is_reported_and_ctrl_c_ends_it(receiver):
    with live_to_tcp_listener() as (proc, err, dst), socket.socket() as client:
        if receiver == "never reads":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            wait_for(lambda: client.connect_ex(("127.0.0.1", dst)) == 0 or None, proc, err,
                     f"tcp port {dst} to accept")
            wait_line(proc, err, "has taken no data")
        else:
            wait_line(proc, err, "waits for a receiver")
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not end vsr:\n" + "\n".join(err.lines))
    assert code == 0, "\n".join(err.lines)
    assert not any("Traceback" in line or line.startswith("Error:") for line in err.lines)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_tcp_receiver_that_goes_away_ends_the_stream_with_one_line(how):
    with live_to_tcp_listener() as (proc, err, dst):
        client = wait_for(lambda: socket.create_connection(("127.0.0.1", dst)), proc, err,
                          f"tcp port {dst} to accept")
        got = 0
        while got < 50_000:
            got += len(client.recv(1 << 16))
        if how == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        code = proc.wait(timeout=60)
        err.join(timeout=5)
    line = error_line(subprocess.CompletedProcess(proc.args, code, "", "\n".join(err.lines)))
    assert f"writing tcp://127.0.0.1:{dst}?listen=1 failed" in line


def test_tcp_output_options_are_checked_when_the_config_is_built():
    StreamConfig(src="-", dst="tcp://127.0.0.1:9000?listen=1&listen_timeout=500&tcp_nodelay=1")
    with pytest.raises(ConfigError, match="'mss' is not supported"):
        StreamConfig(src="-", dst="tcp://127.0.0.1:9000?mss=1000")
    with pytest.raises(ConfigError, match="one client"):
        StreamConfig(src="-", dst="tcp://127.0.0.1:9000?listen=2")
    StreamConfig(src="-", dst="tcp://127.0.0.1:9000?mss=1000", via_ffmpeg=True)


def test_a_tcp_output_nobody_connects_to_within_listen_timeout_fails(tmp_path):
    src = tmp_path / "in.ts"
    src.write_bytes(ts(6))
    port = free_port(socket.SOCK_STREAM)
    result = subprocess.run([*VSR, str(src), f"tcp://127.0.0.1:{port}?listen=1&listen_timeout="
                             "1500", *BICUBIC, "--drop", "none"], capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert "nobody connected to the output" in error_line(result)



def _sized_ts(frames: int, w: int, h: int, start: int) -> bytes:
    """``frames`` flat frames of ``w`` x ``h``, each a level brighter (none a repeat), video
    only, from frame ``start`` on the clock."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.options = {"preset": "ultrafast"}
        for i in range(frames):
            level = 200 + (start + i) % 40  # each frame differs: none is a repeat
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), level, np.uint8), format="rgb24")
            f.pts, f.time_base = (start + i) * 3600, Fraction(1, 90000)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    return buf.getvalue()


def test_a_source_that_changes_size_goes_on_at_the_first_size(tmp_path):
    """A rendition switch (a wider, then a smaller picture): the stream goes on at its first
    size, the others scaled to fit with their aspect kept, on black; every frame out."""
    result, final, dst = stream_tcp(tmp_path, _sized_ts(20, 64, 48, 0),
                                    _sized_ts(20, 96, 48, 20), _sized_ts(20, 32, 24, 40))
    assert result.returncode == 0, result.stderr
    assert final["error"] is None and final["frames_out"] == 60
    assert result.stderr.count("changed size") == 2 and "to 96x48: scaled to 64x48" \
        in result.stderr
    with av.open(dst) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 60 and {f.shape for f in frames} == {(96, 128, 3)}
    wide = frames[30]  # 96x48 in 64x48: 64x32 in the middle, black bands above and below
    assert wide[:12].max() < 40 and wide[-12:].max() < 40 and wide[40:56].min() > 150
    assert frames[50][10:86, 10:118].min() > 150  # 32x24 scaled up to fill it


def test_frames_waiting_at_a_stop_under_drop_none_are_written(tmp_path):
    """Ctrl-C while read frames wait for a slow model, under --drop none: every frame read
    is written before the output closes (they were counted nowhere, then as dropped)."""
    port, dst = free_port(socket.SOCK_STREAM), str(tmp_path / "out.ts")
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", dst, "--device", "cpu",
                             "--drop", "none", "--deflicker", "0", "--json",
                             "--stats-interval", "0.2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    with connect_tcp(port, proc, err) as conn:
        conn.sendall(_sized_ts(120, 320, 240, 0))  # read at once, computed at a few a second
        wait_for(lambda: any(s["frames_out"] >= 2 for s in out.stats()) or None, proc, err,
                 "two frames out")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert final["final"] and final["frames_in"] == final["frames_out"] > 2, final
    assert final["dropped"] == final["left_at_stop"] == 0
    with av.open(dst) as c:
        assert sum(1 for _ in c.decode(video=0)) == final["frames_out"]


def _coded_ts(frames: int, codec: str, options: dict[str, str] | None = None) -> bytes:
    """``frames`` stamped frames (frame i at i/25 s) as MPEG-TS, video only, in ``codec``."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        v = out.add_stream(codec, rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.options = options or {}
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(stamped(i), format="rgb24")
            f.pts, f.time_base = i * 3600, Fraction(1, 90000)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    return buf.getvalue()


def _bound(port: int) -> bool | None:
    """True once something listens on UDP 127.0.0.1:``port`` (it cannot be bound again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return None


@pytest.mark.parametrize("clip", ["mpeg2", "interlaced"])
def test_a_udp_source_that_goes_silent_ends_with_every_frame_it_sent(tmp_path, clip):
    """A UDP source ends by going silent: FFmpeg's read timeout, not an end of file, after
    which PyAV sends the decoder no flush packet. The frames the decoder still held (MPEG-2
    holds one back) and the one the deinterlacer held (bwdif, one) were lost: 29 of 30."""
    data = (_coded_ts(30, "mpeg2video") if clip == "mpeg2" else
            _coded_ts(30, "libx264", {"preset": "ultrafast", "x264-params": "tff=1"}))
    port, dst = free_port(socket.SOCK_DGRAM), tmp_path / "out.mkv"
    proc = subprocess.Popen([*VSR[:-1], "-v", "stream", f"udp://127.0.0.1:{port}", str(dst),
                             *BICUBIC, "--drop", "none", "--json", "--timeout", "1",
                             "--codec", "ffv1"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        wait_for(lambda: _bound(port), proc, err, f"udp port {port} to be read")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(0, len(data), 1316):
                s.sendto(data[i:i + 1316], ("127.0.0.1", port))
                time.sleep(0.001)  # no overrun of the receiving socket
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.join(timeout=5)
    err.join(timeout=5)
    assert code == 0, "\n".join(err.lines)
    final = out.stats()[-1]
    assert final["error"] is None and final["frames_in"] == final["frames_out"] == 30, final
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 30
    if clip == "mpeg2":
        assert [read_stamp(f.to_ndarray(format="rgb24")) for f in frames] == list(range(30))
    else:
        assert "interlaced source (top field first): deinterlaced" in "\n".join(err.lines)
        pts = [f.pts for f in frames]
        assert pts == sorted(set(pts))
