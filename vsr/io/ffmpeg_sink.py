"""Sink through the system ``ffmpeg`` program, for encoders, filters and protocols the PyAV
wheel lacks (VAAPI/QSV, SRT, HLS packaging).

Frames go to ffmpeg's stdin as a NUT stream of raw RGB written by PyAV, so every frame keeps
its pts in the input time base; ffmpeg maps the other input streams itself with ``-c copy``.
Deep (10/12-bit) and full-range Y'CbCr outputs go through the pipe in their own pixel format,
made by :func:`vsr.io.colour.from_rgb` as the PyAV sink makes them (ffmpeg's swscale writes
16-bit RGB 0.4% bright); ffmpeg then only describes them.
Durations do not go through (ffmpeg 5.1 gives every packet one frame step): where the finished
file ends its last picture elsewhere than the input does, it is copied once more with PyAV,
packet by packet (:meth:`FfmpegSink._keep_last_durations`).
:class:`FfmpegRelay` is the live variant: ffmpeg copies the MPEG-TS (video and audio) that
PyAV writes to its stdin out to a URL (``srt://``). Command lines are built by ffmpeg-python
as argument lists; no shell is involved.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg
import numpy as np

from vsr.errors import ConfigError, InputError, OutputError
from vsr.io.colour import from_rgb, writes_own
from vsr.io.info import ColorInfo, StreamInfo, has_alpha, written_time_base
from vsr.io.output import (
    SinkContext,
    check_frame,
    check_output_path,
    discard,
    finish,
    temp_path_for,
)
from vsr.io.passthrough import (
    MOVENC_FORMATS,
    Passthrough,
    check_carry,
    container_tags,
    metadata_movflags,
    video_tags,
)
from vsr.io.paths import file_url, negative_ts_option, open_media, output_format
from vsr.io.sink import (
    EncodeConfig,
    PtsOrder,
    alpha_writer,
    check_chroma_size,
    check_holds,
    choose_pix_fmt,
    hdr_params,
    is_yuv,
    keeps_alpha,
    quiet_encoder,
    warn_alpha_lost,
    warn_depth_lost,
    written_colour,
    x265_quiet,
)

log = logging.getLogger(__name__)

_MATRIX = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
# The colour description by name, every value FFmpeg defines (the PyAV sink keeps any): the
# encoder options' names (-colorspace, -color_primaries, -color_trc), which the setparams
# filter shares but for the transfers of BT.470M and BG (_FILTER_TRC; an unknown name
# failed the run with 'Invalid argument').
_SPACE = {1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco",
          9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc",
          13: "chroma-derived-c", 14: "ictcp"}
_PRIM = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
         9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "jedec-p22"}
_TRC = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
        9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1",
        14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428", 18: "arib-std-b67"}
_FILTER_TRC = {**_TRC, 4: "bt470m", 5: "bt470bg"}


# MP3 in MP4 with several frames per sample comes out of the demuxer's parser with times that
# run backwards; ffmpeg would move each such packet one tick after the previous one (audio
# then plays at the wrong time); this puts it right after the previous packet's end instead.
_AUDIO_RETIME = r"setts=ts=if(gte(PREV_OUTDTS\,DTS)\,PREV_OUTDTS+PREV_OUTDURATION\,TS)"

# libsrt's live mode lingers 0 s on close: whatever the receiver has not acknowledged yet is
# thrown away, so a short or ending stream lost its tail (or everything). Seconds to wait.
SRT_LINGER_S = 5

# The muxers whose files say how long each picture is shown, the last one too (MP4's sample
# table, Matroska's block durations), and how many of the last pictures keep theirs: more
# than any encoder holds back to reorder (x264 takes up to 16 B-frames).
_TIMED_FORMATS = MOVENC_FORMATS | {"matroska", "webm"}
_TAIL = 64


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def _finish_failed(log_file) -> bool:
    """Whether ffmpeg reported that it could not write the end of its output: ffmpeg 5.1
    exits 0 after "Error writing trailer" or "Error closing file" (a full disk), leaving a
    truncated file."""
    log_file.seek(0)
    text = log_file.read()
    return b"Error writing trailer" in text or b"Error closing file" in text


@functools.cache
def program_formats(codec: str) -> tuple[str, ...] | None:
    """The pixel formats the ffmpeg program's encoder ``codec`` takes (its build may differ
    from PyAV's: libvpx with or without 10 bits); None where it does not say."""
    try:
        said = subprocess.run(["ffmpeg", "-hide_banner", "-h", f"encoder={codec}"],
                              capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in said.splitlines():
        if line.strip().startswith("Supported pixel formats:"):
            return tuple(line.split(":", 1)[1].split())
    return None


# ffmpeg's closing lines that say only that something before them failed (the mux call's
# own line follows the one naming the stream whose packet the muxer refused)
_GENERIC = re.compile(r"^(Error initializing output stream|Could not write header for output "
                      r"file|Conversion failed|Error while opening encoder|Nothing was written|"
                      r"av_interleaved_write_frame\(\):)")


def _last_line(log_file) -> str:
    """ffmpeg's last error line that says what failed (not "Error initializing output
    stream 0:0 --", which follows the reason), without its "[mp4 @ 0x...]" prefix."""
    log_file.seek(0)
    lines = [re.sub(r"^\[[^]]* @ 0x[0-9a-f]+\] ", "", ln.strip())
             for ln in log_file.read().decode(errors="replace").splitlines() if ln.strip()]
    telling = [ln for ln in lines if not _GENERIC.match(ln)]
    return (telling or lines or ["no message"])[-1]


@dataclass(frozen=True)
class _Input:
    """What the command takes from the input file besides its :class:`StreamInfo`, read
    in one opening: the container's tags, the video's, each stream's disposition (ffmpeg's
    -disposition value: "default+forced", "0") and the pre-skip of each Opus stream
    (samples at 48 kHz, 0 where none)."""

    tags: dict[str, str]
    video_tags: dict[str, str]
    dispositions: dict[int, str]
    opus_pre_skip: dict[int, int]


def _read_input(path: str, video: int) -> _Input:
    with open_media(file_url(path)) as src:
        return _Input(tags=container_tags(dict(src.metadata)),
                      video_tags=dict(src.streams[video].metadata),
                      dispositions={s.index: _disposition(s) for s in src.streams},
                      opus_pre_skip={s.index: _pre_skip(s) for s in src.streams
                                     if s.type == "audio" and s.codec_context.name == "opus"})


def _pre_skip(s: av.stream.Stream) -> int:
    """An Opus stream's pre-skip, from its OpusHead (what ffmpeg writes as CodecDelay)."""
    head = bytes(s.codec_context.extradata or b"")
    return int.from_bytes(head[10:12], "little") if head.startswith(b"OpusHead") else 0


def _movflags(fmt: str | None, output: str, tags: dict[str, str], colour_range: int | None
              ) -> str:
    """-movflags: what the container ``tags`` need, and the range of a YUV output
    (``colour_range``; None: not YUV) in an MP4's colr box."""
    movflags = metadata_movflags(fmt, tags)
    if colour_range in (1, 2) and Path(output).suffix.lower() in (".mp4", ".m4v"):
        movflags += "+write_colr"  # the range without a colour description
    return movflags


def build_command(info: StreamInfo, output: str, pix_fmt: str, config: EncodeConfig,
                  carried: Sequence[int] | None = None, facts: _Input | None = None,
                  *, converted: bool = False) -> list[str]:
    """The ffmpeg argument list: input 0 is the NUT pipe, input 1 the original file.

    ``carried``: the input streams other than the video to copy (:func:`check_carry`'s
    answer); None: every one. ``facts``: what :func:`_read_input` read of the input (read
    here where not given). ``converted``: the pipe carries frames in ``pix_fmt`` already
    (:func:`vsr.io.colour.from_rgb`), which ffmpeg is only to describe, not convert.

    Input 1 is always given, also for a video-only file: the container metadata and chapters
    (``-map_metadata 1 -map_chapters 1``) come from it. Output streams keep the input's order:
    the encoded video at the source video's place, every other stream copied from input 1.
    The encoder works in the input's time base: ffmpeg's default (1/frame rate) moves every
    frame of a variable or jittered stream (a camera, VLC's 1/1000000) onto a grid, so frames
    kept neither their timestamps nor, where two met on one tick, their number.
    Built by hand rather than with ffmpeg-python, whose graph sort puts the inputs in the order
    the streams are mapped (the file first when its audio is stream 0).
    """
    # as vsr.io.sink.VideoEncoder
    c = written_colour(config.codec, pix_fmt, info.color, info.pix_fmt)
    yuv = is_yuv(pix_fmt)
    if pix_fmt.startswith("gray"):  # grey has no matrix
        c = replace(c, matrix=2)
    # accurate_rnd: RGB -> Y'CbCr rounded, as the PyAV sink's (vsr.io.info.EXACT_YUV)
    scale = {"out_range": "pc" if c.range == 2 else "tv", "flags": "accurate_rnd"} if yuv else {}
    if yuv and c.matrix in _MATRIX:
        scale["out_color_matrix"] = _MATRIX[c.matrix]
    scale_filter = "null" if converted else "scale" + (
        "=" + ":".join(f"{k}={v}" for k, v in sorted(scale.items())) if scale else "")
    # the description as frame properties too (as VideoEncoder.frame): prores_ks writes each
    # frame's own, which the scale filter leaves unspecified but for the matrix; the range
    # too where no scale filter sets it
    described = [f"{key}={(_FILTER_TRC if table is _TRC else table)[value]}"
                 for key, table, value in _described(c, yuv)]
    if converted and yuv:
        described.append(f"range={scale['out_range']}")
    if described:
        scale_filter += ",setparams=" + ":".join(described)
    if info.sample_aspect_ratio:  # NUT's raw frames carry none: anamorphic video showed squeezed
        sar = info.sample_aspect_ratio
        scale_filter += f",setsar={sar.numerator}/{sar.denominator}"
    others = [o.index for o in info.others] if carried is None else list(carried)
    order = sorted([info.index, *others])
    pos = order.index(info.index)  # the video's output stream index
    audio = {o.index for o in info.others if o.type == "audio"}
    fmt = output_format(output.removeprefix("file:"))  # the muxer ffmpeg picks by the name
    tb = written_time_base(info, fmt, config.codec)
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-copyts",
            "-f", "nut", "-i", "pipe:0",
            "-i", file_url(info.path),
            "-filter_complex", f"[0:v:0]{scale_filter},format={pix_fmt}[v]"]
    for s in order:
        args += ["-map", "[v]" if s == info.index else f"1:{s}"]
    facts = facts or _read_input(info.path, info.index)
    negative_ts = negative_ts_option(fmt, copies_streams=bool(others))
    for out_pos, s in enumerate(order):
        if s in audio:  # as Passthrough._retime: times that run backwards follow on instead
            args += [f"-bsf:{out_pos}", _AUDIO_RETIME + _codec_delay(
                fmt, negative_ts, facts.opus_pre_skip.get(s, 0))]
    args += ["-map_metadata", "1", "-map_chapters", "1"]
    video = facts.video_tags
    for out_pos, s in enumerate(order):  # one named, all named: ffmpeg then copies no others
        args += [f"-map_metadata:s:{out_pos}", f"1:s:{s}"]
    # the video's, as the PyAV sink keeps them: not the statistics of the input's encode (an
    # empty value removes a tag the map copied)
    for key in sorted(video.keys() - video_tags(video).keys()):
        args += [f"-metadata:s:{pos}", f"{key}="]
    # each stream's flags as the input's: ffmpeg otherwise marks the first of each kind
    # default, and a subtitle track the input left off came on by itself in players
    for out_pos, s in enumerate(order):
        args += [f"-disposition:{out_pos}", facts.dispositions.get(s, "0")]
    args += ["-c", "copy", f"-c:{pos}", config.codec,
             f"-fps_mode:{pos}", "passthrough",
             f"-enc_time_base:{pos}", f"{tb.numerator}:{tb.denominator}",
             # Negative-timestamp shifting would move every stream off the input times; the
             # input file already had valid timestamps, so keep them where the muxer can.
             "-avoid_negative_ts", negative_ts]
    # what PyAV's muxer takes (check_carry's trial) an older program's may call experimental
    # (FLAC in MP4, before FFmpeg 6): the muxer alone is told to take it, not the encoders
    args += ["-f_strict", "experimental"]
    if fmt == "mpegts":  # the ffmpeg program's mux delay moved every stream 1.4 s later
        args += ["-muxdelay", "0", "-muxpreload", "0"]
    if config.crf is not None:
        args += [f"-crf:{pos}", str(config.crf)]
    if config.preset is not None:
        args += [f"-preset:{pos}", config.preset]
    if yuv:
        args += [f"-color_range:{pos}", "pc" if c.range == 2 else "tv"]
    if movflags := _movflags(fmt, output, facts.tags, c.range if yuv else None):
        args += ["-movflags", movflags]
    for key, table, value in _described(c, yuv):
        args += [f"-{key}:{pos}", table[value]]
    # raw RGB through the pipe carries none; x265 prints its banner unless told not to
    if params := hdr_params(config.codec, info) + x265_quiet(config.codec):
        args += [f"-{config.codec.removeprefix('lib')}-params:{pos}", ":".join(params)]
    return [*args, "-y", output]


