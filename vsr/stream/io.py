"""Live input and output: FFmpeg URLs, ``-`` for stdin/stdout (MPEG-TS), files for testing.

The reader decodes in its own thread and hands frames to a :class:`DropQueue`; it reopens the
source with backoff when it goes away (``reconnect``). The writer encodes with low-latency
settings and muxes to the destination; ``srt://`` (absent from the PyAV wheel) goes through
the system ``ffmpeg`` program, which takes our MPEG-TS on its stdin and copies it out.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from vsr.errors import InputError, OutputError
from vsr.io.info import ColorInfo, StreamInfo, bit_depth_of
from vsr.io.sink import EncodeConfig, VideoEncoder
from vsr.io.source import rgb_format

log = logging.getLogger(__name__)

TS_TIME_BASE = Fraction(1, 90000)
_NETWORK = ("udp://", "tcp://", "rtp://", "rtmp://", "rtmps://", "http://", "https://",
            "srt://", "rtsp://")


def is_network(url: str) -> bool:
    return url.startswith(_NETWORK)


@dataclass(frozen=True)
class LiveFrame:
    """A decoded frame: (H, W, 3) RGB uint8/uint16, its time in seconds on the output's
    monotonic clock, and when it arrived (``time.monotonic()``)."""

    image: np.ndarray
    t: float
    arrived: float
    info: StreamInfo


IDLE = LiveFrame(np.zeros((0, 0, 3), np.uint8), 0.0, 0.0, None)  # no frame yet: report stats


class DropQueue:
    """A bounded frame queue between the reader and inference.

    ``oldest``: a full queue drops its oldest frame to take the new one, and :meth:`get`
    drops frames older than ``max_age`` while a newer one waits. ``none``: the reader waits
    for room (back-pressure) and nothing is dropped. ``dropped`` counts every drop.
    """

    def __init__(self, capacity: int, policy: str, max_age: float) -> None:
        self._items: collections.deque[LiveFrame | None] = collections.deque()
        self._cond = threading.Condition()
        self.capacity, self.policy, self.max_age = capacity, policy, max_age
        self.dropped = 0

    def put(self, item: LiveFrame | None, stop: threading.Event) -> None:
        """Add a frame (or None: the end); may block under policy ``none``."""
        with self._cond:
            if item is not None and self.policy == "none":
                while len(self._items) >= self.capacity and not stop.is_set():
                    self._cond.wait(0.1)
            elif item is not None:
                while len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, stop: threading.Event, timeout: float | None = None) -> LiveFrame | None:
        """The next frame to compute; None at the end or when ``stop`` is set; IDLE when
        ``timeout`` seconds pass without a frame."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        with self._cond:
            while not self._items:
                if stop.is_set():
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    return IDLE
                self._cond.wait(0.1)
            if self.policy == "oldest":
                now = time.monotonic()
                while (len(self._items) > 1 and self._items[0] is not None
                       and now - self._items[0].arrived > self.max_age):
                    self._items.popleft()
                    self.dropped += 1
            item = self._items.popleft()
            self._cond.notify_all()
            return item


class Reader(threading.Thread):
    """Decodes ``url`` into ``queue`` with monotonic times; reconnects when asked to.

    ``error`` holds the reason the source ended abnormally (None for a clean end).
    """

    def __init__(self, url: str, queue: DropQueue, stop: threading.Event, *,
                 reconnect: bool, read_timeout: float, backoff_max: float,
                 input_format: str | None) -> None:
        super().__init__(name="vsr-stream-read", daemon=True)
        self.url, self.queue, self.stop = url, queue, stop
        self.reconnect, self.read_timeout, self.backoff_max = reconnect, read_timeout, backoff_max
        self.input_format = input_format
        self.error: str | None = None
        self.frames = 0
        self.reconnects = 0
        self.connected = threading.Event()
        self._last_t: float | None = None
        self._step = 1 / 25

    def run(self) -> None:
        delay = 0.25
        try:
            while not self.stop.is_set():
                got = 0
                try:
                    got = self._session()
                    if not self.reconnect or self.url == "-":
                        return
                    log.warning("source ended; reconnecting")
                except (av.error.FFmpegError, OSError, InputError) as exc:
                    if not self.reconnect or self.url == "-":
                        self.error = f"source {self.url}: {exc}"
                        return
                    log.warning("source unavailable (%s); retrying in %.1f s", exc, delay)
                if self.stop.wait(0 if got else delay):
                    return
                delay = 0.25 if got else min(self.backoff_max, delay * 2)
                self.reconnects += 1
        finally:
            self.queue.put(None, self.stop)

    def _open(self) -> av.container.InputContainer:
        # not fflags=nobuffer: it throws away the packets read while probing the input
        options = {"flags": "low_delay", "analyzeduration": "1000000"}
        if self.url.startswith("udp://"):
            options.update({"overrun_nonfatal": "1", "fifo_size": "100000"})
        if self.url == "-":
            return av.open(sys.stdin.buffer, format=self.input_format or "mpegts",
                           options=options)
        timeout = None
        if is_network(self.url):
            # a listening source waits longer for its client than a connection takes
            wait = 30.0 if "listen" in self.url else max(self.read_timeout, 5.0)
            timeout = (wait, self.read_timeout)
        return av.open(self.url, format=self.input_format, options=options, timeout=timeout)

    def _session(self) -> int:
        """One connection: decode until the end; returns frames read."""
        got = 0
        with self._open() as c:
            if not c.streams.video:
                raise InputError(f"no video stream in {self.url}")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            if rate:
                self._step = float(1 / rate)
            self.connected.set()
            base: float | None = None
            offset = 0.0
            info: StreamInfo | None = None
            for frame in c.decode(stream):
                if self.stop.is_set():
                    break
                arrived = time.monotonic()
                t_in = float(frame.pts * frame.time_base) if frame.pts is not None else None
                if t_in is None:
                    t_in = (self._last_t + self._step) if self._last_t is not None else 0.0
                t = t_in - base + offset if base is not None else None
                if t is None or (self._last_t is not None
                                 and not 0 < t - self._last_t < 10.0):
                    # a new connection or a discontinuity: continue one frame after the last
                    base = t_in
                    offset = t_in if self._last_t is None else self._last_t + self._step
                    t = offset
                if info is None or (frame.width, frame.height) != info.size:
                    info = _describe(self.url, frame, stream)
                image = frame.to_ndarray(format=rgb_format(info.bit_depth))
                self._last_t = t
                self.queue.put(LiveFrame(image, t, arrived, info), self.stop)
                got += 1
                self.frames += 1
        return got


