"""Live input and output: FFmpeg URLs, ``-`` for stdin/stdout (MPEG-TS), files for testing.

The reader decodes in its own thread and hands frames to a :class:`DropQueue` (and audio
packets to an :class:`~vsr.stream.audio.AudioFeed`, never dropped); it reopens the source with
backoff when it goes away (``reconnect``). The writer encodes with low-latency settings and
muxes video and copied audio to the destination; ``srt://`` (absent from the PyAV wheel) goes
through the system ``ffmpeg`` program, which takes our MPEG-TS on its stdin and copies it out.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import errno
import functools
import logging
import os
import re
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from urllib.parse import parse_qsl, urlsplit

import av
import numpy as np
from av.video.reformatter import Interpolation

from vsr.errors import ConfigError, InputError, OutputError
from vsr.io.colour import reads_own, to_rgb
from vsr.io.ffmpeg_sink import FfmpegRelay
from vsr.io.image import check_pixels, limit_stream
from vsr.io.info import EXACT_RGB, ColorInfo, StreamInfo, bit_depth_of, field_order
from vsr.io.output import same_file as same_file_path
from vsr.io.paths import open_media
from vsr.io.sink import EncodeConfig, VideoEncoder
from vsr.io.source import Deinterlacer, frame_time_base, pictures, rgb_format, video_stream
from vsr.stream.audio import AudioFeed, LivePassthrough

log = logging.getLogger(__name__)

TS_TIME_BASE = Fraction(1, 90000)
JUMP_S = 10.0  # a timestamp step (s) this large, or backwards, is a discontinuity of the source
MAX_UNDECODABLE = 100  # packets in a row the decoder rejects before the source counts as broken
AGAIN_WAIT_S = 0.01  # between reads of a demuxer that says "try again" (EAGAIN) twice in a row
_NETWORK = ("udp://", "tcp://", "rtp://", "rtmp://", "rtmps://", "http://", "https://",
            "srt://", "rtsp://")


# FFmpeg takes the letters before a ":" as a protocol name when they are all of these
# (libavformat/avio.c, URL_SCHEME_CHARS); anything else is a file path
_SCHEME = re.compile(r"[A-Za-z0-9+.-]+:")


def is_network(url: str) -> bool:
    return url.startswith(_NETWORK)


def local_path(url: str) -> str | None:
    """The file-system path FFmpeg opens for ``url``: the name itself, or what follows
    ``file:``; None for ``-`` and for every other protocol (network, ``pipe:``, ...)."""
    if url == "-":
        return None
    if url.startswith("file:"):
        return url[len("file:"):]
    return None if _SCHEME.match(url) else url


def check_format(name: str | None, *, output: bool) -> None:
    """Raise ConfigError unless ``name`` (None: guessed) is a container format FFmpeg can read
    (``output``: write)."""
    if name is None:
        return
    kind = "output" if output else "input"

    def known(n: str) -> av.format.ContainerFormat | None:
        try:
            return av.format.ContainerFormat(n)
        except (ValueError, TypeError):
            return None

    def usable(n: str) -> bool:
        fmt = known(n)
        return fmt is not None and bool(fmt.is_output if output else fmt.is_input)

    if usable(name):
        return
    if known(name) is not None:
        raise ConfigError(f"{name!r} is not an {kind} format")
    near = [n for n in difflib.get_close_matches(name, sorted(av.formats_available), n=6)
            if usable(n)][:3]
    hint = f" (did you mean {', '.join(near)}?)" if near else " (`ffmpeg -formats` lists them)"
    raise ConfigError(f"unknown {kind} format {name!r}{hint}")


# what a protocol carries, where it is not bare MPEG-TS: RTMP carries FLV, and RTP packets
# (rtp_mpegts: all the streams in MPEG-TS in RTP; the rtp muxer takes one stream); bare
# MPEG-TS into either went out without an error, and no receiver could read a frame of it
_CARRIED = {"rtmp://": "flv", "rtmps://": "flv", "rtp://": "rtp_mpegts"}


def default_format(url: str) -> str | None:
    """The container format written to ``url`` without ``--format``: what its protocol
    carries (MPEG-TS for ``-``, udp, tcp, srt, http; FLV for rtmp; MPEG-TS in RTP for rtp),
    MPEG-TS for a .ts file, else None (FFmpeg's guess from the file name)."""
    for scheme, name in _CARRIED.items():
        if url.startswith(scheme):
            return name
    return "mpegts" if url == "-" or is_network(url) or url.endswith(".ts") else None


@functools.cache
def _output_extensions() -> frozenset[str]:
    exts: set[str] = set()
    for name in av.formats_available:
        with contextlib.suppress(ValueError, TypeError):
            fmt = av.format.ContainerFormat(name)
            if fmt.is_output:
                exts.update(e.strip().lower() for e in fmt.extensions)
    return frozenset(exts)


def check_output_name(url: str) -> None:
    """Raise ConfigError where FFmpeg cannot tell from ``url`` the format to write it in (no
    --format, no protocol of :func:`default_format`, no extension of a muxer's): the sink
    opens on the first frame, which a live source may send long after the start."""
    path = local_path(url)
    if default_format(url) is not None or (path is not None and os.path.isdir(path)):
        return  # (a directory: refused as one, when the run starts)
    name = url.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in _output_extensions():
        raise ConfigError(f"cannot tell the output format from the name {url} (use --format, "
                          f"e.g. --format mpegts)")


# the MP4 family's muxers write their index at the end, seeking back, which a pipe cannot:
# to one they write fragmented MP4 (an empty index first, then fragments of a keyframe on)
_MOV_FAMILY = frozenset({"mp4", "mov", "ipod", "3gp", "3g2", "f4v", "psp"})
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


def streams_to_pipe(url: str) -> bool:
    """Whether vsr writes ``url`` as a stream it cannot seek in: ``-`` and tcp:// outputs."""
    return url == "-" or url.startswith("tcp://")


def pipe_options(fmt: str | None) -> dict[str, str]:
    """Muxer options for writing ``fmt`` to a pipe: fragmented MP4 for the MP4 family."""
    return dict(_FRAGMENTED) if fmt in _MOV_FAMILY else {}


def check_pipe_format(url: str, fmt: str | None) -> None:
    """Raise ConfigError where ``url`` is a pipe vsr writes (:func:`streams_to_pipe`) and
    the muxer ``fmt`` writes files of its own (HLS, DASH, image sequences, segments)."""
    if fmt is None or not streams_to_pipe(url):
        return
    try:
        own_files = av.format.ContainerFormat(fmt).no_file
    except (ValueError, TypeError):  # unknown: check_format says so
        return
    if own_files:
        where = "stdout" if url == "-" else url
        raise ConfigError(f"the {fmt} format writes files of its own and cannot stream to "
                          f"{where} (e.g. --format mpegts)")


def refuse_existing_file(url: str) -> None:
    """Raise OutputError when ``url`` names an existing directory, or an existing regular file
    (it would be replaced). FIFOs, devices, ``-`` and URLs are written to as they are."""
    path = local_path(url)
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # a dangling link too: writing creates its target
        return
    except OSError as exc:
        raise OutputError(f"cannot use the output path {url}: {exc.strerror}") from exc
    if stat.S_ISDIR(mode):
        raise OutputError(f"output is a directory: {url}")
    if stat.S_ISREG(mode):
        raise OutputError(f"output exists (use --overwrite): {url}")


def claim_new_file(url: str) -> str | None:
    """Create ``url``'s file, empty, where nothing is there yet, exclusively (O_EXCL): of two
    runs that start writing one new file, one gets it, the other is refused. Else as
    :func:`refuse_existing_file` (an existing file or directory: OutputError; a FIFO, device,
    ``-`` or URL: written to). Returns the path created, None if none was."""
    path = local_path(url)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # a file, directory, FIFO, device, or a dangling link
        refuse_existing_file(url)
        return None
    except OSError:  # FFmpeg says why it cannot open it
        return None
    os.close(fd)
    return path


def same_file(src: str, dst: str) -> bool:
    """Whether ``src`` and ``dst`` open the same local file: one path, a symbolic or a hard
    link to the other. False when either is ``-`` or a URL."""
    a, b = local_path(src), local_path(dst)
    return a is not None and b is not None and same_file_path(a, b)


@dataclass(frozen=True)
class LiveFrame:
    """A decoded frame: (H, W, 3) RGB uint8/uint16, its time in seconds on the output's
    monotonic clock, and when it arrived (``time.monotonic()``)."""

    image: np.ndarray
    t: float
    arrived: float
    info: StreamInfo


IDLE = LiveFrame(np.zeros((0, 0, 3), np.uint8), 0.0, 0.0, None)  # no frame yet: report stats


# the most bytes of decoded frames that wait for the model under --drop oldest: frames go by
# age (--max-latency), and this bounds the memory a burst, or a long --max-latency, can take
# (512 MiB: 80 s of 64x48 RGB at 25 fps, 3.4 s of 1080p, 0.8 s of 2160p)
MAX_QUEUE_BYTES = 512 * 2**20


class DropQueue:
    """A bounded frame queue between the reader and inference.

    ``oldest``: a frame waits for the model until it is ``max_age`` s old; then, once a newer
    frame waits behind it, it is dropped (the newest is always taken: a model slower than the
    limit still shows the latest picture). A burst of fresh frames all wait, up to
    ``max_bytes`` of them: past that the oldest goes, counted in ``overflowed`` too and warned
    of once. ``none``: the reader waits for room (``capacity`` frames, back-pressure) and
    nothing is dropped. ``dropped`` counts every drop.
    """

    def __init__(self, capacity: int, policy: str, max_age: float, *,
                 max_bytes: int = MAX_QUEUE_BYTES) -> None:
        self._items: collections.deque[LiveFrame | None] = collections.deque()
        self._cond = threading.Condition()
        self.capacity, self.policy, self.max_age = capacity, policy, max_age
        self.max_bytes = max_bytes
        self._bytes = 0  # of the frames waiting
        self.dropped = 0
        self.overflowed = 0  # of ``dropped``: younger than max_age, for want of room

    def put(self, item: LiveFrame | None, stop: threading.Event) -> None:
        """Add a frame (or None: the end); may block under policy ``none``."""
        with self._cond:
            if item is not None and self.policy == "none":
                while len(self._items) >= self.capacity and not stop.is_set():
                    self._cond.wait(0.1)
            elif item is not None:
                self._expire(newer=True)  # ``item`` is newer than every frame waiting
                while self._items and self._bytes + item.image.nbytes > self.max_bytes:
                    self._pop()
                    self.dropped += 1
                    self.overflowed += 1
                    if self.overflowed == 1:
                        log.warning("more than %d MiB of frames younger than the latency limit "
                                    "wait for the model: the oldest are dropped (counted as "
                                    "'overflowed' in the stats)", self.max_bytes >> 20)
            self._items.append(item)
            self._bytes += item.image.nbytes if item is not None else 0
            self._cond.notify_all()

    def _pop(self) -> LiveFrame | None:
        item = self._items.popleft()
        self._bytes -= item.image.nbytes if item is not None else 0
        return item

    def _expire(self, *, newer: bool = False) -> None:
        """Under ``oldest``, drop the frames at the head older than ``max_age`` that have a
        newer frame behind them (``newer``: one is being added)."""
        if self.policy != "oldest":
            return
        now = time.monotonic()
        while (self._items and self._items[0] is not None
               and now - self._items[0].arrived > self.max_age
               and (newer or (len(self._items) > 1 and self._items[1] is not None))):
            self._pop()
            self.dropped += 1

    def settle(self, read: int, written: int) -> int:
        """At the end of a run: how many frames were read (``read`` went through here) and
        neither ``written`` nor dropped: those a stop left waiting, and those it cut short
        on their way out (in the model, in the encoder). Not drops of the policy: not added
        to ``dropped``. The queue is emptied."""
        with self._cond:
            self._items.clear()
            self._bytes = 0
            left = max(0, read - written - self.dropped)
            self._cond.notify_all()
            return left

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
            self._expire()
            item = self._pop()
            self._cond.notify_all()
            return item


class _Pipe:
    """A pipe (stdin, a named pipe) as PyAV reads it.

    A read returns what is there (PyAV asks for its whole buffer, and stdin's ``read(n)``
    waited for n bytes: a live producer's last frames sat in the pipe); once data has come,
    ``timeout`` s with none is the end of the input, ``silent`` then (a producer that hangs
    without closing the pipe, as a network source that goes silent). The reader can
    :meth:`end` it: libavformat flushes its parsers at the end of the input or a read
    error, never where the demuxer says "try again" (EAGAIN), so the frame a parser holds
    (H.264's last, until the next one starts) comes out of a pipe that goes on in bytes the
    demuxer cannot read only at that end."""

    def __init__(self, file, *, owned: bool, timeout: float | None) -> None:
        self._file, self._owned, self._timeout = file, owned, timeout
        try:  # its descriptor, read directly: stdin's buffer holds nothing yet
            self._fd: int | None = file.fileno()
        except (AttributeError, OSError, ValueError):  # a file object of a library caller
            self._fd = None
        self._ended = False
        self._seen = False  # data has come: from now on, the timeout counts
        self.silent = False

    def read(self, size: int) -> bytes:
        if self._ended:
            return b""
        if self._fd is None:
            return getattr(self._file, "read1", self._file.read)(size)
        if self._seen and self._timeout is not None and not self._ready(self._timeout):
            self.silent = self._ended = True
            return b""
        data = os.read(self._fd, size)
        self._seen = self._seen or bool(data)
        return data

    def _ready(self, timeout: float) -> bool:
        """Whether data (or the end) comes within ``timeout`` s; True where select cannot
        tell (a descriptor past FD_SETSIZE, a pipe on Windows): the read then waits."""
        try:
            return bool(select.select([self._fd], [], [], timeout)[0])
        except (OSError, ValueError):
            return True

    def end(self) -> None:
        """Every read from now on is the end of the input."""
        self._ended = True

    def close(self) -> None:
        if self._owned:
            self._file.close()


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:  # FFmpeg says why it cannot open it
        return False


class _Starved(InputError):
    """The demuxer said "try again" (EAGAIN), with no packet, for the read timeout, or a pipe
    sent nothing for it: a source that sends nothing it can read has ended, as one that sends
    nothing (FFmpeg's timeout)."""


def source_reason(url: str, exc: BaseException) -> str:
    """Why a source could not be read, in plain words: FFmpeg's errors carry an errno (the
    negated tag of its own codes: "[Errno 1330794744] Protocol not found") and the URL again."""
    if isinstance(exc, av.error.ProtocolNotFoundError):
        scheme = url.split(":", 1)[0]
        return f"PyAV's FFmpeg cannot read {scheme}:// (protocol not found)"
    if isinstance(exc, (av.error.FFmpegError, OSError)) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return " ".join(str(exc).split()) or type(exc).__name__


class Reader(threading.Thread):
    """Decodes ``url`` into ``queue`` with monotonic times; reconnects when asked to.

    With an ``audio`` feed, the audio packets go there on the same clock as the frames.
    ``error`` holds the reason the source ended abnormally (None for a clean end).
    """

    def __init__(self, url: str, queue: DropQueue, stop: threading.Event, *,
                 reconnect: bool, read_timeout: float, backoff_max: float,
                 input_format: str | None, audio: AudioFeed | None = None,
                 deinterlace: bool = True) -> None:
        super().__init__(name="vsr-stream-read", daemon=True)
        self.url, self.queue, self.stop = url, queue, stop
        self.reconnect, self.read_timeout, self.backoff_max = reconnect, read_timeout, backoff_max
        self.input_format = input_format
        self.audio = audio
        self.deinterlace = deinterlace
        self._interlace_said = False
        self.error: str | None = None
        self.frames = 0
        self.reconnects = 0
        self.corrupt = 0  # packets that arrived damaged or that the decoder rejected (skipped)
        self.connected = threading.Event()
        self._last_t: float | None = None
        self._said_others = False  # the video streams not upscaled: warned of once a run
        self._step = 1 / 25
        self._size: tuple[int, int] | None = None  # (w, h) of the first frame: the output's
        self._seen: tuple[int, int] | None = None  # the size the source sends now
        self._pipe: _Pipe | None = None  # the connection's input, where it is a pipe

    def run(self) -> None:
        delay = 0.25
        try:
            while not self.stop.is_set():
                got = 0
                before = self.frames
                began = time.monotonic()
                try:
                    got = self._session()
                    if not self.reconnect or self.url == "-":
                        return
                    log.warning("source ended; reconnecting")
                except (av.error.FFmpegError, OSError, InputError) as exc:
                    silent = isinstance(exc, (av.error.ExitError, _Starved))
                    if not self.reconnect or self.url == "-":
                        if silent and self.frames > before:
                            # the read timeout after frames: a live source (UDP) that stops
                            # sending ends this way, not with an end of file
                            log.info("no data for %.1f s: the source has ended",
                                     self.read_timeout)
                            return
                        why = source_reason(self.url, exc)
                        if silent and not self.stop.is_set():  # not FFmpeg's words for its
                            # read timeout, "immediate exit requested"; before the first
                            # frame the wait was the open's, longer than --timeout
                            waited = (self.read_timeout if self.frames > before
                                      else max(self.read_timeout, time.monotonic() - began))
                            why = f"nothing received for {waited:.1f} s"
                        self.error = f"source {self.url}: {why}"
                        return
                    if silent:  # FFmpeg's read timeout, or a demuxer that finds nothing
                        log.warning("no data from the source for %.1f s; retrying in %.1f s",
                                    self.read_timeout, delay)
                    else:
                        log.warning("source unavailable (%s); retrying in %.1f s",
                                    source_reason(self.url, exc), delay)
                if self.stop.wait(0 if got else delay):
                    return
                delay = 0.25 if got else min(self.backoff_max, delay * 2)
                self.reconnects += 1
        except Exception as exc:  # not a source failure we know: still the run's error
            log.debug("reader failed", exc_info=True)
            self.error = f"source {self.url}: {type(exc).__name__}: {exc}"
        finally:
            self.queue.put(None, self.stop)

    def _open(self) -> av.container.InputContainer:
        # not fflags=nobuffer: it throws away the packets read while probing the input
        options = {"flags": "low_delay", "analyzeduration": "1000000"}
        if self.url.startswith("udp://"):
            options.update({"overrun_nonfatal": "1", "fifo_size": "100000"})
        self._pipe = None
        if self.url == "-":
            self._pipe = _Pipe(sys.stdin.buffer, owned=False, timeout=self.read_timeout)
            return open_media(self._pipe, format=self.input_format or "mpegts", options=options)
        path = local_path(self.url)
        if path is not None and _is_fifo(path):  # a named pipe: as stdin
            self._pipe = _Pipe(open(path, "rb", buffering=0), owned=True,  # noqa: SIM115
                               timeout=self.read_timeout)
            try:
                return open_media(self._pipe, format=self.input_format, options=options)
            except BaseException:
                self._pipe.close()
                raise
        timeout = None
        if is_network(self.url):
            # a listening source waits longer for its client than a connection takes
            wait = 30.0 if "listen" in self.url else max(self.read_timeout, 5.0)
            timeout = (wait, self.read_timeout)
            # MPEG-TS: bytes with no sync byte are skipped in one read, however many, not
            # 64 KiB a read ("try again", EAGAIN, after each): libavformat flushes its parsers
            # at a read error but never at EAGAIN, so a source that went on in such bytes
            # kept the frame its parser held (the last one) for ever; now the read of them
            # ends in the read timeout, an error, and that frame comes out first
            options["resync_size"] = str(2**31 - 1)
        return open_media(self.url, format=self.input_format, options=options, timeout=timeout)

    def _session(self) -> int:
        """One connection: decode until the end; returns frames read."""
        try:
            with self._open() as c:
                got = self._decode(c)
        finally:
            if self._pipe is not None:
                self._pipe.close()
        if self._pipe is not None and self._pipe.silent:  # its frames are out: say how it ended
            raise _Starved(f"no data for {self.read_timeout:g} s")
        return got

    def _decode(self, c: av.container.InputContainer) -> int:
        """The frames of the connection ``c`` into the queue; returns how many."""
        got = 0
        stream = video_stream(c, self.url)  # as a file's: the largest picture, default first
        if (others := [s.index for s in pictures(c) if s is not stream]) and not self._said_others:
            self._said_others = True  # once a run, not once a connection
            log.warning("%s has %d video streams (programs?): upscaling stream %d (%dx%d), the "
                        "one the ffmpeg program picks; stream%s %s not carried (a live output "
                        "holds one video stream); every audio stream is",
                        self.url, len(others) + 1, stream.index, stream.codec_context.width,
                        stream.codec_context.height, "s" if len(others) > 1 else "",
                        ", ".join(map(str, others)) + (" are" if len(others) > 1 else " is"))
        limit_stream(stream, self.url)  # the size it declares; the decoder refuses larger
        # slice threads: frame threads hold one frame back per thread (16 threads:
        # 0.6 s at 25 fps); measured here, UDP end-to-end median 263 -> 170 ms
        stream.thread_type = "SLICE"
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            self._step = float(1 / rate)
        carried = self.audio.session(list(c.streams.audio)) if self.audio is not None else {}
        self.connected.set()
        base: float | None = None
        offset = 0.0
        last_in = 0.0  # the input time of the last frame (with ``base``: of this session)
        info: StreamInfo | None = None
        held: list[av.Packet] = []  # audio read since the last frame: its shift is known then
        later: list[av.Packet] = []  # audio of another clock than the last frame's, or
        # behind the audio out on it: it waits one frame, for the video of its clock (a jump
        # of hours must not pass; a jump back must not drop the audio read before its video)
        # every audio stream is read: those not carried to be counted
        items = _demux(c, stream, list(c.streams.audio) if self.audio is not None else [],
                       self._damaged,
                       name=self.url, patience=self.read_timeout, wait=self.stop.wait,
                       end=self._pipe.end if self._pipe is not None else None)
        for item in self._progressive(items, stream):
            if self.stop.is_set():
                break
            if isinstance(item, av.Packet):
                if item.stream_index in carried:
                    self.audio.hold(item, later, held)  # bounded: the video may stall
                else:
                    self.audio.refuse()
                continue
            frame = item
            arrived = time.monotonic()
            t_in = float(frame.pts * frame.time_base) if frame.pts is not None else None
            if t_in is None:
                t_in = (self._last_t + self._step) if self._last_t is not None else 0.0
            t = t_in - base + offset if base is not None else None
            if t is not None and not 0 < t - self._last_t < JUMP_S:
                # a discontinuity: audio of the clock that ends, read after its last frame
                # (out of order), goes out on that clock first (within JUMP_S, a jump back
                # would have put it on the new one, ahead of the new clock's audio)
                later = self._put_old(later, last_in, t_in, carried, offset - base)
                held = self._put_old(held, last_in, t_in, carried, offset - base)
            ready = later + [p for p in held if _near(p, t_in)]
            if t is None or (self._last_t is not None
                             and not 0 < t - self._last_t < JUMP_S):
                # a new connection or a discontinuity: continue one frame after the last
                # (and after the audio already out, so both stay monotonic); the first
                # starts on the source's clock, at 0 if that is negative: libavformat makes
                # an MPEG-TS clock that wraps (2**33 ticks, 26.5 h) within a minute of its
                # first frame negative there, and the sink, whose times never go back, put
                # the frames before 0 one tick apart (seconds of video in a burst)
                base = t_in
                offset = max(t_in, 0.0) if self._last_t is None else max(
                    self._last_t + self._step, self._audio_end(ready, t_in))
                t = offset
            waited, later = later, []
            for pkt in waited:
                self.audio.put(pkt, carried[pkt.stream_index], offset - base)
            for pkt in held:
                template = carried[pkt.stream_index]
                if _near(pkt, t_in) and self.audio.fits(pkt, template, offset - base):
                    self.audio.put(pkt, template, offset - base)
                else:  # another clock's; or behind the audio out, which is the next
                    later.append(pkt)  # clock's at a jump back by less than JUMP_S
            held.clear()
            if info is None or (frame.width, frame.height) != self._seen:
                check_pixels(frame.width, frame.height, self.url)  # a decoder not bounded
                info = self._framed(_describe(self.url, frame, stream))
            image = fit_frame(frame, info.size, rgb_format(info.bit_depth))
            self._last_t, last_in = t, t_in
            self.queue.put(LiveFrame(image, t, arrived, info), self.stop)
            got += 1
            self.frames += 1
        if base is not None:
            for pkt in later + held:
                self.audio.put(pkt, carried[pkt.stream_index], offset - base)
        elif held:  # no frame came: no clock to place them on
            self.audio.drop(len(held))
        return got

    def _progressive(self, items: Iterable[av.Packet | av.VideoFrame],
                     stream: av.video.stream.VideoStream) -> Iterator[av.Packet | av.VideoFrame]:
        """``items`` (of :func:`_demux`) with the frames of an interlaced source deinterlaced
        (:class:`vsr.io.source.Deinterlacer`: one frame held back, a frame's time of latency),
        judged by the connection's first frame; audio packets pass as they come."""
        deinterlacer: Deinterlacer | None = None
        judged = False
        try:
            for item in items:
                if isinstance(item, av.VideoFrame) and not judged:
                    judged = True
                    order = field_order(stream, item)
                    if order and self.deinterlace:
                        log.info("interlaced source (%s): deinterlaced (bwdif)", order)
                        deinterlacer = Deinterlacer(frame_time_base(stream))
                    elif order and not self._interlace_said:
                        self._interlace_said = True
                        log.warning("interlaced source (%s): upscaled with the two fields of "
                                "each frame woven together, the output keeps their combing "
                                "(vsr deinterlaces it unless --no-deinterlace)", order)
                if deinterlacer is None or not isinstance(item, av.VideoFrame):
                    yield item
                else:
                    yield from deinterlacer.push(item)
        except Exception:
            # the source ended by an error (its read timeout): the frame held back is whole
            if deinterlacer is not None:
                yield from deinterlacer.flush()
            raise
        if deinterlacer is not None:
            yield from deinterlacer.flush()

    def _put_old(self, waiting: list[av.Packet], last_in: float, t_in: float,
                 carried: dict[int, av.stream.Stream], shift_s: float) -> list[av.Packet]:
        """At a discontinuity of the input clock from ``last_in`` (the last frame's time) to
        ``t_in``: the packets of ``waiting`` nearer the clock that ends go out on it (moved
        by ``shift_s``, that clock's); returns the others, in order."""
        rest = []
        for pkt in waiting:
            ts = pkt.dts if pkt.dts is not None else pkt.pts
            at = float(ts * pkt.time_base) if ts is not None else None
            if at is not None and abs(at - last_in) < min(JUMP_S, abs(at - t_in)):
                self.audio.put(pkt, carried[pkt.stream_index], shift_s)
            else:
                rest.append(pkt)
        return rest

    def _audio_end(self, held: list[av.Packet], t_in: float) -> float:
        """The earliest start for a new connection's first frame (at ``t_in`` on its input
        clock) that puts the audio read before it after the audio already out."""
        if self.audio is None:
            return float("-inf")
        times = [float(ts * p.time_base) for p in held
                 if (ts := p.dts if p.dts is not None else p.pts) is not None]
        return self.audio.end + max(0.0, t_in - min(times, default=t_in))

    def _framed(self, info: StreamInfo) -> StreamInfo:
        """``info`` of the frames the source sends now, at the size of its first frames: the
        output's size stays (a bitrate ladder switching renditions, a reconnect at another
        size), and frames of another size are fitted into it (:func:`fit_frame`)."""
        self._seen = info.size
        if self._size is None:
            self._size = info.size
        if info.size == self._size:
            return info
        log.warning("source %s changed size from %dx%d to %dx%d: scaled to %dx%d (aspect "
                    "kept, black borders where it differs)", self.url, *self._size, *info.size,
                    *self._size)
        return dataclasses.replace(info, width=self._size[0], height=self._size[1])

    def _damaged(self) -> None:
        """One more damaged packet: the first is a warning, the count is in the stats."""
        self.corrupt += 1
        if self.corrupt == 1:
            log.warning("source %s: corrupt data skipped (counted as 'corrupt' in the stats)",
                        self.url)


def fit_frame(frame: av.VideoFrame, size: tuple[int, int], fmt: str) -> np.ndarray:
    """``frame`` as (h, w, 3) RGB of ``fmt`` at ``size`` = (w, h): itself where it has that
    size, else scaled (bicubic) to fit inside with its aspect kept, centred on black."""
    w, h = size
    exact = fmt == "rgb24"  # 8-bit Y'CbCr -> RGB as the standard says (vsr.io.info.EXACT_RGB)
    # deeper: vsr.io.colour, by the frame's own tags (swscale's 16-bit RGB is 0.4% dark)
    colour = ColorInfo.of_frame(frame)
    own = reads_own(frame.format.name, colour, eight_bit=exact)
    depth = 8 if exact else 16
    if (frame.width, frame.height) == size:
        if own:
            return to_rgb(frame, colour, depth=depth)
        return frame.to_ndarray(format=fmt, interpolation=EXACT_RGB if exact else None)
    k = min(w / frame.width, h / frame.height)
    fw, fh = max(1, min(w, round(frame.width * k))), max(1, min(h, round(frame.height * k)))
    if own:
        image = to_rgb(frame, colour, size=(fw, fh), depth=depth,
                       interpolation=Interpolation.BICUBIC | Interpolation.ACCURATE_RND)
    else:
        scaler = (EXACT_RGB & ~Interpolation.BILINEAR) | Interpolation.BICUBIC if exact \
            else "BICUBIC"
        image = frame.reformat(width=fw, height=fh, format=fmt, interpolation=scaler).to_ndarray()
    if (fw, fh) == size:
        return image
    out = np.zeros((h, w, 3), image.dtype)
    y, x = (h - fh) // 2, (w - fw) // 2
    out[y:y + fh, x:x + fw] = image
    return out


def _near(pkt: av.Packet, t_in: float) -> bool:
    """Whether ``pkt`` (audio) is on the clock of a frame at ``t_in`` s (no time: assumed)."""
    ts = pkt.dts if pkt.dts is not None else pkt.pts
    return ts is None or abs(float(ts * pkt.time_base) - t_in) < JUMP_S


def _drain(video: av.video.stream.VideoStream) -> list[av.VideoFrame]:
    """The frames ``video``'s decoder still holds, at an end of the input that PyAV does not
    flush (a read error); none where draining fails (the source's error is the one to say)."""
    try:
        frames = video.codec_context.decode(None)
    except av.error.FFmpegError:
        log.debug("draining the decoder failed", exc_info=True)
        return []
    for frame in frames:  # no packet to take it from, as the frames decoded from packets do
        frame.time_base = video.time_base
    return frames


def _demux(c: av.container.InputContainer, video: av.video.stream.VideoStream,
           audio: list[av.stream.Stream], damaged: Callable[[], None], *, name: str,
           patience: float, wait: Callable[[float], bool],
           end: Callable[[], None] | None = None):
    """Decoded frames of ``video`` and the (undecoded) packets of ``audio``, in file order.

    Damaged data (a packet the demuxer flags corrupt, one the decoder rejects, bytes the
    demuxer cannot resynchronise on) is skipped and reported to ``damaged``; the decoder
    conceals what it can. Only MAX_UNDECODABLE rejected packets in a row, with no frame
    between them, end the input (the decoder's last error); a demuxer that says "try again"
    for ``patience`` s with no packet raises _Starved. ``wait(s)`` sleeps between such reads
    and is True when the reader must stop (the input then ends here). A picture over the
    pixel limit (vsr.io.image.max_pixels, which bounds ``video``'s decoder) raises InputError
    naming ``name``: a size change mid-stream. ``end()``, where the
    input can be ended (a pipe), ends it when that patience runs out: the frames libavformat's
    parsers hold come out at that end, then _Starved is raised."""
    packets = c.demux(video, *audio)
    rejected = 0
    again: float | None = None  # since when the demuxer has said "try again", no packet since
    ended = False  # by ``end``: read on to that end of the input
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            if ended:
                raise _Starved(f"no data it could read for {patience:g} s") from None
            return
        except IndexError:
            # PyAV fails its end-of-input flush when the source gained a stream while it
            # was read (an MPEG-TS PMT update, or damaged bytes taken for one); the streams
            # read here were there from the start, have lower indices and were flushed first
            log.debug("the source gained streams while it was read")
            return
        except BlockingIOError:  # av.error.BlockingIOError: EAGAIN
            # the MPEG-TS demuxer says so where it finds no sync byte in resync_size (64 KiB)
            # bytes: damaged or foreign data, which the next read goes on after; PyAV's
            # generator ends with the error, so a new one reads on (the container keeps its
            # place). Bounded: each read after the first waits, and after ``patience`` s it is
            # the read timeout (a source that always says so must not spin for ever)
            now = time.monotonic()
            if again is None:
                again = now
                damaged()
            elif now - again >= patience and not ended:
                if end is None:  # the parsers keep what they hold
                    yield from _drain(video)
                    raise _Starved(f"no data it could read for {patience:g} s") from None
                end()
                ended = True
            elif wait(AGAIN_WAIT_S):
                return
            packets = c.demux(video, *audio)
            continue
        except (av.error.FFmpegError, OSError):
            # the read failed: FFmpeg's read timeout (a live source that went silent), a
            # connection reset. PyAV sends the decoder its flush packet at the end of the file
            # only; the frames it holds back (reordering, MPEG-2's one) came whole: out first
            yield from _drain(video)
            raise
        again = None
        if packet.is_corrupt:
            damaged()
        # by its stream: PyAV's flush packet at the end has stream_index 0 whatever its
        # stream (a video of another index lost the frames its decoder held back)
        if packet.stream.index != video.index:
            if packet.size:
                yield packet
            continue
        try:
            frames = packet.decode()
        except av.error.EOFError:
            # no damage: the decoder was drained (sent an empty packet, the end of the input)
            # and takes no packet after that (avcodec_send_packet), so none would decode
            raise
        except av.error.FFmpegError:
            cc = video.codec_context  # a new size the decoder refused: over the limit?
            check_pixels(cc.width or 0, cc.height or 0, name)
            # any error of one packet, not only InvalidDataError: damaged data makes decoders
            # fail with EINVAL (ArgumentError: an HEVC or VP9 picture of an impossible size)
            # and PATCHWELCOME (MJPEG sampling factors, an HEVC VPS flag) too, and the next
            # packets decode again; a decoder that stays broken (VP9 after an impossible
            # size, keyframes too) ends the input after MAX_UNDECODABLE, as for InvalidData
            rejected += 1
            if rejected >= MAX_UNDECODABLE:
                raise
            if not packet.is_corrupt:
                damaged()
            continue
        rejected = 0 if frames else rejected
        yield from frames


def _describe(url: str, frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> StreamInfo:
    fmt = frame.format.name
    rate = stream.average_rate or stream.guessed_rate
    return StreamInfo(
        path=url, container="live", index=stream.index, codec=stream.codec_context.name,
        width=frame.width, height=frame.height, frame_rate=Fraction(rate) if rate else None,
        time_base=TS_TIME_BASE, start_pts=None, frames=None, duration_s=None, pix_fmt=fmt,
        bit_depth=bit_depth_of(fmt),
        color=ColorInfo.of_frame(frame),
    )


@dataclass(frozen=True)
class TcpOutput:
    """A ``tcp://HOST:PORT[?options]`` output, which vsr connects (or, with ``listen=1``,
    accepts) itself: FFmpeg's tcp protocol, writing for PyAV, holds the GIL while it waits
    for a client and blocks writes without an interrupt callback, so neither Ctrl-C nor the
    report of an output that takes no data could work. Options as FFmpeg's: ``listen=1``,
    ``listen_timeout`` (ms), ``timeout`` (us, for connecting and for each write),
    ``tcp_nodelay``, ``send_buffer_size``."""

    host: str
    port: int
    listen: bool = False
    listen_timeout_s: float | None = None
    timeout_s: float | None = None
    nodelay: bool = False
    send_buffer: int | None = None

    @classmethod
    def parse(cls, url: str) -> TcpOutput | None:
        """None for another protocol. Raises ConfigError for a malformed URL or an option
        this does not support (``--via-ffmpeg`` hands the URL to the ffmpeg program)."""
        if not url.startswith("tcp://"):
            return None
        parts = urlsplit(url)
        try:
            host, port = parts.hostname, parts.port
            opts = dict(parse_qsl(parts.query, keep_blank_values=True))
            known = {"listen", "listen_timeout", "timeout", "tcp_nodelay", "send_buffer_size"}
            if set(opts) - known:
                raise ConfigError(f"tcp output option {sorted(set(opts) - known)[0]!r} is not "
                                  f"supported (only {', '.join(sorted(known))}; or --via-ffmpeg)")
            if opts.get("listen", "0") not in ("0", "1"):
                raise ConfigError("a tcp output listens for one client (listen=1) or none")

            def seconds(name: str, unit: float) -> float | None:
                v = int(opts[name]) if name in opts else -1
                return v * unit if v > 0 else None

            out = cls(host=host or "", port=port or 0, listen=opts.get("listen") == "1",
                      listen_timeout_s=seconds("listen_timeout", 1e-3),
                      timeout_s=seconds("timeout", 1e-6),
                      nodelay=opts.get("tcp_nodelay", "0") not in ("0", ""),
                      send_buffer=int(opts["send_buffer_size"])
                      if "send_buffer_size" in opts else None)
        except ValueError as exc:  # a port or a number that is none
            raise ConfigError(f"bad tcp output {url}: {exc}") from exc
        if not out.port or (not out.host and not out.listen):
            raise ConfigError(f"a tcp output needs a host and a port: {url}")
        return out

    def open(self, *, warn_after: float = 5.0) -> socket.socket:
        """The connected socket (blocking, or with ``timeout_s``); Ctrl-C ends the wait for a
        client, and a client that does not come for ``warn_after`` s is reported. Raises
        OutputError (refused, unreachable, nobody within ``listen_timeout``)."""
        where = f"tcp://{self.host}:{self.port}"
        try:
            if self.listen:
                sock = self._accept(where, warn_after)
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise OutputError(f"cannot open the output {where}: {exc.strerror or exc}") \
                from exc
        sock.settimeout(self.timeout_s)
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        return sock

    def _accept(self, where: str, warn_after: float) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((self.host, self.port))
            server.listen(1)
            server.settimeout(min(1.0, warn_after))  # short waits: time to report
            start = time.monotonic()
            warned = False
            while True:
                try:
                    conn, peer = server.accept()
                    break
                except TimeoutError:
                    waited = time.monotonic() - start
                    if self.listen_timeout_s is not None and waited >= self.listen_timeout_s:
                        raise OutputError(f"nobody connected to the output {where} within "
                                          f"{self.listen_timeout_s:g} s") from None
                    if not warned and waited >= warn_after:
                        warned = True
                        log.warning("the output %s waits for a receiver to connect", where)
            if warned:
                log.info("the output %s has a receiver: %s:%d", where, *peer[:2])
            return conn


# muxers that need one clock across their streams: rtp_mpegts hands every packet, audio or
# video, to a one-stream RTP muxer that refuses a dts behind the last ("non monotonically
# increasing dts"), and a live source's audio comes up to some 0.7 s after the video of its
# time (MPEG-TS muxers gather audio frames into PES packets)
_ONE_CLOCK = frozenset({"rtp_mpegts"})
LATE_AUDIO_S = 1.0  # on those: how long (output time) video waits for the audio of its time


def _whole_ts_datagrams(url: str, fmt: str | None) -> str:
    """``url`` where it is udp:// carrying MPEG-TS, with ``pkt_size=1316`` unless it says
    otherwise: FFmpeg's 1472-byte datagrams split TS packets (7 of 188 bytes and 156 of the
    next), which receivers expecting whole packets a datagram drop, as any receiver does the
    halves left by a datagram lost."""
    if fmt != "mpegts" or not url.startswith("udp://") or "pkt_size=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}pkt_size={7 * 188}"


def _open_fifo(path: str, *, warn_after: float = 5.0):
    """The FIFO ``path``, opened for writing once a reader has opened it. A plain open(2)
    waits for the reader inside C, where neither Ctrl-C nor a report gets through; this
    tries without waiting (ENXIO: no reader yet) every 0.1 s, says so once after
    ``warn_after`` s, and Ctrl-C ends the wait. Raises OutputError."""
    start, warned = time.monotonic(), False
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise OutputError(f"cannot open the output {path}: {exc.strerror}") from exc
        if not warned and time.monotonic() - start >= warn_after:
            warned = True
            log.warning("the output has taken no data for %.0f s (is anyone receiving it? "
                        "nobody has opened the FIFO %s for reading)", warn_after, path)
        time.sleep(0.1)
    if warned:
        log.info("the output takes data again after %.1f s: %s has a reader",
                 time.monotonic() - start, path)
    os.set_blocking(fd, True)  # from now on, a reader that stalls: _Flushed reports it
    return os.fdopen(fd, "wb")


class _Interrupted(Exception):
    """Ctrl-C during a write into a pipe (PyAV passes on Exceptions only)."""


class _Flushed:
    """A buffered pipe that PyAV writes through at once: PyAV never flushes a Python file,
    and a buffer of a few KB holds a second or more of a small stream back.

    A write that blocks for ``warn_after`` seconds (nobody receiving: an SRT listener nobody
    called, a stalled reader of stdout) is logged once as a warning, and its end as info; the
    stream loop cannot report then, because it is inside that write. Call :meth:`stop` when done.
    """

    def __init__(self, file, *, warn_after: float = 5.0) -> None:
        self._file = file
        self._warn_after = warn_after
        self._since: float | None = None  # monotonic start of the write in progress
        self._warned: float | None = None  # the start of the write that was reported
        self._stopped = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, name="vsr-output-watch",
                                       daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        while not self._stopped.wait(min(1.0, self._warn_after / 4)):
            since = self._since
            if since is not None and self._warned != since \
                    and time.monotonic() - since >= self._warn_after:
                self._warned = since
                log.warning("the output has taken no data for %.0f s (is anyone receiving it?)",
                            time.monotonic() - since)

    def write(self, data: bytes) -> int:
        since = self._since = time.monotonic()
        try:
            n = self._file.write(data)
            self._file.flush()
        except KeyboardInterrupt as exc:  # e.g. blocked on an srt listener nobody calls
            raise _Interrupted from exc
        finally:
            self._since = None
        if self._warned == since:
            log.info("the output takes data again after %.1f s", time.monotonic() - since)
        return n

    def stop(self) -> None:
        self._stopped.set()


class LiveSink:
    """Encodes RGB frames at monotonic times (seconds) and muxes them to ``url``, with the
    audio of ``audio`` copied alongside.

    Opened on the first frame (its size is known then). ``close`` flushes the encoder and
    finishes the container, so the receiver sees a clean end. ``srt://`` (or ``via_ffmpeg``)
    goes through an :class:`~vsr.io.ffmpeg_sink.FfmpegRelay`. Without ``overwrite``, an
    existing regular file is refused (OutputError) rather than replaced. Raises OutputError.
    """

    def __init__(self, url: str, encode: EncodeConfig, *, output_format: str | None,
                 gop: int | None, via_ffmpeg: bool, audio: AudioFeed | None = None,
                 overwrite: bool = False) -> None:
        self.url, self.encode, self.gop, self.audio = url, encode, gop, audio
        self.overwrite = overwrite
        self.format = output_format or default_format(url)
        self.via_ffmpeg = via_ffmpeg or url.startswith("srt://")
        self._out = None
        self._relay: FfmpegRelay | None = None
        self._pass: LivePassthrough | None = None
        self._pipe: _Flushed | None = None
        self._tcp = None if self.via_ffmpeg else TcpOutput.parse(url)
        self._sock: socket.socket | None = None
        self._file = None  # the socket's or FIFO's file, which PyAV writes to (through _pipe)
        self._last_pts = -1
        self._aborted = False
        self.frames = 0
        # video packets that wait for the audio of their time, on an output of one clock
        self._one_clock = not self.via_ffmpeg and self.format in _ONE_CLOCK
        self._held: collections.deque[av.Packet] = collections.deque()

    @property
    def audio_packets(self) -> int:
        """Audio packets written so far."""
        return sum(self._pass.copied.values()) if self._pass is not None else 0

    @property
    def audio_late(self) -> int:
        """Audio packets dropped for coming too late for an output of one clock."""
        return self._pass.late if self._pass is not None else 0

    def _open(self, info: StreamInfo, width: int, height: int) -> None:
        # the muxer holds a packet back until every stream has one; bound that wait
        options = {"flush_packets": "1", "max_interleave_delta": "100000"}
        if streams_to_pipe(self.url) and not self.via_ffmpeg:
            options.update(pipe_options(self.format))
        claimed = None
        if not self.overwrite:  # again: the first frame may come long after the start
            if self.via_ffmpeg or self._tcp is not None:
                refuse_existing_file(self.url)  # (the ffmpeg relay itself gets -n)
            else:
                claimed = claim_new_file(self.url)  # exclusively: no other run writes it
        try:
            if self.via_ffmpeg:
                self._relay = FfmpegRelay(self.url, self.format or "mpegts",
                                          overwrite=self.overwrite,
                                          options=pipe_options(self.format)
                                          if self.url == "-" else None)
                self._pipe = _Flushed(self._relay.stdin)
                target, fmt = self._pipe, "mpegts"
            elif self.url == "-":
                self._pipe = _Flushed(sys.stdout.buffer)
                target, fmt = self._pipe, self.format
            elif self._tcp is not None:
                self._sock = self._tcp.open()
                self._file = self._sock.makefile("wb")
                self._pipe = _Flushed(self._file)
                target, fmt = self._pipe, self.format
            elif (path := local_path(self.url)) is not None and _is_fifo(path):
                self._file = _open_fifo(path)
                self._pipe = _Flushed(self._file)
                target, fmt = self._pipe, self.format
            else:
                target, fmt = _whole_ts_datagrams(self.url, self.format), self.format
            self._out = open_media(target, mode="w", format=fmt, container_options=options)
            rate = info.frame_rate or Fraction(25)
            stream = self._out.add_stream(self.encode.codec, rate=rate)
            self._enc = VideoEncoder(stream, info, width, height, self.encode)
            cc = stream.codec_context
            if cc.name in ("libx264", "libx265"):
                cc.options = {**cc.options, "tune": "zerolatency",
                              "preset": self.encode.preset or "veryfast"}
            cc.gop_size = self.gop or max(1, round(rate))
            self._stream = stream
            if self.audio is not None and self.audio.templates:
                self._pass = LivePassthrough(self.audio)
                self._pass.add_streams(self._out)
            self._out.start_encoding()
        except BaseException as exc:
            self.abort()
            if claimed is not None:  # the empty file made above: nothing was written
                with contextlib.suppress(OSError):
                    os.unlink(claimed)
            if isinstance(exc, (av.error.FFmpegError, OSError, ValueError)):
                raise OutputError(f"cannot open the output {self.url}: {exc}") from exc
            raise

    def write(self, image: np.ndarray, t: float, info: StreamInfo) -> None:
        if self._aborted:
            return
        if self._out is None:
            self._open(info, image.shape[1], image.shape[0])
        pts = round(t / TS_TIME_BASE)
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the input did
        self._last_pts = pts
        self._mux(self._stream.encode(self._enc.frame(image, pts)))
        self.frames += 1

    def _mux(self, packets: list[av.Packet], *, end: bool = False) -> None:
        """Video packets, each after the audio up to its time. On an output of one clock
        (_ONE_CLOCK) with audio, a video packet waits until the audio of its time has come,
        or until the video is LATE_AUDIO_S past it (``end``: no longer), and audio that
        comes after the video of its time went out is dropped, counted."""
        self._held.extend(packets)
        try:
            while self._held:
                pkt = self._held[0]
                ts = pkt.dts if pkt.dts is not None else pkt.pts
                t = float(ts * pkt.time_base) if ts is not None else None
                if not end and self._waits_for_audio(t):
                    break
                self._held.popleft()
                if self._pass is not None:
                    self._pass.mux_until(self._out, t)
                self._out.mux(pkt)
                if self._one_clock and self._pass is not None and t is not None:
                    self._pass.floor = t
        except _Interrupted:
            # the output does not take data: a clean close would block the same way
            log.warning("interrupted while the output was blocked: abandoning it")
            self.abort()
            raise KeyboardInterrupt from None
        except (av.error.FFmpegError, OSError) as exc:
            err = self._relay.error() if self._relay is not None else None
            raise err or OutputError(f"writing {self.url} failed: {exc}") from exc

    def _waits_for_audio(self, t: float | None) -> bool:
        """Whether the video packet at ``t`` s waits for audio (see :meth:`_mux`)."""
        if not self._one_clock or self._pass is None or t is None or self.audio.end >= t:
            return False
        newest = self._held[-1]
        ts = newest.dts if newest.dts is not None else newest.pts
        return ts is not None and float(ts * newest.time_base) - t < LATE_AUDIO_S

    def close(self) -> None:
        if self._aborted:
            return
        if self._out is None:
            self._finish_relay()
            return
        try:
            self._mux(self._stream.encode(None), end=True)
            if self._pass is not None:
                self._pass.mux_rest(self._out)
            out, self._out = self._out, None
            out.close()
        except (av.error.FFmpegError, OSError) as exc:
            self.abort()
            raise OutputError(f"finishing {self.url} failed: {exc}") from exc
        except BaseException:
            self.abort()
            raise
        self._finish_relay()

    def abort(self) -> None:
        self._aborted = True
        self._held.clear()
        self._stop_watch()
        if self._relay is not None:  # first: closing the output writes into its pipe
            self._relay.kill()
            self._relay = None
        if self._sock is not None:  # and the socket, so that the close cannot block on it
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._out is not None:
            with contextlib.suppress(Exception):
                self._out.close()
            self._out = None
        self._close_socket()

    def _close_socket(self) -> None:
        """The socket's or FIFO's file, then the socket (it closes with its last user)."""
        file, sock, self._file, self._sock = self._file, self._sock, None, None
        if file is not None:
            with contextlib.suppress(OSError, ValueError):
                file.close()  # flushed already (by _Flushed): nothing left to block on
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _finish_relay(self) -> None:
        self._stop_watch()
        self._close_socket()
        if self._relay is not None:
            relay, self._relay = self._relay, None
            relay.finish()

    def _stop_watch(self) -> None:
        if self._pipe is not None:
            self._pipe.stop()
            self._pipe = None