def _described(c: ColorInfo, yuv: bool) -> list[tuple[str, dict[int, str], int]]:
    """(option, names, value) of the colour description ffmpeg is told: the matrix of YUV,
    primaries and transfer of any output, where the input says them."""
    wanted = (("colorspace", _SPACE, c.matrix if yuv else None),
              ("color_primaries", _PRIM, c.primaries), ("color_trc", _TRC, c.transfer))
    return [(key, table, value) for key, table, value in wanted if value in table]


# disposition flags the ffmpeg program takes by name (5.1 on: newer ones are left out)
_DISPOSITIONS = ("default", "dub", "original", "comment", "lyrics", "karaoke", "forced",
                 "hearing_impaired", "visual_impaired", "clean_effects", "captions",
                 "descriptions", "metadata", "dependent", "still_image")


def _disposition(s: av.stream.Stream) -> str:
    """A stream's disposition as ffmpeg's -disposition value ("default+forced", "0")."""
    return "+".join(name for name in _DISPOSITIONS
                    if int(s.disposition) & int(av.stream.Disposition[name])) or "0"


# Matroska keeps an Opus stream's pre-skip as CodecDelay, and its blocks' times are the
# packets' plus that delay, which readers take off again. ffmpeg 5.1's muxer adds it only
# where it may shift times (avoid_negative_ts): told to keep them (disabled), it wrote the
# packets' own times, so the audio came out 6.5 ms early (FFmpeg 8's, PyAV's, adds it).
def _codec_delay(fmt: str | None, negative_ts: str, pre_skip: int) -> str:
    """The bitstream filters (after a comma) that add what the muxer leaves out; ""."""
    if fmt not in ("matroska", "webm") or negative_ts != "disabled" or not pre_skip:
        return ""
    # in the muxer's milliseconds, rounded as it rounds (halves away from zero)
    delay = (pre_skip * 1000 + 24000) // 48000
    return f",setts=time_base=1/1000,setts=ts=TS+{delay}"


