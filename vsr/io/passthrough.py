"""Packet-for-packet copy of every input stream the engine does not re-encode.

The input is opened a second time for demuxing only, so the copied packets are read
lazily and interleaved by time with the encoded video packets (no whole-file buffering).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Protocol

import av

from vsr.errors import InputError, OutputError
from vsr.io.info import declared_end
from vsr.io.output import write_error
from vsr.io.paths import file_url, open_media, output_format

log = logging.getLogger(__name__)

_MUST_COPY = ("audio", "subtitle")
# How far past the end of a cut video (`vsr upscale --frames`) the packets of the other streams
# are still looked at: muxers interleave streams within about a second; some files far less.
_INTERLEAVE_S = 10.0
# Cover art codecs: (file name extension, MIME type) of the picture as an attachment.
_PICTURES = {"png": ("png", "image/png"), "mjpeg": ("jpg", "image/jpeg"),
             "bmp": ("bmp", "image/bmp"), "gif": ("gif", "image/gif"),
             "webp": ("webp", "image/webp")}

# Output formats that keep cover art as a picture stream (MP4's 'covr'); Matroska keeps it
# as an attachment; others (MOV, AVI, NUT, MPEG-TS) lose it or make it a one-frame video.
_COVER_STREAM_FORMATS = frozenset({"mp4"})

# Output formats that keep attachments (fonts, covers): Matroska's muxer alone writes them.
# MP4, MOV, AVI refuse them only when the header is written (after the whole upscale was set
# up, as 'Invalid argument'); MPEG-TS takes them and writes an empty data stream.
_ATTACHMENT_FORMATS = frozenset({"matroska"})

# The MOV/MP4 muxer's formats (movenc): they write no track for a stream without packets,
# and QuickTime metadata keys only when asked (metadata_movflags).
MOVENC_FORMATS = frozenset({"mp4", "mov", "ipod", "3gp", "3g2", "ismv", "psp", "f4v"})

# Tags the muxer writes itself, or that describe the input's encode of a stream (Matroska's
# statistics tags, mkvmerge's with a "-eng" suffix): copied, they would misdescribe the output.
_OWN_KEYS = frozenset({"ENCODER", "MAJOR_BRAND", "MINOR_VERSION", "COMPATIBLE_BRANDS"})
_STATS_KEYS = frozenset({"DURATION", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES", "BPS",
                         "_STATISTICS_WRITING_APP", "_STATISTICS_WRITING_DATE_UTC",
                         "_STATISTICS_TAGS"})


def container_tags(meta: dict[str, str]) -> dict[str, str]:
    """The input's container tags an output should carry (any case of the muxer's own left out)."""
    return {k: v for k, v in meta.items() if k.upper() not in _OWN_KEYS}


def metadata_movflags(fmt: str | None, tags: dict[str, str]) -> str:
    """The movflags the muxer ``fmt`` needs to keep the container ``tags``: a phone's MOV
    holds its make, model, place and time of recording as QuickTime metadata keys named in
    reverse DNS (com.apple.quicktime.location.ISO6709, com.android.capture.fps), which the
    MOV/MP4 muxer writes only with use_metadata_tags (they were dropped); "" where none."""
    if fmt in MOVENC_FORMATS and any("." in key for key in tags):
        return "+use_metadata_tags"
    return ""


def video_tags(meta: dict[str, str]) -> dict[str, str]:
    """The re-encoded video stream's tags from the input's: without its encoder and the
    statistics of its old encode (DURATION, NUMBER_OF_FRAMES, ... in any case, any suffix)."""
    return {k: v for k, v in meta.items()
            if k.upper() not in _OWN_KEYS and k.upper().split("-")[0] not in _STATS_KEYS}


class Demuxer(Protocol):
    """What :class:`Passthrough` reads: an input container, or anything shaped like one."""

    streams: Sequence[av.stream.Stream]
    metadata: dict[str, str]

    def demux(self, streams: Sequence[av.stream.Stream]) -> Iterator[av.Packet]: ...

    def chapters(self) -> list: ...

    def close(self) -> None: ...


class Passthrough:
    """Copies streams ``exclude`` does not name from ``input_path`` into ``output``.

    Call :meth:`add_streams` before the output header is written; then
    :meth:`mux_until` with each encoded video packet's time, and :meth:`mux_rest` at the end.
    ``copied`` counts packets per input stream index; ``dropped`` lists streams skipped.
    Audio, subtitles and attachments the output format cannot hold raise OutputError before
    the header is written. A data stream the output format cannot hold (an MP4 chapter text
    track) is skipped with a warning, never refused; so is cover art, which only MP4 keeps
    as a picture stream and Matroska as an attachment. A QuickTime timecode track is never
    copied (a copy would be a second one, or refused): its time goes on as ``timecode``,
    which :meth:`tags_for_video` adds to the video's tags (MP4 and MOV muxers make a
    timecode track of it, Matroska keeps it as a tag). With ``audio`` False every audio
    stream is left out (`--no-audio`), the others carried as ever.
    """

    def __init__(self, source: str | Demuxer, exclude: int, *, warn: bool = True,
                 attach_covers: bool = True, audio: bool = True) -> None:
        """``source``: the input's path (opened here), or an open :class:`Demuxer`;
        ``warn``: log the streams left out as warnings (False: a trial, see
        :func:`check_carry`, whose output is written later and warns then);
        ``attach_covers``: cover art a format keeps only as an attachment goes on as one
        (False: it is left out, for a writer that can copy streams only)."""
        if isinstance(source, str):
            try:
                source = open_media(file_url(source), mode="r")  # a file, whatever its name
            except av.error.FFmpegError as exc:
                raise InputError(f"cannot reopen {source} for stream copy: {exc}") from exc
        self._input = source
        self._exclude = exclude
        self._map: dict[int, av.stream.Stream] = {}
        self._packets: Iterator[av.Packet] | None = None
        self._pending: av.Packet | None = None
        self.copied: dict[int, int] = {}
        self.dropped: list[str] = []
        # Per copied stream: the last (dts, duration) muxed, and how many packets were retimed.
        self._last: dict[int, tuple[int, int]] = {}
        # Per copied MOV/MP4 audio stream: where its edit list ends it (see _cut)
        self._ends: dict[int, int | None] = {}
        self.retimed: dict[int, int] = {}
        self.timecode: str | None = None
        self._warn = warn
        self._attach_covers = attach_covers
        self._audio = audio
        self.output_name: object = None  # what the output is called in messages (not a temp)

    def _drop_note(self, msg: str, *args: object) -> None:
        log.log(logging.WARNING if self._warn else logging.DEBUG, msg, *args)

    def add_streams(self, output: av.container.OutputContainer,
                    add_video: Callable[[], None] | None = None) -> None:
        """Add an output stream per copied input stream, in input order; ``add_video`` is
        called at the excluded stream's place so the re-encoded video keeps its index."""
        for s in self._input.streams:
            if s.index == self._exclude:
                if add_video is not None:
                    before = len(output.streams)
                    add_video()
                    if len(output.streams) == before + 1:  # its flags (default) as the input's
                        copy_disposition(s, output.streams[before])
                continue
            if s.type == "audio" and not self._audio:  # asked for: no warning, no "dropped"
                log.info("stream %d (audio, %s) left out: no audio asked for", s.index,
                         _codec_name(s))
                continue
            if s.type == "attachment":
                self._add_attachment(output, s)
                continue
            if _is_cover(s) and output.format.name not in _COVER_STREAM_FORMATS:
                self._carry_cover(output, s)
                continue
            if s.type in _MUST_COPY and (why := _refusal(output, s)):
                raise OutputError(f"the output format {output.format.name} cannot carry "
                                  f"stream {s.index} ({s.type}, {_codec_name(s)}): {why}; "
                                  f"{self._advice(output, s)}")
            if s.type not in (*_MUST_COPY, "video") and not self._can_hold(output, s):
                continue
            try:
                out_s = output.add_stream_from_template(s)
            except (av.error.FFmpegError, ValueError, TypeError, NotImplementedError) as exc:
                what = f"stream {s.index} ({s.type}, {_codec_name(s)})"
                if s.type in _MUST_COPY:
                    raise OutputError(f"the output format {output.format.name} cannot carry "
                                      f"{what}; {self._advice(output, s)}") from exc
                if self._add_cover(output, s):
                    continue
                self._drop_note("not copying %s: %s", what, exc)
                self.dropped.append(what)
                continue
            if s.metadata:
                out_s.metadata.update(s.metadata)
            copy_disposition(s, out_s)
            self._map[s.index] = out_s
            self.copied[s.index] = 0
            if s.type == "audio" and "mov" in self._input_format().split(","):
                self._ends[s.index] = declared_end(self._input, s)
        copy_ids = list(self._map)
        streams = [self._input.streams[i] for i in copy_ids]
        self._packets = self._input.demux(streams) if streams else iter(())

    def _input_format(self) -> str:
        """The input's demuxer name(s); "" for a Demuxer that is no container (a live feed)."""
        return getattr(getattr(self._input, "format", None), "name", "")

    def _advice(self, output: av.container.OutputContainer,
                s: av.stream.Stream | None = None) -> str:
        """:meth:`_container_advice`, and for an audio stream the other way out: leaving
        the audio out (a WebM or GIF of a file with AAC audio could not be made at all)."""
        advice = self._container_advice(output, s)
        if s is not None and s.type == "audio":
            advice += ", or leave the audio out (--no-audio)"
        return advice

    def _container_advice(self, output: av.container.OutputContainer,
                          s: av.stream.Stream | None = None) -> str:
        """Which container to choose instead: for stream ``s``, the first of Matroska, the
        input's own, MP4, MOV and MPEG-TS whose muxer takes it (MP4's mov_text subtitles:
        neither Matroska nor WebM); for an attachment, Matroska (or the input's own)."""
        suffix = os.path.splitext(str(getattr(self._input, "name", "") or ""))[1].lower()
        if s is None:
            if output.format.name != "matroska":
                return "choose a container that can (e.g. .mkv)"
            return f"choose a container that can (e.g. {suffix or 'the input format'})"
        tried = []
        for fmt, ext in (("matroska", ".mkv"), (self._input_format().split(",")[0], suffix),
                         ("mp4", ".mp4"), ("mov", ".mov"), ("mpegts", ".ts")):
            if fmt == output.format.name or not ext or ext in tried:
                continue
            tried.append(ext)
            with contextlib.suppress(av.error.FFmpegError, ValueError):
                if _refused_by(fmt, "x" + ext, s) is None:
                    return f"choose a container that can (e.g. {ext})"
        return (f"none of {', '.join(tried)} can either: convert that stream, or leave it "
                "out of the input first")

    def _can_hold(self, output: av.container.OutputContainer, s: av.stream.Stream) -> bool:
        """Whether ``output``'s format takes a copy of data stream ``s``; if not, log why.

        Adding such a stream succeeds and only writing the header fails, when it is too late
        to leave the stream out, so the format is tried on an empty file in memory first.
        """
        what = f"stream {s.index} ({s.type}, {_codec_name(s)}"
        handler = s.metadata.get("handler_name")
        what += f", {handler})" if handler else ")"
        timecode = s.metadata.get("timecode")
        if timecode:  # a QuickTime timecode track: a copy would be a second one, or refused
            self.timecode = self.timecode or timecode
            log.info("%s: the timecode %s goes on as the video's timecode tag", what, timecode)
            return False
        if why := _refusal(output, s):
            self._drop_note("not copying %s: the output format %s cannot hold it (%s)",
                            what, output.format.name, why)
            self.dropped.append(what)
            return False
        return True

    def tags_for_video(self, meta: dict[str, str]) -> dict[str, str]:
        """:func:`video_tags` of the input video's ``meta``, with the timecode of a timecode
        track not copied (the MOV demuxer usually puts it on the video stream already)."""
        tags = video_tags(meta)
        if self.timecode and "timecode" not in tags:
            tags["timecode"] = self.timecode
        return tags

    def _add_attachment(self, output: av.container.OutputContainer, s: av.stream.Stream) -> None:
        name = s.metadata.get("filename") or getattr(s, "name", None) or f"attachment{s.index}"
        mimetype = s.metadata.get("mimetype") or getattr(s, "mimetype", None) \
            or "application/octet-stream"
        try:
            if output.format.name not in _ATTACHMENT_FORMATS:
                raise ValueError("no attachments in this format")
            output.add_attachment(name=name, mimetype=mimetype, data=bytes(s.data))
        except (av.error.FFmpegError, ValueError, TypeError, NotImplementedError) as exc:
            raise OutputError(f"the output format {output.format.name} cannot carry attachment "
                              f"{name!r}; {self._advice(output)}") from exc
        self.copied[s.index] = 0

    def _carry_cover(self, output: av.container.OutputContainer, s: av.stream.Stream) -> None:
        """Cover art into a format that does not keep it as a picture stream: as an
        attachment where the format takes those (Matroska), else dropped with a warning.
        Copied as a stream, the MOV muxer left it out without a word, and Matroska, AVI and
        NUT made it a one-frame video track."""
        if self._add_cover(output, s):
            return
        what = f"stream {s.index} (cover art, {_codec_name(s)})"
        self._drop_note("not copying %s: the output format %s cannot hold cover art",
                        what, output.format.name)
        self.dropped.append(what)

    def _add_cover(self, output: av.container.OutputContainer, s: av.stream.Stream) -> bool:
        """Carry cover art (an attached picture) that ``output`` cannot hold as a stream as an
        attachment instead; whether it was. Matroska keeps its cover as an attachment, which
        FFmpeg reads as a one-picture video stream that the Matroska muxer then refuses as a
        stream: copied as a stream it was dropped, from Matroska into Matroska too."""
        if not (self._attach_covers and _is_cover(s)):
            return False
        kind = _PICTURES.get(_codec_name(s))
        mimetype = s.metadata.get("mimetype") or (kind[1] if kind else None)
        if mimetype is None or output.format.name not in _ATTACHMENT_FORMATS:
            return False
        name = s.metadata.get("filename") or f"cover.{kind[0] if kind else 'bin'}"
        try:
            # the picture is queued when the input opens: the first packet read, whatever
            # the read position of the other streams
            data = next((bytes(p) for p in self._input.demux([s]) if p.size), None)
            if data is None:
                return False
            output.add_attachment(name=name, mimetype=mimetype, data=data)
        except (av.error.FFmpegError, ValueError, TypeError, NotImplementedError):
            return False
        log.info("stream %d (cover art %s) goes on as an attachment", s.index, name)
        self.copied[s.index] = 1
        return True

    @property
    def chapters(self) -> list:
        try:
            return list(self._input.chapters())
        except (AttributeError, av.error.FFmpegError):
            return []

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._input.metadata)

    def _next(self) -> av.Packet | None:
        if self._pending is None and self._packets is not None:
            for pkt in self._packets:
                if pkt.dts is None and pkt.pts is None and pkt.size == 0:
                    continue  # demuxer's end-of-stream flush marker
                self._pending = pkt
                break
            else:
                self._packets = None
        return self._pending

    def mux_until(self, output: av.container.OutputContainer, t: float | None) -> None:
        """Mux copied packets whose decode time is at or before ``t`` seconds (all if None)."""
        while (pkt := self._next()) is not None:
            if t is not None and _seconds(pkt) > t:
                return
            self._pending = None
            self._mux_one(output, pkt)

    def _mux_before(self, output: av.container.OutputContainer, end: float) -> None:
        """Mux the packets that start before ``end`` seconds, each cut there: the video ends at
        ``end`` (`vsr upscale --frames`). Demuxing goes on :data:`_INTERLEAVE_S` past it, for
        a file that interleaves its streams loosely, and no further (not to the end of a
        film for a preview of its first seconds)."""
        for src in self._map:
            tb = self._input.streams[src].time_base
            if tb:
                at = math.floor(Fraction(end) / Fraction(tb))
                declared = self._ends.get(src)
                self._ends[src] = at if declared is None else min(declared, at)
        while (pkt := self._next()) is not None:
            t = _seconds(pkt)
            if t >= end + _INTERLEAVE_S:
                return
            self._pending = None
            if t < end:
                self._mux_one(output, pkt)

    def _mux_one(self, output: av.container.OutputContainer, pkt: av.Packet) -> None:
        src = pkt.stream.index
        kind = pkt.stream.type
        self._retime(pkt, src, strict=kind in ("audio", "video"))
        self._cut(pkt, self._ends.get(src))
        pkt.stream = self._map[src]
        try:
            output.mux(pkt)
        except av.error.FFmpegError as exc:
            what = f"copying stream {src}" + (" into" if self.output_name else "")
            raise write_error(self.output_name, exc, what) from exc
        self.copied[src] += 1

    def _retime(self, pkt: av.Packet, src: int, *, strict: bool) -> None:
        """Give a packet whose dts does not advance the time right after the previous one.

        MP3 or MP2 in MP4 (VLC's stream output, cameras) may store several frames per sample;
        the demuxer's parser splits them and stamps the pieces with times that run backwards
        (0, 1152, 2304, 1152, ... for three frames per sample), which every muxer refuses.
        The pieces are contiguous, so ``previous dts + previous duration`` is their true time.
        Audio and video need strictly increasing dts (MP4 refuses equal ones), other streams
        only non-decreasing.
        """
        dts = pkt.dts
        last = self._last.get(src)
        if dts is not None and last is not None and (dts < last[0] or strict and dts == last[0]):
            fixed = last[0] + max(1, last[1])
            if pkt.pts is not None:
                pkt.pts = pkt.pts + fixed - dts
            pkt.dts = dts = fixed
            if not self.retimed.get(src):
                log.warning("stream %d: timestamps run backwards in the input; packets are "
                            "placed right after the previous one", src)
            self.retimed[src] = self.retimed.get(src, 0) + 1
        if dts is not None:
            self._last[src] = (dts, int(pkt.duration or 0))

    @staticmethod
    def _cut(pkt: av.Packet, end: int | None) -> None:
        """End a packet that runs past ``end`` (its stream's time base) there: an MP4 edit list
        that ends inside the last audio sample (a trim), which FFmpeg 8's demuxer hands on
        whole, so the output's audio ran up to a sample past the input's end; the video's end
        where only the first frames are upscaled."""
        if end is not None and pkt.pts is not None and pkt.duration \
                and pkt.pts < end < pkt.pts + pkt.duration:
            pkt.duration = end - pkt.pts

    def mux_rest(self, output: av.container.OutputContainer, end: float | None = None) -> None:
        """Mux the packets left (``end``: those that start before ``end`` seconds, each cut
        there); say which copied streams held none where the output's muxer then leaves the
        stream out (MP4 and MOV write no track without samples)."""
        if end is None:
            self.mux_until(output, None)
        else:
            self._mux_before(output, end)
        if output.format.name not in MOVENC_FORMATS:
            return
        for src, out_s in self._map.items():
            if not self.copied[src]:
                self._drop_note("stream %d (%s) holds no packets: the %s muxer leaves it out",
                                src, out_s.type, output.format.name)
                self.dropped.append(f"stream {src} ({out_s.type}, no packets)")

    def close(self) -> None:
        self._input.close()