def _describe(url: str, frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> StreamInfo:
    fmt = frame.format.name
    rate = stream.average_rate or stream.guessed_rate
    return StreamInfo(
        path=url, container="live", index=stream.index, codec=stream.codec_context.name,
        width=frame.width, height=frame.height, frame_rate=Fraction(rate) if rate else None,
        time_base=TS_TIME_BASE, start_pts=None, frames=None, duration_s=None, pix_fmt=fmt,
        bit_depth=bit_depth_of(fmt),
        color=ColorInfo(range=int(frame.color_range or 0), matrix=int(frame.colorspace or 2)),
    )


class LiveSink:
    """Encodes RGB frames at monotonic times (seconds) and muxes them to ``url``.

    Opened on the first frame (its size is known then). ``close`` flushes the encoder and
    finishes the container, so the receiver sees a clean end. Raises OutputError.
    """

    def __init__(self, url: str, encode: EncodeConfig, *, output_format: str | None,
                 gop: int | None, via_ffmpeg: bool) -> None:
        self.url, self.encode, self.gop = url, encode, gop
        self.format = output_format or (
            "mpegts" if url == "-" or is_network(url) or url.endswith(".ts") else None)
        self.via_ffmpeg = via_ffmpeg or url.startswith("srt://")
        self._out = None
        self._proc: subprocess.Popen | None = None
        self._last_pts = -1
        self.frames = 0

    def _open(self, info: StreamInfo, width: int, height: int) -> None:
        options = {"flush_packets": "1"}
        try:
            if self.via_ffmpeg:
                self._proc = _ffmpeg_relay(self.url, self.format or "mpegts")
                target, fmt = self._proc.stdin, "mpegts"
            elif self.url == "-":
                target, fmt = sys.stdout.buffer, "mpegts"
            else:
                target, fmt = self.url, self.format
            self._out = av.open(target, mode="w", format=fmt, container_options=options)
            rate = info.frame_rate or Fraction(25)
            stream = self._out.add_stream(self.encode.codec, rate=rate)
            self._enc = VideoEncoder(stream, info, width, height, self.encode)
            cc = stream.codec_context
            if cc.name in ("libx264", "libx265"):
                cc.options = {**cc.options, "tune": "zerolatency",
                              "preset": self.encode.preset or "veryfast"}
            cc.gop_size = self.gop or max(1, round(rate))
            self._stream = stream
            self._out.start_encoding()
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.abort()
            raise OutputError(f"cannot open the output {self.url}: {exc}") from exc

    def write(self, image: np.ndarray, t: float, info: StreamInfo) -> None:
        if self._out is None:
            self._open(info, image.shape[1], image.shape[0])
        pts = round(t / TS_TIME_BASE)
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the input did
        self._last_pts = pts
        try:
            for pkt in self._stream.encode(self._enc.frame(image, pts)):
                self._out.mux(pkt)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"writing {self.url} failed: {exc}") from exc
        self.frames += 1

    def close(self) -> None:
        if self._out is None:
            self._finish_proc()
            return
        out, self._out = self._out, None
        try:
            for pkt in self._stream.encode(None):
                out.mux(pkt)
            out.close()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"finishing {self.url} failed: {exc}") from exc
        finally:
            self._finish_proc()

    def abort(self) -> None:
        if self._out is not None:
            with contextlib.suppress(Exception):
                self._out.close()
            self._out = None
        self._finish_proc()

    def _finish_proc(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def _ffmpeg_relay(url: str, fmt: str) -> subprocess.Popen:
    """The system ffmpeg copying MPEG-TS from its stdin to ``url`` (argument list, no shell)."""
    import shutil

    if shutil.which("ffmpeg") is None:
        raise OutputError(f"{url.split(':')[0]}:// output needs the ffmpeg program on PATH")
    # small probe: our own MPEG-TS needs no analysis, and a 5 s probe would be 5 s of delay
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-probesize", "32768",
            "-analyzeduration", "0", "-f", "mpegts", "-i", "pipe:", "-c", "copy",
            "-flush_packets", "1", "-f", fmt, url]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            start_new_session=True)