# the muxer ffmpeg picks by the output's suffix, where it matters for the alpha plane
# (libvpx's, kept by Matroska and WebM only: vsr.io.sink.keeps_alpha)
_MATROSKA_SUFFIXES = (".mkv", ".webm", ".mka", ".mk3d")


class FfmpegSink(SinkContext):
    """Same contract as PyAVSink (write(image, pts), close, abort, context manager); the
    frames go through the pipe as RGBA where :attr:`alpha` (the input's alpha is kept)."""

    def __init__(self, path: str | os.PathLike, info: StreamInfo, width: int, height: int,
                 config: EncodeConfig = EncodeConfig(), *, overwrite: bool = False,
                 audio: bool = True) -> None:
        """``audio`` False: every stream but the audio copied (`--no-audio`)."""
        if not ffmpeg_available():
            raise OutputError("--encoder ffmpeg needs the ffmpeg program on PATH")
        self.path = check_output_path(path, overwrite=overwrite, input_path=info.path)
        self._overwrite = overwrite
        self._temp = temp_path_for(self.path)
        suffix = self.path.suffix.lower()
        container = "matroska" if suffix in _MATROSKA_SUFFIXES else suffix or "this container"
        keep = info.alpha and keeps_alpha(config.codec, container)
        formats = program_formats(config.codec)
        try:
            self.pix_fmt = choose_pix_fmt(config.codec, info, config.pix_fmt, alpha=keep,
                                          formats=formats)
        except ConfigError:
            if formats is not None:  # the program's encoder said what it takes: not that
                raise
            # a codec only the system ffmpeg has, and it does not say: keep the input's depth
            self.pix_fmt = config.pix_fmt or ("yuv420p10le" if info.bit_depth > 8 else "yuv420p")
        if config.pix_fmt is None:
            warn_depth_lost(info, config.codec, self.pix_fmt, formats)
        check_chroma_size(config.codec, self.pix_fmt, width, height)
        quiet_encoder(config.codec)  # the ffmpeg program's SVT-AV1 reads it from its parent
        self.alpha = keep and has_alpha(self.pix_fmt)
        if info.alpha and not self.alpha:
            warn_alpha_lost(info, alpha_writer(config.codec, self.pix_fmt, container))
        if info.rotation:
            log.warning("the ffmpeg sink does not carry the %d degree display rotation",
                        info.rotation)
        self._size = (height, width)
        self._info = info
        self._done = False
        self._format = output_format(self.path)
        check_holds(self.path, self._format, config.codec)
        self._time_base = written_time_base(info, self._format, config.codec)
        self._order = PtsOrder(name=Path(info.path).name, frame_rate=info.frame_rate)
        self.frames = 0
        # what the container cannot carry is refused (audio, subtitles) or left out with a
        # warning (data, cover art) here, as the PyAV sink does, before any frame is made:
        # ffmpeg would fail at its header, after the first frame, with no word of which stream
        carried = check_carry(info.path, self.path, info.index, warn=True, attach_covers=False,
                              audio=audio)
        if carried is None and not audio:  # a format PyAV does not know: every other stream
            carried = [o.index for o in info.others if o.type != "audio"]
        # output stream -> input stream, for the count of what was copied
        self._sources = sorted([info.index, *(
            carried if carried is not None else (o.index for o in info.others))])
        self._copied: dict[int, int] = {}
        facts = _read_input(info.path, info.index)
        colour = written_colour(config.codec, self.pix_fmt, info.color, info.pix_fmt)
        # deep and full-range Y'CbCr made here as the PyAV sink makes it (vsr.io.colour): the
        # program's swscale wrote 16-bit RGB 0.4% bright (10-bit white at Y 943, 12-bit up to
        # 14 codes off); the pipe then carries the output's own pixel format
        self._colour = replace(colour, matrix=2) if self.pix_fmt.startswith("gray") else colour
        # (a name PyAV's FFmpeg lacks is no Y'CbCr it knows: writes_own says False)
        self._own = writes_own(self.pix_fmt, info.bit_depth <= 8, self._colour)
        self._movflags = _movflags(self._format, str(self.path), facts.tags,
                                   colour.range if is_yuv(self.pix_fmt) else None)
        # pipe pts -> how long the input shows that frame (its time base), for the frames
        # still in the order by id, then the last ones out of it (see _keep_last_durations)
        self._held: dict[int, int] = {}
        self._tail: deque[tuple[int, int]] = deque(maxlen=_TAIL)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the sink
        args = build_command(info, file_url(self._temp), self.pix_fmt, config, carried, facts,
                             converted=self._own)
        log.debug("ffmpeg command: %s", args)
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._log, start_new_session=True)
        try:
            # a stop landing before the caller's `with` loses this sink: ffmpeg is stopped
            # and the file removed when the sink is collected
            self._lost = weakref.finalize(self, _stop_and_discard, self._proc, self._temp)
            self._mux = open_media(self._proc.stdin, mode="w", format="nut")
            fmt = self.pix_fmt if self._own else ("rgba" if self.alpha else "rgb24") \
                if info.bit_depth <= 8 else ("rgba64le" if self.alpha else "rgb48le")
            st = self._mux.add_stream("rawvideo", rate=info.frame_rate or Fraction(25))
            st.width, st.height, st.pix_fmt = width, height, fmt
            # frames go through the pipe in the time base they are written in (AVI: one
            # frame a tick), so frames closer than a tick are moved here, and said so
            st.time_base = st.codec_context.time_base = self._time_base
            self._stream = st
            self._fmt = fmt
        except BaseException:
            self.abort()
            raise

    @property
    def copied_packets(self) -> dict[int, int]:
        """Packets per copied input stream, as the finished output holds them (empty before
        it is finished, or where PyAV cannot read it)."""
        return dict(self._copied)

    def _count_copied(self) -> dict[int, int]:
        copied = {i: 0 for i in self._sources if i != self._info.index}
        try:
            with open_media(file_url(self.path)) as out:
                # the copied streams only: not every video packet wrapped to be thrown away
                streams = [s for s in out.streams if s.index < len(self._sources)
                           and self._sources[s.index] in copied]
                for pkt in out.demux(streams) if streams else ():
                    if pkt.size:
                        copied[self._sources[pkt.stream.index]] += 1
        except (av.error.FFmpegError, OSError, ValueError):
            return {}
        return copied

    def _failed(self, what: str) -> OutputError:
        self._proc.kill()
        self._proc.wait()
        return OutputError(f"ffmpeg {what}: {_last_line(self._log)}")

    def write(self, image: np.ndarray, pts: int, duration: int | None = None) -> None:
        """(H, W, 3) RGB, or (H, W, 4) RGBA where :attr:`alpha`; uint8 or uint16.
        ``duration``: how long the frame is shown, where the input says (input time base):
        the last pictures keep it, as with the PyAV sink."""
        check_frame(image, self._size, alpha=self.alpha)
        # from_rgb: an RGB frame's alpha (where the format has one) opaque
        frame = (from_rgb(image, self.pix_fmt, self._colour) if self._own
                 else self._rgb_frame(image))
        if self._time_base != self._info.time_base:
            pts = round(pts * self._info.time_base / self._time_base)
        frame.pts, frame.time_base = pts, self._time_base
        if duration:  # held by the frame until the order has settled its pts
            self._held[id(frame)] = max(1, round(duration * self._info.time_base
                                                 / self._time_base))
        try:
            for due in self._order.push(frame):
                self._send(due)
        except (BrokenPipeError, OSError, av.error.FFmpegError) as exc:
            raise self._failed("stopped") from exc
        self.frames += 1

    def _rgb_frame(self, image: np.ndarray) -> av.VideoFrame:
        """``image`` as a frame of the RGB pipe, which ffmpeg converts."""
        if self.alpha and image.shape[2] == 3:  # RGB into an RGBA pipe: opaque
            top = np.iinfo(image.dtype).max
            image = np.concatenate([image, np.full(self._size + (1,), top, image.dtype)], 2)
        deep = self._fmt.endswith("le")
        if (image.dtype == np.uint16) != deep:
            image = (image.astype(np.uint16) * 257 if deep else (image >> 8).astype(np.uint8))
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self._fmt)

    def _send(self, frame: av.VideoFrame | None) -> None:
        """Send a frame the order let go of (its pts final) down the pipe; None: flush."""
        if frame is not None and (shown := self._held.pop(id(frame), None)) is not None:
            self._tail.append((frame.pts, shown))
        for pkt in self._stream.encode(frame):
            self._mux.mux(pkt)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:  # a stop anywhere here (ffmpeg can take seconds to finish) stops ffmpeg too
            try:
                for due in [*self._order.flush(), None]:
                    self._send(due)
                self._order.report(self.path.name, self._time_base
                                   if self._time_base != self._info.time_base else None,
                                   self._format)
                self._mux.close()
                self._proc.stdin.close()
            except (BrokenPipeError, OSError, av.error.FFmpegError) as exc:
                raise self._failed("stopped") from exc
            if self._proc.wait() != 0 or _finish_failed(self._log):
                raise self._failed(f"exited with {self._proc.returncode}"
                                   if self._proc.returncode else "could not finish the file")
            self._keep_last_durations()
            finish(self._temp, self.path, replace=self._overwrite)
        except BaseException:
            self.abort()
            raise
        self._log.close()
        self._lost.detach()
        self._copied = self._count_copied()

    def _keep_last_durations(self) -> None:
        """Give the last pictures their durations where ffmpeg's file does not.

        ffmpeg 5.1 gives each encoded packet one frame step of the pipe's declared rate,
        whatever the frame's duration (the NUT pipe carries none, and its encoder loop keeps
        none): a last picture shown 2 s ended the video after one step, and a variable-rate
        input's last one lasted 1/its average rate. Where the finished file's last packets
        say other durations than the input's, it is copied once more, packet by packet,
        those packets taking the input's (no encoding: a read and a write of the file);
        where that copy fails the file is kept as ffmpeg wrote it, with a warning.
        """
        if self._format not in _TIMED_FORMATS or not self._tail:
            return
        video = self._sources.index(self._info.index)
        fixed = None
        try:
            want = _wanted_durations(self._temp, video, self._tail, self._time_base)
            if not want:
                return
            fixed = temp_path_for(self.path)
            _remux(self._temp, fixed, video, want, self._format, self._movflags)
            os.replace(fixed, self._temp)
        except (av.error.FFmpegError, OSError, ValueError, InputError, OutputError) as exc:
            if fixed is not None:
                discard(fixed)
            log.warning("%s: the last pictures keep ffmpeg's durations (one frame step), "
                        "not the input's: copying the file to set them failed: %s",
                        self.path.name, exc)
        except BaseException:
            if fixed is not None:
                discard(fixed)
            raise

    def abort(self) -> None:
        self._done = True
        try:
            if hasattr(self, "_mux"):
                self._mux.close()
        except Exception:  # the pipe may be gone already; the process is killed below
            pass
        _stop_and_discard(self._proc, self._temp)
        self._log.close()
        if hasattr(self, "_lost"):
            self._lost.detach()


