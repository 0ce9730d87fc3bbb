"""`vsr stream` over real sockets on 127.0.0.1 (UDP and TCP MPEG-TS), a stdin->stdout pipe,
and a source that goes away and comes back. Frames carry their number in pixel blocks, so
the receiver can tell which frame arrived, when, and at what size."""

from __future__ import annotations

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
from fractions import Fraction

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


class Receiver(threading.Thread):
    """Decodes MPEG-TS from ``url``; records (arrival time, stamp, size, pts) per frame."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frames: list[tuple[float, int, tuple[int, int], float]] = []
        self.error: Exception | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        opts = {"analyzeduration": "500000"}
        if self.url.startswith("udp"):
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


def _latency_report(name: str, sender: Sender, receiver: Receiver, final: dict) -> list[float]:
    lat = [1000 * (t - sender.sent[k]) for t, k, _, _ in receiver.frames if k in sender.sent]
    print(f"{name}: sent {len(sender.sent)}, received {len(receiver.frames)}, end-to-end "
          f"latency median {statistics.median(lat):.0f} ms max {max(lat):.0f} ms; vsr: "
          f"in {final['frames_in']} out {final['frames_out']} dropped {final['dropped']} "
          f"latency {final['latency_ms']} ms")
    return lat


def test_udp_loopback_upscales_and_measures_latency():
    src, dst = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    receiver = Receiver(f"udp://127.0.0.1:{dst}")
    receiver.start()
    receiver.ready.wait()
    proc = subprocess.Popen([*VSR, f"udp://127.0.0.1:{src}", f"udp://127.0.0.1:{dst}",
                             *BICUBIC, "--timeout", "2", "--stats-interval", "1", "--json",
                             "--max-latency", "500"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    sender = Sender(f"udp://127.0.0.1:{src}?pkt_size=1316")
    n = 0
    deadline = time.monotonic() + 120
    while len(receiver.frames) < 10 and time.monotonic() < deadline and proc.poll() is None:
        sender.send(n, RATE // 5)  # until vsr is up and frames come back
        n += RATE // 5
    first_measured = n
    sender.send(n, 2 * RATE)  # two more seconds, all measured
    sender.close()
    assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    receiver.join(timeout=30)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert final["final"] and final["frames_out"] > 0
    assert {size for _, _, size, _ in receiver.frames} == {(2 * W, 2 * H)}
    got = [k for _, k, _, _ in receiver.frames]
    assert got == sorted(got) and len(set(got)) == len(got)  # stamps survive, in order
    assert sum(k >= first_measured for k in got) >= RATE  # most of the last 2 s arrived
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
    sender = _connect(f"tcp://127.0.0.1:{src}", proc)
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


def _connect(url: str, proc: subprocess.Popen) -> Sender:
    deadline = time.monotonic() + 120
    while True:
        try:
            return Sender(url)
        except (av.error.FFmpegError, OSError):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)


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


def test_source_that_disconnects_is_picked_up_again(tmp_path):
    src = free_port(socket.SOCK_STREAM)
    target = tmp_path / "out.ts"
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{src}?listen=1", str(target), *BICUBIC,
                             "--reconnect", "--drop", "none", "--json", "--stats-interval", "0.5"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    for _session in range(2):  # the second session restarts its own timestamps at 0
        sender = _connect(f"tcp://127.0.0.1:{src}", proc)
        sender.send(0, 20, paced=False)
        sender.close()
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            s["frames_out"] >= 40 for s in out.stats()):
        time.sleep(0.2)
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


def test_drop_queue_policies():
    stop = threading.Event()
    frame = LiveFrame(np.zeros((2, 2, 3), np.uint8), 0.0, time.monotonic(), None)
    q = DropQueue(2, "oldest", max_age=10.0)
    for _ in range(5):
        q.put(frame, stop)
    assert q.dropped == 3
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
