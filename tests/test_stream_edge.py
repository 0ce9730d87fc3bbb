"""`vsr stream` at the edges of live sources and destinations: a source that goes on in bytes
that are no MPEG-TS after its last frame (TCP, UDP, stdin, a named pipe), a pipe read as its
data comes and one that goes silent, a clock that wraps soon after the start, RTMP and RTP
destinations, an output name with no format. Real sockets on 127.0.0.1, real pipes and
codecs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import threading
import time

import av
import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    H,
    Lines,
    W,
    check_audio_copied,
    connect_tcp,
    free_port,
    free_rtp_port,
    make_ts,
    wait_for,
)
from test_stream_hardening import error_line, stamps, unsyncable
from test_stream_network import _bound, stream_tcp, ts

from vsr.errors import ConfigError
from vsr.stream import StreamConfig

WRAP_S = 2**33 / 90000  # where an MPEG-TS clock wraps: 26.5 h
GARBAGE_S = 30  # the most a test sends garbage for: vsr ends the source after --timeout 1


def _vsr(src: str, dst, *extra: str, **popen) -> tuple[subprocess.Popen, Lines, Lines]:
    proc = subprocess.Popen([*VSR, src, str(dst), *BICUBIC, "--drop", "none", "--json",
                             "--timeout", "1", *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def _send_until_exit(proc: subprocess.Popen, send, data: bytes, junk: bytes) -> None:
    """``send(data)``, then ``send(junk)`` until ``proc`` exits (it stops reading)."""
    with contextlib.suppress(OSError):  # vsr closed its end: the source has ended
        send(data)
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < GARBAGE_S:
            send(junk)
            time.sleep(0.02)


def _tcp(tmp_path, data: bytes, junk: bytes):
    port = free_port(socket.SOCK_STREAM)
    proc, out, err = _vsr(f"tcp://127.0.0.1:{port}?listen=1", tmp_path / "out.ts")
    with connect_tcp(port, proc, err) as conn:
        _send_until_exit(proc, conn.sendall, data, junk)
        proc.wait(timeout=60)
    return proc, out, err


def _udp(tmp_path, data: bytes, junk: bytes):
    port = free_port(socket.SOCK_DGRAM)
    proc, out, err = _vsr(f"udp://127.0.0.1:{port}", tmp_path / "out.ts")
    wait_for(lambda: _bound(port), proc, err, f"udp port {port} to be read")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        def send(chunk: bytes) -> None:
            for i in range(0, len(chunk), 1316):
                s.sendto(chunk[i:i + 1316], ("127.0.0.1", port))
                time.sleep(0.001)  # no overrun of the receiving socket

        _send_until_exit(proc, send, data, junk[:1316 * 8])
    proc.wait(timeout=60)
    return proc, out, err


def _stdin(tmp_path, data: bytes, junk: bytes):
    proc, out, err = _vsr("-", tmp_path / "out.ts", stdin=subprocess.PIPE)

    def send(chunk: bytes) -> None:
        proc.stdin.write(chunk)
        proc.stdin.flush()

    _send_until_exit(proc, send, data, junk)
    proc.wait(timeout=60)
    with contextlib.suppress(OSError):
        proc.stdin.close()
    return proc, out, err


def _fifo(tmp_path, data: bytes, junk: bytes):
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    proc, out, err = _vsr(str(fifo), tmp_path / "out.ts")
    opened: list = []

    def open_fifo() -> None:  # blocks until vsr opens it for reading
        opened.append(open(fifo, "wb", buffering=0))  # noqa: SIM115

    threading.Thread(target=open_fifo, daemon=True).start()
    wait_for(lambda: opened[0] if opened else None, proc, err, "vsr to open the fifo")
    with opened[0] as pipe:
        _send_until_exit(proc, pipe.write, data, junk)
        proc.wait(timeout=60)
    return proc, out, err


# the reader's drain is one code path for all four: udp and stdin in the slow suite
@pytest.mark.parametrize("transport", ["tcp", pytest.param("udp", marks=pytest.mark.slow),
                                       pytest.param("stdin", marks=pytest.mark.slow), "fifo"])
def test_a_source_that_goes_on_in_garbage_keeps_its_last_frame(tmp_path, transport):
    """30 frames, then bytes with no MPEG-TS sync byte for as long as vsr reads: the source
    ends after --timeout (exit 0). libavformat's H.264 parser holds the last frame until the
    next one starts, and flushes it at a read error or the end of the input, never at the
    demuxer's "try again" (EAGAIN) that such bytes give every 64 KiB: frame 29 was lost,
    without a word (29 of 30 written, 'frames_in' 29 too)."""
    send = {"tcp": _tcp, "udp": _udp, "stdin": _stdin, "fifo": _fifo}[transport]
    proc, out, err = send(tmp_path, ts(30), unsyncable(64 * 1024))
    out.join(timeout=5)
    err.join(timeout=5)
    assert proc.returncode == 0, "\n".join(err.lines)
    final = out.stats()[-1]
    assert final["error"] is None, final
    assert final["frames_in"] == final["frames_out"] == 30, final
    assert stamps(tmp_path / "out.ts") == list(range(30))
    assert final["audio_out"] == final["audio_in"] > 0
    if transport in ("stdin", "fifo"):  # the demuxer's EAGAIN: counted (over the network it
        assert final["corrupt"] >= 1  # skips such bytes in one read, and says nothing)


def test_a_live_pipe_is_read_as_its_data_comes(tmp_path):
    """stdin that stays open after 60 frames (a live producer between two bursts): every
    frame read so far goes out now, not once 32 KiB more have come. PyAV's reads of a
    Python file ask for its whole buffer, and stdin's read(n) waited for all n bytes: 30 of
    the 60 frames went out (1.2 s of video held back, for as long as the producer paused)."""
    proc, out, err = _vsr("-", tmp_path / "out.ts", "--stats-interval", "0.2", "--timeout",
                          "60", stdin=subprocess.PIPE)  # (the pipe does not count as silent)
    try:
        proc.stdin.write(ts(60))
        proc.stdin.flush()
        # the last two stay in the demuxer and the parser until the next frame starts
        wait_for(lambda: True if (s := out.stats()) and s[-1]["frames_out"] >= 58 else None,
                 proc, err, "58 of the 60 frames sent to go out", timeout=30)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.join(timeout=5)
    assert out.stats()[-1]["frames_out"] == 60
    assert stamps(tmp_path / "out.ts") == list(range(60))


def test_a_source_whose_clock_wraps_soon_after_it_starts(tmp_path):
    """A broadcast joined 2 s before its MPEG-TS clock wraps (33 bits of 90 kHz: every
    26.5 h): libavformat gives the frames before the wrap negative times, and the output,
    whose times never go back, had those 50 frames one 90 kHz tick apart: 4 s of video in
    2 s, the first 2 s in a burst, the audio 2 s off the video."""
    clip = ts(100, shift_s=WRAP_S - 2.0)
    result, final, dst = stream_tcp(tmp_path, clip)
    assert result.returncode == 0, result.stderr
    assert final["frames_out"] == 100 and final["audio_out"] == final["audio_in"] > 0
    assert stamps(dst) == list(range(100))
    with av.open(dst) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert {b - a for a, b in zip(pts, pts[1:], strict=False)} == {90000 // 25}
    check_audio_copied(io.BytesIO(clip), dst)  # on the video's clock, every packet


class _Receiver(threading.Thread):
    """Reads ``url`` as a receiver would (PyAV: an RTMP server with listen=1, an RTP port);
    counts the video frames (by size) and the audio frames it decodes."""

    def __init__(self, url: str, options: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.options = url, options
        self.video: list[tuple[int, int]] = []
        self.audio = 0

    def run(self) -> None:
        # the end of the stream is an error for some (RTMP: EIO when the sender goes)
        with contextlib.suppress(av.error.FFmpegError, OSError), \
                av.open(self.url, options=self.options, timeout=(60, 3)) as c:
            for packet in c.demux():
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        self.video.append((frame.width, frame.height))
                    else:
                        self.audio += 1


def _listening(port: int, kind: int) -> bool:
    """Whether something has bound 127.0.0.1:``port`` (it cannot be bound again)."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.mark.parametrize("scheme", ["rtmp", "rtp"])