def check_carry(input_path: str | os.PathLike, output: str | os.PathLike, exclude: int, *,
                warn: bool = False, attach_covers: bool = True,
                audio: bool = True) -> list[int] | None:
    """Raise OutputError where the container ``output``'s name asks for cannot carry a stream
    of ``input_path`` that must be copied (audio, subtitles, attachments), before any work:
    `vsr batch` otherwise learns it at the join, after every segment was computed. Writes
    nothing (the streams are tried on a file in memory). Returns the input streams (not
    ``exclude``, the re-encoded video) the output carries as streams or attachments, in
    input order: what a stream map for the ffmpeg program should name (with
    ``attach_covers`` False, as that program copies cover art only as a stream); None where
    PyAV does not know the output's format (the writer then finds out itself). Streams left
    out are logged as warnings where ``warn`` (an output whose own Passthrough warns when it
    is written: not here). ``audio`` False: every audio stream is left out (`--no-audio`)."""
    fmt = output_format(output)
    if fmt is None:
        return None  # a name the sink itself refuses: it says why, in its words
    memory = io.BytesIO()
    memory.name = os.fspath(output)  # the trial's name, as the output's: .m2ts is told by it
    trial = open_media(memory, mode="w", format=fmt)
    passthrough = Passthrough(os.fspath(input_path), exclude, warn=warn,
                              attach_covers=attach_covers, audio=audio)
    try:
        passthrough.add_streams(trial)
        return sorted(i for i in passthrough.copied
                      if i in passthrough._map or passthrough._input.streams[i].type
                      == "attachment")
    finally:
        passthrough.close()
        with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
            trial.close()


