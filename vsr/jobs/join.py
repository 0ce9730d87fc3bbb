"""Joining finished segment files into one output, with the input's other streams copied.

Video packets are copied from the segments in order (no re-encoding), with their pts as
encoded, so every frame keeps the input's timestamp; audio, subtitles and attachments are
copied packet for packet from the input by the engine's Passthrough, interleaved by time.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av

from vsr.errors import OutputError, PipelineError
from vsr.io.info import StreamInfo, declared_end, written_time_base
from vsr.io.output import check_output_path, discard, finish, temp_path_for, write_error
from vsr.io.passthrough import Passthrough, container_tags, metadata_movflags
from vsr.io.paths import file_url, negative_ts_option, open_media
from vsr.io.sink import cannot_hold, check_codec, check_holds
from vsr.io.source import PyAVSource

log = logging.getLogger(__name__)


def segment_offset(info: StreamInfo) -> int:
    """Ticks (of the input video's time base) added to every timestamp in a segment file and
    taken off again by the join: NUT refuses a negative pts, and an input may start below
    zero (an MPEG-TS recording whose 33-bit clock wraps, read by FFmpeg as times before zero
    up to the wrap). 0 for the usual input."""
    return max(0, -(info.start_pts or 0))


def check_output_codec(output: Path, codec: str) -> None:
    """Raise OutputError unless the container ``output``'s name asks for can hold ``codec``
    video (ffv1 in .mov cannot): the join would fail only after every segment was computed.
    Opens no file (the format is guessed from the name). Raises ConfigError for an unknown
    encoder."""
    check_codec(codec)
    try:
        out = open_media(file_url(output), mode="w")
    except ValueError as exc:  # no format by that name: as the sink says it, before any work
        raise OutputError(f"cannot write {output}: {exc}") from exc
    except (av.error.FFmpegError, OSError):
        return  # a name the sink itself refuses: the join says why, in the sink's words
    try:
        out.add_stream(codec)
        check_holds(output, out.format.name, codec)
    except (av.error.FFmpegError, ValueError, TypeError) as exc:
        raise cannot_hold(output, out.format.name, codec) from exc
    finally:
        with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
            out.close()


def join_segments(input_path: Path, segments: list[Path], output: Path, *,
                  overwrite: bool = False, frames: list[int] | None = None,
                  recorded: Callable[[], None] | None = None,
                  unchanged: Callable[[], None] | None = None,
                  moving: Callable[[int], None] | None = None,
                  audio: bool = True) -> dict[int, int]:
    """Write ``output`` from the segment files and the input's other streams.

    ``recorded``: called once the output is in place (to record it as done); a stop signal
    (SIGINT, SIGTERM, SIGHUP) that comes from the move into place until it returns is held and
    delivered after, so that a stop cannot leave a finished output its record does not know.

    ``unchanged``: called once the output is written, before it is moved into place: an
    error it raises (the input replaced meanwhile) fails the join, with nothing left behind.

    ``moving``: called with the finished output's size just before it is moved into place (to
    record what is about to be there: a kill -9 between the move and ``recorded`` then leaves
    a rerun able to tell its own output from a stranger's).

    ``audio`` False: every audio stream of the input is left out (`--no-audio`).

    ``frames``: the frames each segment must hold (one video packet each); a segment with
    more or fewer fails the join, so no frame is ever lost or doubled silently. (What the
    output loses of the input, its HDR10 metadata or interlacing, the segments have warned
    of, once per file: vsr.jobs.segments.TASK_LOGGERS.) Returns the copied packet count per
    input stream. Raises OutputError (a failed write: a full disk, a file size limit) or
    PipelineError (segments that cannot be read, hold other frame counts or do not fit
    together); on failure no output is left behind.
    """
    if not segments:
        raise PipelineError("no segments to join")
    if frames is not None and len(frames) != len(segments):
        raise PipelineError(f"{len(segments)} segments to join but {len(frames)} frame counts")
    final = check_output_path(output, overwrite=overwrite, input_path=input_path)
    with PyAVSource(input_path) as source:
        info = source.info
    temp = temp_path_for(final)
    options: dict[str, str] = {}
    keep_range = info.color.range in (1, 2) and final.suffix.lower() in (".mp4", ".m4v")
    if keep_range:  # as the upscale sinks: MP4's 'colr' box holds the range alone
        options["movflags"] = "+write_colr"
    try:
        out = open_media(file_url(temp), mode="w", container_options=options)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        discard(temp)
        raise OutputError(f"cannot write {final}: {exc}") from exc
    passthrough = Passthrough(str(input_path), exclude=info.index, audio=audio)
    passthrough.output_name = final
    try:
        with _open_segment(segments[0]) as first:
            template = first.streams.video[0]
            extradata = template.codec_context.extradata
            # AVI, raw streams, MPEG-1/2: one frame a tick, as the sinks wrote the segments
            tick = written_time_base(info, out.format.name, template.codec_context.name)
            holder: list[av.stream.Stream] = []

            def add_video() -> None:
                try:
                    stream = out.add_stream_from_template(template)
                except (av.error.FFmpegError, ValueError, TypeError) as exc:
                    raise cannot_hold(final, out.format.name, template.codec_context.name
                                      ) from exc
                stream.time_base = tick
                if keep_range:
                    stream.codec_context.color_range = info.color.range
                if info.frame_rate:  # the segment's is its time base (a MOV timecode track
                    stream.codec_context.framerate = info.frame_rate  # counts in frames)
                if info.rotation:  # as the upscale sink: the template carries no side data
                    stream.set_display_rotation(info.rotation)
                holder.append(stream)

            tags = container_tags(passthrough.metadata)
            out.metadata.update(tags)
            if flags := metadata_movflags(out.format.name, tags):  # as the sinks; at the header
                out.container_options["movflags"] = out.container_options.get("movflags", "") \
                    + flags
            passthrough.add_streams(out, add_video)
            video = holder[0]
        with open_media(file_url(input_path)) as src:
            meta = dict(src.streams[info.index].metadata)
            # where the input's video ends: its last picture shows until then (a slideshow's
            # 5 s); NUT segments keep no packet durations to say so
            end = declared_end(src, src.streams[info.index])
        video.metadata.update(passthrough.tags_for_video(meta))
        chapters = passthrough.chapters
        if chapters:
            with contextlib.suppress(av.error.FFmpegError, TypeError, ValueError):
                out.set_chapters(chapters)
        # as the upscale sink (read at the header): the input's times where the muxer keeps them
        out.container_options["avoid_negative_ts"] = negative_ts_option(
            out.format.name, copies_streams=bool(passthrough.copied))
        try:
            out.start_encoding()
        except av.error.FFmpegError as exc:
            raise OutputError(f"cannot start writing {final}: {exc}") from exc
        last_dts: int | None = None
        offset = segment_offset(info)
        for k, path in enumerate(segments):
            last_dts, count = _copy_segment(path, out, video, passthrough, info.time_base,
                                            extradata, last_dts, offset, tick,
                                            end if k == len(segments) - 1 else None)
            if frames is not None and count != frames[k]:
                raise PipelineError(f"segment {path.name} holds {count} frames where "
                                    f"{frames[k]} were written")
        passthrough.mux_rest(out)
        try:
            out.close()
        except (av.error.FFmpegError, OSError) as exc:  # the trailer: a full disk
            raise write_error(final, exc, "finishing") from exc
        if unchanged is not None:
            unchanged()
    except BaseException:
        with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
            out.close()
        passthrough.close()
        discard(temp)
        raise
    passthrough.close()
    with stop_signals_held():
        if moving is not None:
            moving(temp.stat().st_size)
        finish(temp, final, replace=overwrite)
        if recorded is not None:
            recorded()
    return dict(passthrough.copied)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP are held: the first one that comes is
    delivered to the previous handler once the block is over (a KeyboardInterrupt raised
    then, not halfway through the block). Only the main thread runs signal handlers; in any
    other thread, and for a signal that is ignored, this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)

    previous: dict[int, object] = {}
    try:
        for s in _STOP_SIGNALS:  # recorded before it is replaced: a stop meanwhile restores it
            handler = signal.getsignal(s)
            if handler not in (signal.SIG_IGN, None):
                previous[s] = handler
                signal.signal(s, hold)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if received:  # the stop wins over an error of the block, as it would have before
            signal.raise_signal(received[0])


def _open_segment(path: Path) -> av.container.InputContainer:
    try:
        seg = open_media(file_url(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise PipelineError(f"cannot read segment {path.name}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from exc
    if not seg.streams.video:
        seg.close()
        raise PipelineError(f"segment {path.name} holds no video")
    return seg


def _demux(seg: av.container.InputContainer, stream: av.stream.Stream, path: Path):
    """The segment's packets; a read error (a damaged file) is a PipelineError naming it."""
    packets = seg.demux(stream)
    while True:
        try:
            pkt = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            raise PipelineError(f"cannot read segment {path.name}: "
                                f"{exc.strerror or exc}") from exc
        yield pkt


def _copy_segment(path: Path, out: av.container.OutputContainer, video: av.stream.Stream,
                  passthrough: Passthrough, tb: Fraction, extradata: bytes | None,
                  last_dts: int | None, offset: int = 0, tick: Fraction | None = None,
                  end: int | None = None) -> tuple[int | None, int]:
    """Mux one segment's packets (rebased to ``tb``, ``offset`` ticks taken off: see
    :func:`segment_offset`; then rounded to ``tick``, the output's time base where it is
    coarser: AVI's one frame a tick); returns the last dts written and the number of video
    packets (frames) copied. ``end`` (in ``tb``): where the last picture's time ends."""
    count = 0
    last = _last_pts(path, tb) if end is not None else None
    last = last - offset if last is not None else None
    with _open_segment(path) as seg:
        stream = seg.streams.video[0]
        if stream.codec_context.extradata != extradata:
            raise PipelineError(f"segment {path.name} was encoded with other codec parameters")
        step = _frame_step(stream, tick or tb)  # in the ticks the packets are muxed in
        waiting: list[av.Packet] = []
        for pkt in _demux(seg, stream, path):
            if pkt.size == 0:
                continue
            count += 1
            _rebase(pkt, tb)
            if offset:
                if pkt.pts is not None:
                    pkt.pts -= offset
                if pkt.dts is not None:
                    pkt.dts -= offset
            if last is not None and pkt.pts == last and end > last:
                pkt.duration = end - last
            if tick is not None and tick != tb:
                for attr in ("pts", "dts", "duration"):
                    if (value := getattr(pkt, attr)) is not None:
                        setattr(pkt, attr, round(value * tb / tick))
                pkt.time_base = tick
            if pkt.dts is None:
                # NUT stores no dts for the packets before the first one with dts >= 0:
                # they precede it by one frame each, as the encoder had them.
                waiting.append(pkt)
                continue
            for k, early in enumerate(waiting):
                early.dts = pkt.dts - (len(waiting) - k) * step
                last_dts = _mux(out, video, passthrough, early, last_dts)
            waiting.clear()
            last_dts = _mux(out, video, passthrough, pkt, last_dts)
        for k, early in enumerate(waiting):  # a segment of only dts-less packets
            early.dts = min(early.pts, (last_dts or early.pts) + (k + 1) * step)
            last_dts = _mux(out, video, passthrough, early, last_dts)
    return last_dts, count


def _last_pts(path: Path, tb: Fraction) -> int | None:
    """The latest pts of a segment's video packets, in ``tb`` (a read of its packets)."""
    with _open_segment(path) as seg:
        stream = seg.streams.video[0]
        times = [pkt.pts * Fraction(pkt.time_base) for pkt in _demux(seg, stream, path)
                 if pkt.size and pkt.pts is not None]
    return round(max(times) / tb) if times else None


def _mux(out: av.container.OutputContainer, video: av.stream.Stream, passthrough: Passthrough,
         pkt: av.Packet, last_dts: int | None) -> int:
    if last_dts is not None and pkt.dts <= last_dts:
        pkt.dts = last_dts + 1
    if pkt.pts is not None and pkt.dts > pkt.pts:
        raise PipelineError(f"segments do not join: dts {pkt.dts} after pts {pkt.pts}")
    passthrough.mux_until(out, float(pkt.dts * pkt.time_base))
    dts = pkt.dts  # in the segments' ticks: mux rescales the packet to the muxer's own
    pkt.stream = video
    try:
        out.mux(pkt)
    except av.error.FFmpegError as exc:  # its plain reason, not the temporary file's name
        raise write_error(passthrough.output_name, exc, "writing the joined output") from exc
    return dts


def _rebase(pkt: av.Packet, tb: Fraction) -> None:
    src = Fraction(pkt.time_base)
    if src == tb:
        return
    for attr in ("pts", "dts", "duration"):
        value = getattr(pkt, attr)
        if value is not None:
            exact = value * src / tb
            if exact.denominator != 1 and attr != "duration":
                raise PipelineError(f"segment timestamp {value}*{src} is not a whole number of "
                                    f"{tb} ticks")
            setattr(pkt, attr, round(exact))
    pkt.time_base = tb


def _frame_step(stream: av.stream.Stream, tb: Fraction) -> int:
    rate = stream.average_rate or stream.guessed_rate
    return max(1, round(1 / (Fraction(rate) * tb))) if rate else 1