def _rescale(value: int, src: Fraction, dst: Fraction) -> int:
    """``value`` ticks of ``src`` in ticks of ``dst``, rounded as FFmpeg's av_rescale_q
    (to the nearest, halves away from zero)."""
    x = value * src / dst
    return (1 if x >= 0 else -1) * int(abs(x) + Fraction(1, 2))


def _near(want: dict[int, int], pts: int | None) -> int | None:
    """The key of ``want`` at ``pts`` or one tick from it (two roundings of one time)."""
    if pts is None:
        return None
    return next((k for k in (pts, pts - 1, pts + 1) if k in want), None)


def _wanted_durations(path: Path, video: int, tail: Sequence[tuple[int, int]],
                      time_base: Fraction) -> dict[int, int]:
    """The durations the last video packets of the file ``path`` should have, by pts (its
    video stream's time base), from ``tail``'s (pts, duration) in ``time_base``; {} where
    the last picture ends where it should already (within a tick). Only the end is asked
    after: an MP4 keeps no other packet's duration (its times are the decode times), and
    a copy that set theirs would change nothing there."""
    with open_media(file_url(path)) as c:
        s = c.streams[video]
        want = {}
        for pts, shown in tail:
            start = _rescale(pts, time_base, s.time_base)
            want[start] = _rescale(pts + shown, time_base, s.time_base) - start
        with contextlib.suppress(av.error.FFmpegError):  # unseekable: read from the start
            c.seek(max(want), stream=s, backward=True)
        last = max(((p.pts, p.duration or 0) for p in c.demux(s) if p.pts is not None),
                   default=None)
    key = _near(want, last[0]) if last else None
    if key is None or key != max(want):  # not the last picture's packet: copy to be sure
        return want
    return want if abs(last[0] + last[1] - (key + want[key])) > 1 else {}