def _is_cover(s: av.stream.Stream) -> bool:
    return bool(int(s.disposition) & int(av.stream.Disposition.attached_pic))


def _refusal(output: av.container.OutputContainer, s: av.stream.Stream) -> str | None:
    """Why ``output``'s format cannot hold a copy of ``s`` (None if it can).

    Adding such a stream often succeeds and only writing the header fails (Opus into MOV),
    when it is too late to leave the stream out or to say which one, so the format is tried
    on an empty file in memory first. MPEG-TS writes any codec it has no stream type for as
    opaque private data (SRT, ASS, FLAC, PCM come back as a data stream of no codec): it
    tells only in the stream map it writes with the first packet, so one empty packet is
    muxed and the stream map read back.
    """
    return _refused_by(output.format.name, str(output.name), s)


def _refused_by(fmt: str, name: str, s: av.stream.Stream) -> str | None:
    """:func:`_refusal` for the muxer ``fmt`` writing a file called ``name``."""
    try:
        with open_media(io.BytesIO(), mode="w", format=fmt) as trial:
            trial.add_stream_from_template(s)
            trial.start_encoding()
    except av.error.FFmpegError as exc:
        return f"its muxer refuses {_codec_name(s)} ({exc.strerror or exc})"
    except (ValueError, TypeError, NotImplementedError) as exc:
        return str(exc)
    # .m2ts is written in the muxer's Blu-ray mode (told by the file name), whose stream
    # types differ (PGS has one; AAC goes as private data that readers find by its ADTS
    # headers): this trial, in the broadcast mode, would say nothing true of it
    m2ts = name.lower().endswith(".m2ts")
    if fmt == "mpegts" and not m2ts and s.type in _MUST_COPY and _read_back(s) == ["data"]:
        return f"it would be written as private data that players do not read as {s.type}"
    return None


