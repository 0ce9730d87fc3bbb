"""`run_stream`: a live source, upscaled, to a live destination with bounded latency.

reader thread (decode, monotonic times, reconnect) -> DropQueue (policy, counted drops)
-> inference and encoding in the calling thread -> destination; the source's audio packets
go around the queue (AudioFeed) and are muxed, copied, next to the video of the same time.
Ctrl-C (KeyboardInterrupt in the calling thread) or the end of the source flushes the encoder
and closes the output; under ``drop="none"`` a stop first writes every frame already read.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import av

from vsr.errors import ConfigError, InputError, OutputError
from vsr.io.sink import EncodeConfig, check_codec
from vsr.io.source import Frame
from vsr.options import (
    STREAM_DEFLICKER,
    RunOptions,
    check_at_least,
    check_callable,
    check_choice,
    check_number,
    check_type,
)
from vsr.stream.audio import AudioFeed
from vsr.stream.io import (
    IDLE,
    DropQueue,
    LiveFrame,
    LiveSink,
    Reader,
    TcpOutput,
    check_format,
    check_output_name,
    check_pipe_format,
    refuse_existing_file,
    same_file,
)

log = logging.getLogger(__name__)

DROP_POLICIES = ("oldest", "none")


@dataclass(frozen=True)
class StreamConfig(RunOptions):
    """One live run: ``src`` and ``dst``, the model options of :class:`vsr.options.RunOptions`
    (keyword-only) and the live settings. Validated on construction (ConfigError).

    As `vsr stream`: without ``model`` (at x2) the registry's STREAM_MODEL runs, and
    ``deflicker`` is :data:`vsr.options.STREAM_DEFLICKER` (0.5; 0: off), for the compressed
    input live streams are."""

    src: str
    dst: str
    deflicker: float = field(default=STREAM_DEFLICKER, kw_only=True)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    max_latency_ms: int = 1000
    drop: str = "oldest"
    reconnect: bool = False
    read_timeout_s: float = 5.0
    backoff_max_s: float = 8.0
    input_format: str | None = None
    output_format: str | None = None
    gop: int | None = None  # keyframe interval in frames; None: one second
    via_ffmpeg: bool = False
    stats_interval_s: float = 2.0
    audio: bool = True  # copy the source's audio streams (packets, not re-encoded)
    deinterlace: bool = True  # interlaced sources (vsr.io.source.Deinterlacer)
    overwrite: bool = False  # replace a DST that is an existing regular file

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("src", "dst"):  # URLs, `-` or file names
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a URL, - or a file name, not "
                                  f"{getattr(self, name)!r}")
            check_port(name, getattr(self, name))
        check_type("encode", self.encode, EncodeConfig)
        check_encoder(self.encode)  # here: the encoder opens at the first frame, maybe late
        check_type("input_format", self.input_format, str, optional=True)
        check_type("output_format", self.output_format, str, optional=True)
        check_choice("drop", self.drop, DROP_POLICIES)
        check_at_least("max_latency_ms", self.max_latency_ms, 1)
        for name in ("read_timeout_s", "backoff_max_s", "stats_interval_s"):  # NaN too
            check_number(name, getattr(self, name), above=0)
        check_at_least("gop", self.gop, 1, optional=True)
        if self.src == self.dst and self.src != "-":
            raise ConfigError("source and destination are the same")
        check_format(self.input_format, output=False)
        if not (self.via_ffmpeg or self.dst.startswith("srt://")):  # else the ffmpeg program
            check_format(self.output_format, output=True)  # muxes, with its own muxers
            if self.output_format is None:  # here, not at the first frame
                check_output_name(self.dst)
            check_pipe_format(self.dst, self.output_format)
            TcpOutput.parse(self.dst)  # vsr connects tcp:// outputs itself: their options


def check_port(name: str, url: str) -> None:
    """Raise ConfigError for a network URL whose port is not one (udp://host:99999 went to
    port 34463, FFmpeg taking it modulo 65536)."""
    if "://" not in url or url.startswith("file:"):
        return
    try:
        urlsplit(url).port  # noqa: B018 - the property checks the range
    except ValueError as exc:
        raise ConfigError(f"bad {name} {url}: {exc}") from exc


def check_encoder(encode: EncodeConfig) -> None:
    """Raise ConfigError unless PyAV has the video encoder ``encode.codec`` and it takes
    ``encode.pix_fmt`` (crf and x264/x265 presets: EncodeConfig checks them)."""
    check_codec(encode.codec)
    formats = [f.name for f in (av.codec.Codec(encode.codec, "w").video_formats or ())]
    if encode.pix_fmt is not None and formats and encode.pix_fmt not in formats:
        raise ConfigError(f"{encode.codec} cannot encode {encode.pix_fmt}; it takes "
                          f"{', '.join(formats)}")


def check_paths(config: StreamConfig) -> None:
    """Refuse, before anything opens, a DST that is SRC's own file (a symbolic or hard link to
    it: writing would truncate the source), and an existing DST file without ``overwrite``.
    ``-``, FIFOs, devices and URLs are not files here; ``-`` needs the standard stream open.
    Raises OutputError (InputError for a closed stdin)."""
    if config.src == "-" and sys.stdin is None:  # started with its stdin closed (<&-)
        raise InputError("standard input is closed: there is nothing to read as -")
    if config.dst == "-" and sys.stdout is None:
        raise OutputError("standard output is closed: there is nowhere to write -")
    if same_file(config.src, config.dst):
        raise OutputError(f"source and destination are the same file: {config.dst} is "
                          f"{config.src}")
    if not config.overwrite:
        refuse_existing_file(config.dst)


@dataclass(frozen=True)
class StreamStats:
    """Counters since the start, and rates and latency over the last interval."""

    elapsed_s: float
    frames_in: int
    frames_out: int
    dropped: int
    fps_in: float
    fps_out: float
    latency_ms: float | None  # mean arrival -> written, over the interval (final: the run)
    latency_max_ms: float | None
    reconnects: int
    final: bool = False
    error: str | None = None
    audio_in: int = 0  # audio packets read from the source
    audio_out: int = 0  # audio packets written (copied)
    model: str | None = None  # the model that upscales the stream
    precision: str | None = None  # the dtype it computes in (known from the first frame on)
    corrupt: int = 0  # damaged source packets skipped (the decoder concealed what it could)
    audio_skipped: int = 0  # audio packets read, not copied: behind the audio already out on
    # the output clock, past MAX_QUEUED waiting for video (a source whose video stalls), or,
    # on an output of one clock (rtp://), later than LATE_AUDIO_S behind their video
    overflowed: int = 0  # of ``dropped``: younger than the latency limit, but past the
    # memory the frames waiting for the model may take (vsr.stream.io.MAX_QUEUE_BYTES)
    left_at_stop: int = 0  # read, not written, for a stop (Ctrl-C, SIGTERM, SIGHUP): waiting
    # for the model under ``oldest``; under ``none`` only those a second stop cut short
    # (``dropped`` counts the policy's drops only; final: in = out + dropped + left_at_stop)

    def to_json(self) -> dict:
        return asdict(self)


class _Meter:
    def __init__(self, start: float, model: str) -> None:
        self.start = self.mark = start
        self.model = model
        self.precision: str | None = None
        self.in_mark = self.out_mark = 0
        self.lat: list[float] = []
        self.total = [0.0, 0, 0.0]  # sum, count, max of every latency (for the final report)

    def add(self, latency: float) -> None:
        self.lat.append(latency)
        self.total = [self.total[0] + latency, self.total[1] + 1, max(self.total[2], latency)]

    def stats(self, reader: Reader, queue: DropQueue, sink: LiveSink, frames_out: int,
              now: float, final: bool = False, error: str | None = None,
              left: int = 0) -> StreamStats:
        lat = self.lat
        mean = sum(lat) / len(lat) if lat else None
        peak = max(lat) if lat else None
        if final:  # the final line covers the whole run: its rates and latencies too
            self.mark, self.in_mark, self.out_mark = self.start, 0, 0
            if self.total[1]:
                mean, peak = self.total[0] / self.total[1], self.total[2]
        span = max(1e-9, now - self.mark)
        s = StreamStats(
            elapsed_s=round(now - self.start, 3), frames_in=reader.frames,
            frames_out=frames_out, dropped=queue.dropped, overflowed=queue.overflowed,
            fps_in=round((reader.frames - self.in_mark) / span, 2),
            fps_out=round((frames_out - self.out_mark) / span, 2),
            latency_ms=round(1000 * mean, 1) if mean is not None else None,
            latency_max_ms=round(1000 * peak, 1) if peak is not None else None,
            reconnects=reader.reconnects, final=final, error=error, left_at_stop=left,
            audio_in=reader.audio.received if reader.audio is not None else 0,
            audio_out=sink.audio_packets, model=self.model, precision=self.precision,
            corrupt=reader.corrupt,
            audio_skipped=sink.audio_late
            + (reader.audio.skipped if reader.audio is not None else 0))
        if not final:
            self.mark, self.in_mark, self.out_mark, self.lat = now, reader.frames, frames_out, []
        return s


def with_stream_model(config: StreamConfig) -> StreamConfig:
    """``config`` with its model filled in: without one (at x2), the registry's STREAM_MODEL,
    trained for compressed input, since live streams are compressed."""
    if config.model is not None or config.scale not in (None, 2):
        return config
    from vsr.models import STREAM_MODEL

    return dataclasses.replace(config, model=STREAM_MODEL)


def run_stream(config: StreamConfig,
               stats: Callable[[StreamStats], None] | None = None) -> StreamStats:
    """Run until the source ends (or, with reconnect, until interrupted); returns the totals.

    ``stats`` is called every ``stats_interval_s`` and once at the end (``final``), from the
    calling thread. Raises ConfigError/ModelError before anything starts; OutputError or
    PipelineError when the output fails; OutputError before anything starts for a DST that
    is SRC's file or an existing file without ``overwrite``. A source that fails is no
    exception: the output is closed cleanly and the returned ``error`` says why.
    Ctrl-C is a normal stop: the output is closed cleanly; under ``drop="none"`` after the
    frames already read are written (a second Ctrl-C skips them: ``left_at_stop``). So is a
    KeyboardInterrupt that ``stats`` raises (at the end too: the totals are returned); any
    other exception it raises stops the stream as cleanly, then propagates (also where
    closing the output then fails: that error is logged and chained to it as its
    ``__context__``).
    """
    check_type("config", config, StreamConfig)
    check_callable("stats", stats)
    from vsr.engine import ModelCache
    from vsr.loading import dtype_name

    check_paths(config)
    config = with_stream_model(config)
    models = ModelCache()
    handle = models.handle(config, config.device)
    processor = None  # made on the first frame, once the backend is prepared on it
    stop = threading.Event()
    # under "none" the reader waits for room (8 frames); under "oldest" frames wait by age,
    # within MAX_QUEUE_BYTES
    queue = DropQueue(8, config.drop, config.max_latency_ms / 1000)
    audio = AudioFeed() if config.audio else None
    reader = Reader(config.src, queue, stop, reconnect=config.reconnect,
                    read_timeout=config.read_timeout_s, backoff_max=config.backoff_max_s,
                    input_format=config.input_format, audio=audio,
                    deinterlace=config.deinterlace)
    sink = LiveSink(config.dst, config.encode, output_format=config.output_format,
                    gop=config.gop, via_ffmpeg=config.via_ffmpeg, audio=audio,
                    overwrite=config.overwrite)
    meter = _Meter(time.monotonic(), handle.name)
    written = 0
    pending: dict[int, LiveFrame] = {}  # handed to the model, not written yet
    last_report = meter.start

    def emit(done) -> None:
        nonlocal written
        frame, image = done
        live = pending.pop(frame.index)
        t, arrived, info = live.t, live.arrived, live.info
        sink.write(image, t, info)
        meter.add(time.monotonic() - arrived)
        written += 1

    index = 0
    prepared = None
    busy = False  # in the model or the encoder: a stop there leaves the processor's state cut
    failed: Exception | None = None  # the stats callback's: raised once the output is closed
    try:
        try:
            reader.start()  # inside: a stop right after it still aborts the sink
            while (item := queue.get(stop, timeout=config.stats_interval_s)) is not None:
                if item is not IDLE:  # at one size: the reader fits the frames of another
                    if processor is None:  # "auto" precision depends on the frames
                        size = item.image.shape
                        depth = 8 * item.image.dtype.itemsize  # uint8 or uint16
                        framed = models.handle(config, config.device, bit_depth=depth,
                                               pixels=size[0] * size[1])
                        if framed is not handle:  # small or deep frames: another precision;
                            models.release(handle)  # the one loaded to fail early goes
                        handle = framed
                        meter.precision = dtype_name(handle.dtype)
                        prepared = models.prepare(handle, config, item.image)
                        processor = prepared.processor()
                    pending[index] = item
                    frame, index = Frame(index, None, item.image), index + 1
                    busy = True
                    for done in processor.submit(frame):
                        emit(done)
                    busy = False
                now = time.monotonic()
                if stats is not None and now - last_report >= config.stats_interval_s:
                    last_report = now
                    try:  # a KeyboardInterrupt from it is Ctrl-C: the handler below
                        stats(meter.stats(reader, queue, sink, written, now))
                    except Exception as exc:  # the caller's failure: the output still ends
                        log.info("the stats callback failed (%s): closing the output", exc)
                        failed = exc
                        break
        except KeyboardInterrupt:
            log.info("interrupted: closing the output")
            stop.set()
            if config.drop == "none" and processor is not None:
                processor = _finish_read(processor, prepared, busy, pending, index,
                                         queue, reader, emit)
        stop.set()
        for done in processor.drain() if processor is not None else ():
            emit(done)
        sink.close()
    except BaseException as exc:
        stop.set()
        sink.abort()
        if failed is not None and isinstance(exc, Exception):
            # the callback's failure is the one to raise; the close's is said, and is its
            # __context__ (not its cause: "from exc" would say the close made the callback fail)
            log.warning("the output was abandoned after the stats callback failed: %s", exc)
            raise failed  # noqa: B904
        raise
    finally:
        if reader.is_alive():  # False too if a stop cut its start short
            reader.join(timeout=2.0)  # a reader blocked on a silent source is a daemon thread
    if failed is not None:
        raise failed
    if left := queue.settle(reader.frames, written):  # read, not written: a stop came
        log.info("%d frames read before the stop were not written", left)
    final = meter.stats(reader, queue, sink, written, time.monotonic(), final=True,
                        error=reader.error, left=left)
    if stats is not None:
        try:
            stats(final)
        except KeyboardInterrupt:  # Ctrl-C: a normal stop, and the output is closed already
            log.info("interrupted while reporting the totals")
    return final


def _finish_read(processor, prepared, busy: bool, pending: dict, index: int,
                 queue: DropQueue, reader: Reader, emit: Callable) -> object | None:
    """Under ``--drop none``, at a stop: compute and write every frame already read (those
    the model holds, one the stop cut short in it, those waiting in ``queue``: at most its
    capacity, a batch and the one the reader puts as it stops), so a file or pipe source
    loses none. ``index`` is the next frame's. Returns the processor to drain, or None
    where a second stop cut this short (what it left is counted at the end, as
    ``left_at_stop``).

    A stop in the model or the encoder (``busy``) leaves the processor's state cut (a batch
    taken out of it, a repeat's bookkeeping): a fresh one takes every frame not written, in
    order (the deflicker filter starts again there)."""
    try:
        if busy:
            processor = prepared.processor()
            for i in sorted(pending):
                for done in processor.submit(Frame(i, None, pending[i].image)):
                    emit(done)
        ended = threading.Event()
        ended.set()  # the queue's get: what waits now, then None
        while True:
            if (item := queue.get(ended)) is None:
                if not reader.is_alive():
                    return processor
                reader.join(timeout=0.5)  # the frame it was putting as the stop came
                if (item := queue.get(ended)) is None:
                    return processor
            pending[index] = item
            for done in processor.submit(Frame(index, None, item.image)):
                emit(done)
            index += 1
    except KeyboardInterrupt:
        log.info("interrupted again: the frames read and not yet written are left")
        return None