class _ExactSource:
    """The finished file as :class:`Passthrough` reads it, for a copy that must keep every
    packet as it is: times that Passthrough would move on (a stream whose times FFmpeg 8's
    demuxer hands out running backwards: MP3 samples of several frames, split by its parser)
    raise OutputError instead."""

    def __init__(self, path: Path) -> None:
        self._c = open_media(file_url(path))
        self.streams, self.metadata = self._c.streams, self._c.metadata
        self.format, self.name = self._c.format, self._c.name

    def chapters(self) -> list:
        return self._c.chapters()

    def demux(self, streams: Sequence[av.stream.Stream]):
        last: dict[int, int] = {}
        for pkt in self._c.demux(streams):
            i, dts = pkt.stream.index, pkt.dts
            if dts is not None and i in last and (dts < last[i] or dts == last[i]
                                                  and pkt.stream.type in ("audio", "video")):
                raise OutputError(f"the times of stream {i} run backwards as PyAV reads it")
            if dts is not None:
                last[i] = dts
            yield pkt

    def close(self) -> None:
        self._c.close()


def _remux(src: Path, dst: Path, video: int, want: dict[int, int], fmt: str,
           movflags: str) -> None:
    """Copy the file ``src`` into ``dst`` (muxer ``fmt``) packet by packet, the video
    packets (stream ``video``) whose pts ``want`` names taking that duration. The other
    streams, tags, dispositions and chapters go over as the PyAV sink copies an input's
    (vsr.io.passthrough.Passthrough), each packet as it is; OutputError where the copy
    would leave a stream out or move a packet."""
    copy = Passthrough(_ExactSource(src), exclude=video, warn=False)
    try:
        with open_media(file_url(src)) as vin, \
                open_media(file_url(dst), mode="w", format=fmt, container_options={}) as out:
            out.metadata.update(container_tags(copy.metadata))
            if movflags:
                out.container_options["movflags"] = movflags
            vs = vin.streams[video]
            added: list[av.stream.Stream] = []
            copy.add_streams(out, lambda: added.append(out.add_stream_from_template(vs)))
            chapters = copy.chapters
            # an MP4's chapters come back as a text track, which the muxer makes again
            dropped = [d for d in copy.dropped if not (chapters and "(data," in d)]
            if dropped:
                raise OutputError(f"it would leave out {', '.join(dropped)}")
            (ov,) = added
            if vs.average_rate:  # Matroska's default duration: a reader's frame rate
                ov.codec_context.framerate = vs.average_rate
            ov.metadata.update(vs.metadata)
            if copy.timecode and "timecode" not in vs.metadata:  # its track goes on as a tag
                ov.metadata["timecode"] = copy.timecode
            if chapters:
                out.set_chapters(chapters)
            out.container_options["avoid_negative_ts"] = negative_ts_option(
                fmt, copies_streams=bool(copy.copied))
            for pkt in vin.demux(vs):
                if pkt.size == 0 and pkt.dts is None and pkt.pts is None:
                    continue  # the demuxer's end marker
                if (key := _near(want, pkt.pts)) is not None:
                    pkt.duration = want[key]
                t = pkt.dts if pkt.dts is not None else pkt.pts
                copy.mux_until(out, float(t * pkt.time_base) if t is not None else None)
                pkt.stream = ov
                out.mux(pkt)
            copy.mux_rest(out)
    finally:
        copy.close()


