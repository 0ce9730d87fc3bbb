"""`vsr stream` to srt:// on 127.0.0.1, through the ffmpeg program (the PyAV wheel has no SRT).

The receiver is the ffmpeg program reading srt:// in the other role. Both roles of vsr are
tested: caller (the receiver listens first) with a paced UDP source and measured latency,
and listener (the receiver calls once vsr's ffmpeg has bound the port) with audio that must
arrive byte for byte. Skipped only when the system ffmpeg lacks the srt protocol.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import statistics
import subprocess
import time

import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    Lines,
    Receiver,
    _latency_report,
    check_audio_copied,
    free_port,
    make_ts,
    stream_live,
    wait_for,
)


def _ffmpeg_has_srt() -> bool:
    if shutil.which("ffmpeg") is None:
        return False
    out = subprocess.run(["ffmpeg", "-hide_banner", "-protocols"], capture_output=True,
                         text=True, timeout=30).stdout
    return "srt" in out.partition("Output:")[2].split()


pytestmark = pytest.mark.skipif(not _ffmpeg_has_srt(), reason="ffmpeg lacks the srt protocol")

FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-probesize", "32768",
          "-analyzeduration", "100000"]
COPY = ["-map", "0", "-c", "copy", "-copyts", "-f", "mpegts", "-flush_packets", "1"]


def udp_bound(port: int) -> bool:
    """Whether something on this machine has bound UDP ``port`` (an SRT listener has)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        if any(int(r.split()[1].rsplit(":", 1)[1], 16) == port for r in rows):
            return True
    return False


def wait_bound(port: int, proc: subprocess.Popen, err: Lines) -> None:
    wait_for(lambda: udp_bound(port) or None, proc, err, f"udp port {port} to be bound",
             timeout=90, period=0.05)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def test_srt_caller_upscales_live_udp_and_measures_latency():
    src, port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    recv = None
    try:
        # bufsize=0: a buffered pipe would hand the receiver 32 KB at a time, in bursts
        recv = subprocess.Popen([*FFMPEG, "-i", f"srt://127.0.0.1:{port}?mode=listener",
                                 *COPY, "pipe:1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)
        recv_err = Lines(recv.stderr)
        wait_bound(port, recv, recv_err)
        receiver = Receiver(recv.stdout)
        receiver.start()
        sender, final = stream_live(src, f"srt://127.0.0.1:{port}?mode=caller", receiver)
        assert recv.wait(timeout=30) == 0, "\n".join(recv_err.lines)
    finally:
        stop(recv)
    lat = _latency_report("srt", sender, receiver, final)
    assert statistics.median(lat) < 2000


def test_srt_listener_carries_video_and_audio(tmp_path):
    src, dst = tmp_path / "in.ts", tmp_path / "received.ts"
    make_ts(str(src), 40)
    port = free_port(socket.SOCK_DGRAM)
    recv = proc = None
    try:
        proc = subprocess.Popen([*VSR, str(src), f"srt://127.0.0.1:{port}?mode=listener",
                                 *BICUBIC, "--drop", "none", "--json"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        wait_bound(port, proc, err)  # vsr's ffmpeg listens: now call it
        recv = subprocess.run([*FFMPEG, "-i", f"srt://127.0.0.1:{port}?mode=caller", *COPY,
                               "-y", str(dst)], capture_output=True, timeout=60)
        assert recv.returncode == 0, recv.stderr.decode()
        assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
        out.join(timeout=5)
    finally:
        stop(proc)
    final = out.stats()[-1]
    video = check_audio_copied(str(src), str(dst))
    assert sorted(video) == list(range(40)) and final["frames_out"] == 40
    assert final["audio_out"] == final["audio_in"] > 0
    print(json.dumps({k: final[k] for k in ("frames_out", "audio_in", "audio_out",
                                            "latency_ms")}))


def test_ctrl_c_while_no_caller_takes_the_stream(tmp_path):
    """Nobody calls vsr's srt listener: once the pipe to ffmpeg is full, writes block; Ctrl-C
    must still end vsr (and its ffmpeg) at once."""
    src = tmp_path / "in.ts"
    make_ts(str(src), 600)
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen([*VSR, str(src), f"srt://127.0.0.1:{port}?mode=listener",
                             *BICUBIC, "--drop", "none", "--json", "--stats-interval", "0.2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        wait_bound(port, proc, err)
        deadline = time.monotonic() + 60
        seen, still = -1, 0.0
        # output lines stop: the write blocks (the first stats line may not even come out when
        # the pipe fills within the first stats interval)
        while still < 2.0 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = len(out.lines)
            still = still + 0.2 if now == seen else 0.0
            seen = now
        assert proc.poll() is None, "vsr ended although nobody took the stream"
        # while it blocks, vsr says so on stderr (after 5 s without data)
        while not any("taken no data" in line for line in err.lines) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any("taken no data" in line for line in err.lines), "\n".join(err.lines)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        assert proc.wait(timeout=10) == 0, "\n".join(err.lines)
        out.join(timeout=10)
        assert out.stats()[-1]["frames_out"] < 600, "the pipe never filled"
        print(f"stopped {time.monotonic() - t0:.2f} s after Ctrl-C")
    finally:
        stop(proc)
    time.sleep(0.2)
    assert not udp_bound(port)  # vsr's ffmpeg is gone too