def test_rtmp_and_rtp_outputs_are_what_their_receivers_read(tmp_path, scheme):
    """`vsr stream SRC rtmp://...` (or rtp://) muxed bare MPEG-TS into the protocol, which
    carries FLV (RTP packets): it exited 0 with every frame 'out', and the receiver (an RTMP
    server, an RTP port) could not read one ('Input/output error', 'Invalid data found')."""
    make_ts(str(tmp_path / "src.ts"), 50)
    kind = socket.SOCK_STREAM if scheme == "rtmp" else socket.SOCK_DGRAM
    port = free_port(kind) if scheme == "rtmp" else free_rtp_port()
    url = f"rtmp://127.0.0.1:{port}/live/key" if scheme == "rtmp" else f"rtp://127.0.0.1:{port}"
    receiver = _Receiver(url, {"listen": "1"} if scheme == "rtmp" else {})
    receiver.start()
    deadline = time.monotonic() + 30
    while not _listening(port, kind):
        assert time.monotonic() < deadline, f"the {scheme} receiver did not start"
        time.sleep(0.05)
    result = subprocess.run([*VSR, str(tmp_path / "src.ts"), url, *BICUBIC, "--drop", "none",
                             "--json"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["frames_out"] == 50
    receiver.join(timeout=30)
    assert not receiver.is_alive()
    # over TCP every frame; over UDP (RTP) at full speed, most may be
    assert len(receiver.video) == 50 if scheme == "rtmp" else len(receiver.video) >= 10
    assert set(receiver.video) == {(2 * W, 2 * H)}
    assert receiver.audio > 0


@pytest.mark.parametrize("name", ["out.xyz", "recording", "pipe:1"])
def test_an_output_name_with_no_format_fails_before_the_stream_starts(tmp_path, name):
    """A DST whose format FFmpeg cannot tell from its name, without --format: the output
    opens on the first frame, so `vsr stream udp://... recording` waited for the source (as
    long as it took to come) and only then said 'Could not determine output format'."""
    with pytest.raises(ConfigError, match="cannot tell the output format from the name"):
        StreamConfig(src="udp://127.0.0.1:9000", dst=name)
    StreamConfig(src="udp://127.0.0.1:9000", dst=name, output_format="mpegts")
    for fine in ("out.mkv", "out.TS", "rtmp://127.0.0.1/live/key", "-", str(tmp_path)):
        StreamConfig(src="udp://127.0.0.1:9000", dst=fine)
    port = free_port(socket.SOCK_DGRAM)  # nothing is ever sent to it: it would wait
    result = subprocess.run([*VSR, f"udp://127.0.0.1:{port}", name, *BICUBIC, "--timeout",
                             "60"], capture_output=True, text=True, env=ENV, timeout=60,
                            cwd=tmp_path)
    assert error_line(result) == (f"Error: cannot tell the output format from the name {name} "
                                  "(use --format, e.g. --format mpegts)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("transport", [pytest.param("stdin", marks=pytest.mark.slow), "fifo"])
def test_a_pipe_that_goes_silent_ends_after_the_timeout(tmp_path, transport):
    """A producer that stops sending without closing the pipe (a hung `ffmpeg ... -f mpegts -
    | vsr stream - out.ts`): --timeout did not apply to pipes, vsr waited for ever, and the
    frames the parser and decoder held never went out. Now it ends as a network source that
    goes silent: every frame written, exit 0."""
    if transport == "stdin":
        proc, out, err = _vsr("-", tmp_path / "out.ts", stdin=subprocess.PIPE)
        pipe = proc.stdin
    else:
        fifo = tmp_path / "in.ts"
        os.mkfifo(fifo)
        proc, out, err = _vsr(str(fifo), tmp_path / "out.ts")
        pipe = open(fifo, "wb", buffering=0)  # noqa: SIM115  (blocks until vsr opens it)
    try:
        pipe.write(ts(30))
        pipe.flush()
        proc.wait(timeout=30)  # it waited for ever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            pipe.close()
    out.join(timeout=5)
    err.join(timeout=5)
    assert proc.returncode == 0, "\n".join(err.lines)
    final = out.stats()[-1]
    assert final["error"] is None and final["frames_in"] == final["frames_out"] == 30, final
    assert stamps(tmp_path / "out.ts") == list(range(30))


def test_a_udp_output_sends_whole_ts_packets_in_each_datagram(tmp_path):
    """`vsr stream SRC udp://...`: FFmpeg's default 1472-byte datagrams split a 188-byte TS
    packet between two (7 and 156 bytes of the 8th): receivers that take a datagram as whole
    TS packets (set-top boxes, multicast gateways) drop those, and a datagram lost leaves
    halves every receiver must resynchronise on. Each datagram is whole packets, at most 7."""
    make_ts(str(tmp_path / "src.ts"), 100)
    datagrams: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        done = threading.Event()

        def receive() -> None:  # as they come: no datagram lost to a full socket buffer
            while True:
                try:
                    datagrams.append(s.recv(65536))
                except TimeoutError:
                    if done.is_set():
                        return

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        result = subprocess.run([*VSR, str(tmp_path / "src.ts"),
                                 f"udp://127.0.0.1:{s.getsockname()[1]}", *BICUBIC, "--drop",
                                 "none"], capture_output=True, text=True, env=ENV, timeout=120)
        done.set()
        receiver.join(timeout=10)
    assert result.returncode == 0, result.stderr
    sizes = {len(d) for d in datagrams}
    assert sizes and all(n % 188 == 0 and n <= 7 * 188 for n in sizes), sorted(sizes)
    with av.open(io.BytesIO(b"".join(datagrams)), format="mpegts") as c:
        assert len(list(c.decode(video=0))) >= 90  # (UDP on 127.0.0.1 may still lose a few)