def _stop_and_discard(proc: subprocess.Popen, temp: Path) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    discard(temp)



def relay_command(url: str, fmt: str = "mpegts", *, overwrite: bool = False,
                  options: dict[str, str] | None = None) -> list[str]:
    """ffmpeg copying every stream of the MPEG-TS on its stdin to ``url`` as ``fmt`` (``-``:
    its stdout), with the muxer ``options``.

    A short probe (our own MPEG-TS needs little analysis; the default would hold the first
    seconds back), ``-copyts`` so the output keeps the stream's clock, and for ``srt://`` a
    linger on close so the tail reaches the receiver. An existing file is replaced only with
    ``overwrite`` (``-y``; else ``-n``: ffmpeg fails rather than asks).
    """
    src = ffmpeg.input("pipe:", format="mpegts", probesize="32768", analyzeduration="100000")
    opts = {"map": "0", "c": "copy", "f": fmt, "flush_packets": "1",
            "max_interleave_delta": "100000", **(options or {})}
    if url.startswith("srt://") and "linger=" not in url:
        opts["linger"] = str(SRT_LINGER_S)
    out = ffmpeg.output(src, "pipe:1" if url == "-" else url, **opts).global_args(
        "-hide_banner", "-nostdin", "-loglevel", "error", "-copyts",
        "-y" if overwrite else "-n")
    return ffmpeg.compile(out)


