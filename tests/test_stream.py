"""`vsr stream` over real sockets on 127.0.0.1 (UDP and TCP MPEG-TS), a stdin->stdout pipe,
a source that goes away and comes back, and audio copied through (with and without dropped
frames). Frames carry their number in pixel blocks, so the receiver can tell which frame
arrived, when, and at what size."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TypeVar

import av
import numpy as np
import pytest

from vsr.errors import ConfigError
from vsr.stream import StreamConfig
from vsr.stream.io import DropQueue, LiveFrame

W, H, RATE = 64, 48, 25
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
VSR = [sys.executable, "-m", "vsr", "stream"]
BICUBIC = ["--model", "bicubic", "--scale", "2", "--device", "cpu"]
T = TypeVar("T")


def stamped(i: int) -> np.ndarray:
    """A 64x48 frame whose two top rows of 8x8 blocks spell ``i`` in 16 bits."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 3) % 256, (yy * 5) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
    for b in range(16):
        y, x = 8 * (b // 8), 8 * (b % 8)
        img[y:y + 8, x:x + 8] = 255 if (i >> b) & 1 else 0
    return img


def read_stamp(img: np.ndarray) -> int:
    k = img.shape[1] // W  # the frame may have been upscaled k times
    bits = [img[(8 * (b // 8) + 4) * k, (8 * (b % 8) + 4) * k].mean() > 128 for b in range(16)]
    return sum(1 << b for b, on in enumerate(bits) if on)


class Sender:
    """Encodes stamped frames as MPEG-TS into ``target`` in real time (unless paced=False)."""

    def __init__(self, target, **open_kw) -> None:
        self.out = av.open(target, "w", format="mpegts", **open_kw)
        s = self.out.add_stream("libx264", rate=RATE)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.options = {"tune": "zerolatency", "preset": "ultrafast"}
        s.codec_context.gop_size = 10
        self.out.start_encoding()  # connects now (a tcp:// output opens lazily)
        self.stream = s
        self.sent: dict[int, float] = {}

    def send(self, first: int, count: int, paced: bool = True) -> None:
        t0 = time.monotonic()
        for i in range(first, first + count):
            if paced:
                time.sleep(max(0.0, t0 + (i - first) / RATE - time.monotonic()))
            f = av.VideoFrame.from_ndarray(stamped(i), format="rgb24")
            f.pts, f.time_base = i * 3600, Fraction(1, 90000)
            self.sent[i] = time.monotonic()
            for p in self.stream.encode(f):
                self.out.mux(p)

    def close(self) -> None:
        for p in self.stream.encode(None):
            self.out.mux(p)
        self.out.close()


def make_ts(target, frames: int, audio: bool = True, audio_lag: bool = False) -> None:
    """Stamped 64x48 video (frame i at i/25 s) and a 48 kHz mono AAC track, as MPEG-TS;
    ``audio_lag``: the audio gathered into PES packets of up to 0.7 s, which come after the
    video of their time, as the ffmpeg program and broadcast muxers send them."""
    options = {"max_delay": "700000"} if audio_lag else {}
    with av.open(target, "w", format="mpegts", options=options) as out:
        v = out.add_stream("libx264", rate=RATE)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.options = {"preset": "ultrafast"}
        a = out.add_stream("aac", rate=48000) if audio else None
        if a is not None:
            a.layout = "mono"
        n = frames * 48000 // RATE
        tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / 48000)).astype(np.float32)
        sent = 0
        for i in range(frames):  # interleaved as a live encoder would send them
            f = av.VideoFrame.from_ndarray(stamped(i), format="rgb24")
            f.pts, f.time_base = i * 3600, Fraction(1, 90000)
            for p in v.encode(f):
                out.mux(p)
            while a is not None and sent < min(n, (i + 1) * 48000 // RATE):
                af = av.AudioFrame.from_ndarray(tone[None, sent:sent + 1024], format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = 48000, sent, Fraction(1, 48000)
                for p in a.encode(af):
                    out.mux(p)
                sent += 1024
        for s in (v, a) if a is not None else (v,):
            for p in s.encode(None):
                out.mux(p)


def demux_ts(source) -> tuple[list[tuple[bytes, int, int]], dict[int, int], tuple[int, int]]:
    """(audio packets as (payload, pts, dts), video pts by stamp (the last frame with that
    stamp), video size) of MPEG-TS."""
    with av.open(source, format="mpegts") as c:
        audio = [(bytes(p), p.pts, p.dts) for p in c.demux(c.streams.audio[0]) if p.size] \
            if c.streams.audio else []
    if hasattr(source, "seek"):
        source.seek(0)
    with av.open(source, format="mpegts") as c:
        frames = list(c.decode(video=0))
    video = {read_stamp(f.to_ndarray(format="rgb24")): f.pts for f in frames}
    return audio, video, (frames[0].width, frames[0].height)


def check_audio_copied(src, out, scale: int = 2) -> dict[int, int]:
    """The output's audio packets are the source's, byte for byte, strictly increasing, on
    the video's clock; its video is ``scale`` times larger. Returns video pts by stamp."""
    a_in, v_in, _ = demux_ts(src)
    a_out, v_out, size = demux_ts(out)
    assert size == (scale * W, scale * H)
    assert a_in and [p for p, _, _ in a_out] == [p for p, _, _ in a_in]
    dts = [d for _, _, d in a_out]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False))
    audio_shift = {o[1] - i[1] for i, o in zip(a_in, a_out, strict=True)}
    video_shift = {v_out[k] - v_in[k] for k in v_out}
    assert len(audio_shift) == 1 and audio_shift == video_shift, (audio_shift, video_shift)
    return v_out


class Receiver(threading.Thread):
    """Decodes MPEG-TS from ``url`` (or a pipe); records (arrival time, stamp, size, pts)
    per frame."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frames: list[tuple[float, int, tuple[int, int], float]] = []
        self.error: Exception | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        opts = {"analyzeduration": "500000"}
        if str(self.url).startswith("udp"):
            opts["overrun_nonfatal"] = "1"
        try:
            self.ready.set()
            with av.open(self.url, format="mpegts", options=opts, timeout=(90, 6)) as c:
                for f in c.decode(video=0):
                    img = f.to_ndarray(format="rgb24")
                    self.frames.append((time.monotonic(), read_stamp(img), (f.width, f.height),
                                        float(f.pts * f.time_base)))
        except (av.error.FFmpegError, OSError) as exc:
            self.error = exc


class Lines(threading.Thread):
    """Collects a pipe's lines without blocking the test."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []
        self.start()

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append(line.decode(errors="replace").rstrip())

    def stats(self) -> list[dict]:
        return [json.loads(ln) for ln in list(self.lines) if ln.startswith("{")]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_rtp_port() -> int:
    """An even UDP port free with the one after it: an RTP receiver binds both (RTP, RTCP),
    and failed to start where the second was taken (the suite's Ray left many in use)."""
    for _ in range(200):
        port = free_port(socket.SOCK_DGRAM) & ~1
        with contextlib.ExitStack() as held:
            try:
                for p in (port, port + 1):
                    s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free UDP ports in a row")


def wait_for(probe: Callable[[], T | None], proc: subprocess.Popen, err: Lines, what: str, *,
             timeout: float = 120, period: float = 0.2) -> T:
    """``probe()``'s first result that is not None, tried every ``period`` s while ``proc``
    starts up (an OSError or FFmpegError counts as None: nothing listens yet). Fails the test,
    with ``proc``'s stderr, if ``proc`` exits first, or if ``timeout`` s pass (saying ``what``
    it waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(av.error.FFmpegError, OSError):
            got = probe()
            if got is not None:
                return got
        assert proc.poll() is None, "\n".join(err.lines)
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(period)


@contextlib.contextmanager
def killed_at_exit(proc: subprocess.Popen):
    """``proc``, killed (and reaped) if it still runs when the block ends (a failed test)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def connect_tcp(port: int, proc: subprocess.Popen, err: Lines) -> socket.socket:
    """A TCP connection to ``proc`` listening on 127.0.0.1:``port``, once it does."""
    return wait_for(lambda: socket.create_connection(("127.0.0.1", port)), proc, err,
                    f"tcp port {port} to accept")


def _latency_report(name: str, sender: Sender, receiver: Receiver, final: dict) -> list[float]:
    lat = [1000 * (t - sender.sent[k]) for t, k, _, _ in receiver.frames if k in sender.sent]
    print(f"{name}: sent {len(sender.sent)}, received {len(receiver.frames)}, end-to-end "
          f"latency median {statistics.median(lat):.0f} ms max {max(lat):.0f} ms; vsr: "
          f"in {final['frames_in']} out {final['frames_out']} dropped {final['dropped']} "
          f"latency {final['latency_ms']} ms")
    return lat


def stream_live(src: int, dst: str, receiver: Receiver) -> tuple[Sender, dict]:
    """Sends stamped frames in real time to UDP port ``src``, `vsr stream` upscales them to
    ``dst``, until ``receiver`` sees frames come back; then two more seconds, all of which
    must mostly arrive, in order, at twice the size. Returns (sender, vsr's final stats)."""
    proc = subprocess.Popen([*VSR, f"udp://127.0.0.1:{src}", dst, *BICUBIC, "--timeout", "2",
                             "--stats-interval", "1", "--json", "--max-latency", "500"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        sender = Sender(f"udp://127.0.0.1:{src}?pkt_size=1316")
        n = 0
        deadline = time.monotonic() + 120
        while len(receiver.frames) < 10 and time.monotonic() < deadline and proc.poll() is None:
            sender.send(n, RATE // 5)  # until vsr (and whatever follows it) is up
            n += RATE // 5
        first_measured = n
        sender.send(n, 2 * RATE)  # two more seconds, all measured
        sender.close()
        assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    receiver.join(timeout=30)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert final["final"] and final["frames_out"] > 0
    assert {size for _, _, size, _ in receiver.frames} == {(2 * W, 2 * H)}
    got = [k for _, k, _, _ in receiver.frames]
    assert got == sorted(got) and len(set(got)) == len(got)  # stamps survive, in order
    assert sum(k >= first_measured for k in got) >= RATE  # most of the last 2 s arrived
    return sender, final


def test_udp_loopback_upscales_and_measures_latency():
    src, dst = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    receiver = Receiver(f"udp://127.0.0.1:{dst}")
    receiver.start()
    receiver.ready.wait()
    sender, final = stream_live(src, f"udp://127.0.0.1:{dst}", receiver)
    lat = _latency_report("udp", sender, receiver, final)
    assert statistics.median(lat) < 2000


def test_tcp_loopback_no_drops_and_monotonic_timestamps():
    src, dst = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    receiver = Receiver(f"tcp://127.0.0.1:{dst}?listen=1")
    receiver.start()
    receiver.ready.wait()
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{src}?listen=1", f"tcp://127.0.0.1:{dst}",
                             *BICUBIC, "--drop", "none", "--json", "--stats-interval", "1"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    sender = wait_for(lambda: Sender(f"tcp://127.0.0.1:{src}"), proc, err,
                      f"tcp port {src} to accept")
    sender.send(0, 2 * RATE)
    sender.close()
    assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    receiver.join(timeout=30)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert [k for _, k, _, _ in receiver.frames] == list(range(2 * RATE))
    assert {size for _, _, size, _ in receiver.frames} == {(2 * W, 2 * H)}
    pts = [p for _, _, _, p in receiver.frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert final["dropped"] == 0 and final["frames_out"] == 2 * RATE
    _latency_report("tcp", sender, receiver, final)


def test_stdin_to_stdout_pipe():
    buf = io.BytesIO()
    sender = Sender(buf)
    sender.send(0, 30, paced=False)
    sender.close()
    result = subprocess.run([*VSR, "-", "-", *BICUBIC, "--drop", "none"], input=buf.getvalue(),
                            capture_output=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    with av.open(io.BytesIO(result.stdout), format="mpegts") as c:
        frames = list(c.decode(video=0))
    assert [read_stamp(f.to_ndarray(format="rgb24")) for f in frames] == list(range(30))
    assert {(f.width, f.height) for f in frames} == {(2 * W, 2 * H)}
    print(result.stderr.decode().strip().splitlines()[-1])


def test_audio_is_copied_through_the_pipe():
    buf = io.BytesIO()
    make_ts(buf, 40)
    result = subprocess.run([*VSR, "-", "-", *BICUBIC, "--drop", "none", "--json"],
                            input=buf.getvalue(), capture_output=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    final = json.loads(result.stderr.decode().strip().splitlines()[-1])
    buf.seek(0)
    video = check_audio_copied(buf, io.BytesIO(result.stdout))
    assert sorted(video) == list(range(40)) and final["dropped"] == 0
    assert final["audio_out"] == final["audio_in"] > 0
    print({k: final[k] for k in ("frames_out", "audio_in", "audio_out", "latency_ms")})


def stream_file(tmp_path, frames: int, *options: str) -> tuple[str, str, str]:
    """`vsr stream` of a new stamped MPEG-TS file with audio to another file; returns (input,
    output, stdout)."""
    src, out = str(tmp_path / "in.ts"), str(tmp_path / "out.ts")
    make_ts(src, frames)
    result = subprocess.run([*VSR, src, out, *BICUBIC, *options], capture_output=True,
                            env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return src, out, result.stdout.decode()


def test_dropped_frames_keep_their_audio(tmp_path):
    # a file is read far faster than it is upscaled: with a 1 ms budget most frames go
    src, out, stdout = stream_file(tmp_path, 50, "--max-latency", "1", "--json")
    final = json.loads(stdout.strip().splitlines()[-1])
    assert final["dropped"] > 0 and final["frames_out"] + final["dropped"] == 50
    video = check_audio_copied(src, out)
    assert len(video) == final["frames_out"] and sorted(video) == list(video)
    assert final["audio_out"] == final["audio_in"] > 0
    print(f"frames out {final['frames_out']} dropped {final['dropped']}, audio packets "
          f"{final['audio_out']}/{final['audio_in']}")


def test_no_audio_option(tmp_path):
    _, out, _ = stream_file(tmp_path, 10, "--drop", "none", "--no-audio")
    with av.open(out) as c:
        assert not c.streams.audio and c.streams.video[0].width == 2 * W


def test_source_that_disconnects_is_picked_up_again(tmp_path):
    src = free_port(socket.SOCK_STREAM)
    target = tmp_path / "out.ts"
    buf = io.BytesIO()
    make_ts(buf, 20)  # each session restarts its own timestamps (video and audio) at 0
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{src}?listen=1", str(target), *BICUBIC,
                             "--reconnect", "--drop", "none", "--json", "--stats-interval", "0.5"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    for _session in range(2):
        with connect_tcp(src, proc, err) as conn:
            conn.sendall(buf.getvalue())
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            s["frames_out"] >= 40 for s in out.stats()):
        time.sleep(0.2)
    time.sleep(0.3)  # the last audio goes out at the close
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert final["final"] and final["reconnects"] >= 1 and final["frames_out"] == 40
    with av.open(str(target)) as c:
        frames = list(c.decode(video=0))
    assert [read_stamp(f.to_ndarray(format="rgb24")) for f in frames] == [*range(20)] * 2
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))  # monotonic across sessions
    a_in, _, _ = demux_ts(io.BytesIO(buf.getvalue()))
    a_out, _, _ = demux_ts(str(target))
    assert [p for p, _, _ in a_out] == [p for p, _, _ in a_in] * 2  # no audio lost either
    dts = [d for _, _, d in a_out]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False))
    # the second session's audio keeps its place next to its video
    n = len(a_in)
    assert a_out[n][1] - a_in[0][1] == pts[20] - pts[0]


def test_drop_queue_policies():
    stop = threading.Event()
    frame = LiveFrame(np.zeros((2, 2, 3), np.uint8), 0.0, time.monotonic(), None)
    q = DropQueue(2, "oldest", max_age=10.0)
    for _ in range(5):  # a burst of fresh frames: they wait, whatever their number
        q.put(frame, stop)
    assert q.dropped == 0 and all(q.get(stop) is frame for _ in range(5))
    q = DropQueue(2, "oldest", max_age=10.0, max_bytes=2 * frame.image.nbytes)
    for _ in range(5):  # ... within the memory bound: past it the oldest go, counted
        q.put(frame, stop)
    assert q.dropped == q.overflowed == 3
    stale = LiveFrame(frame.image, 0.0, time.monotonic() - 5, None)
    q = DropQueue(4, "oldest", max_age=1.0)
    q.put(stale, stop)
    q.put(frame, stop)
    assert q.get(stop) is frame and q.dropped == 1  # the stale one is skipped, counted
    q = DropQueue(1, "none", max_age=0.001)
    q.put(stale, stop)
    threading.Timer(0.3, lambda: q.get(stop)).start()
    t0 = time.monotonic()
    q.put(frame, stop)  # waits for room instead of dropping
    assert time.monotonic() - t0 > 0.2 and q.dropped == 0


def test_config_validation():
    with pytest.raises(ConfigError):
        StreamConfig(src="-", dst="-", drop="newest")
    with pytest.raises(ConfigError):
        StreamConfig(src="a.ts", dst="a.ts")


def test_a_write_blocked_on_a_full_pipe_is_reported_while_it_blocks(caplog):
    import logging

    from vsr.stream.io import _Flushed

    r, w = os.pipe()
    writer = os.fdopen(w, "wb")
    pipe = _Flushed(writer, warn_after=0.3)
    data = b"x" * (1 << 20)  # more than a pipe holds: the write blocks until someone reads
    caplog.set_level(logging.INFO, logger="vsr.stream.io")
    t = threading.Thread(target=pipe.write, args=(data,), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while "taken no data" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "taken no data" in caplog.text and t.is_alive()
        assert caplog.text.count("taken no data") == 1  # once per blocked write
        assert "takes data again" not in caplog.text
        with os.fdopen(r, "rb") as reader:  # the receiver comes back
            got = 0
            while got < len(data):
                got += len(reader.read1(1 << 16))
        t.join(timeout=5)
        assert not t.is_alive() and "takes data again" in caplog.text
    finally:
        pipe.stop()
        writer.close()


def test_stream_defaults_to_the_compressed_input_model():
    from vsr.models import DEFAULT_MODEL, REGISTRY, STREAM_MODEL
    from vsr.stream.run import StreamConfig, with_stream_model

    assert STREAM_MODEL in REGISTRY and STREAM_MODEL != DEFAULT_MODEL
    assert "x264" in REGISTRY.get(STREAM_MODEL).card["degradations"]
    assert with_stream_model(StreamConfig(src="-", dst="-")).model == STREAM_MODEL
    assert with_stream_model(StreamConfig(src="-", dst="-", scale=2)).model == STREAM_MODEL
    assert with_stream_model(StreamConfig(src="-", dst="-", model="drn-t-x2")).model == "drn-t-x2"
    assert with_stream_model(StreamConfig(src="-", dst="-", scale=4)).model is None


def test_stream_without_a_model_runs_the_compressed_input_model():
    buf = io.BytesIO()
    sender = Sender(buf)
    sender.send(0, 6, paced=False)
    sender.close()
    result = subprocess.run([*VSR, "-", "-", "--device", "cpu", "--drop", "none", "--json"],
                            input=buf.getvalue(), capture_output=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    final = json.loads(result.stderr.decode().strip().splitlines()[-1])
    assert final["final"] and final["frames_out"] == 6
    assert final["model"] == "drn-t-x2-drc50-x264"
    assert final["precision"] == "float32"  # 64x48 frames: too small for bf16 on any CPU


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_a_stream_cleanly(tmp_path, sig):
    src = free_port(socket.SOCK_STREAM)
    target = tmp_path / "out.ts"
    buf = io.BytesIO()
    make_ts(buf, 12)
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{src}?listen=1", str(target), *BICUBIC,
                             "--reconnect", "--drop", "none", "--json", "--stats-interval", "0.3"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    with connect_tcp(src, proc, err) as conn:
        conn.sendall(buf.getvalue())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(s["frames_out"] >= 12 for s in out.stats()):
        time.sleep(0.2)
    proc.send_signal(sig)  # the source waits to reconnect: only the signal ends the run
    assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    out.join(timeout=5)
    assert out.stats()[-1]["final"] and out.stats()[-1]["frames_out"] == 12
    with av.open(str(target)) as c:  # closed cleanly: every frame reads back
        assert [read_stamp(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)] == [
            *range(12)]