def _read_back(s: av.stream.Stream) -> list[str] | None:
    """The stream kinds an MPEG-TS holding a copy of ``s`` (and one empty packet) reads
    back as; None where the trial says nothing (the muxer refused the empty packet)."""
    buf = io.BytesIO()
    try:
        with open_media(buf, mode="w", format="mpegts") as trial:
            copy = trial.add_stream_from_template(s)
            trial.start_encoding()
            pkt = av.Packet(bytes(16))
            pkt.stream, pkt.pts, pkt.dts = copy, 0, 0
            trial.mux(pkt)
        buf.seek(0)
        with open_media(buf, mode="r", format="mpegts") as back:
            return [b.type for b in back.streams]
    except (av.error.FFmpegError, ValueError, TypeError, NotImplementedError):
        return None


def _seconds(pkt: av.Packet) -> float:
    ts = pkt.dts if pkt.dts is not None else pkt.pts
    if ts is None or pkt.time_base is None:
        return float("-inf")  # untimed packets go out as soon as possible
    return float(ts * Fraction(pkt.time_base))


def _codec_name(s: av.stream.Stream) -> str:
    try:
        return s.codec_context.name
    except (AttributeError, av.error.FFmpegError):
        return "unknown codec"


def copy_disposition(src: av.stream.Stream, dst: av.stream.Stream) -> None:
    """Carry a stream's disposition flags (default, forced, ...) where PyAV allows it."""
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        dst.disposition = src.disposition