class FfmpegRelay:
    """The system ffmpeg sending what is written to :attr:`stdin` (MPEG-TS) to ``url``.

    ``finish`` closes the pipe and waits for ffmpeg; ``kill`` stops it. Both raise nothing
    but OutputError (``finish`` when ffmpeg failed, with its last error line).
    """

    def __init__(self, url: str, fmt: str = "mpegts", *, overwrite: bool = False,
                 options: dict[str, str] | None = None) -> None:
        if not ffmpeg_available():
            what = "stdout" if url == "-" else f"{url.split(':')[0]}://"
            raise OutputError(f"{what} output through ffmpeg needs the ffmpeg program on PATH")
        self.url = url
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the relay
        args = relay_command(url, fmt, overwrite=overwrite, options=options)
        log.debug("ffmpeg relay: %s", args)
        # ``-``: ffmpeg writes to our stdout (inherited), nothing else of ours goes there
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE,
                                      stdout=None if url == "-" else subprocess.DEVNULL,
                                      stderr=self._log, start_new_session=True)

    @property
    def stdin(self):
        return self._proc.stdin

    def error(self) -> OutputError | None:
        """ffmpeg's failure if it has exited with one, else None."""
        if self._proc.poll() in (None, 0):
            return None
        return OutputError(f"ffmpeg sending to {self.url} exited with {self._proc.returncode}: "
                           f"{_last_line(self._log)}")

    def finish(self, timeout: float = 2.0 * SRT_LINGER_S + 5) -> None:
        with contextlib.suppress(OSError):  # a broken pipe: ffmpeg's exit status tells why
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise OutputError(f"ffmpeg sending to {self.url} did not finish within "
                              f"{timeout:.0f} s") from None
        err = self.error()
        self._log.close()
        if err is not None:
            raise err

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        with contextlib.suppress(OSError):  # after the kill: a full pipe would block the flush
            self._proc.stdin.close()
        with contextlib.suppress(OSError):
            self._log.close()
