"""PyAV sink: encodes RGB frames at their input timestamps, copies every other stream.

A sink is a context manager; leaving the ``with`` block normally finishes the file (flush the
encoder, mux the remaining copied packets, rename the temporary file into place); leaving it
with an exception removes the temporary file. ``close()`` and ``abort()`` are idempotent.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vsr.errors import ConfigError, OutputError
from vsr.io.info import StreamInfo, bit_depth_of, has_alpha
from vsr.io.output import (
    SinkContext,
    check_output_path,
    discard,
    finish,
    temp_path_for,
    write_error,
)
from vsr.io.passthrough import Passthrough, container_tags, video_tags, warn_interlaced
from vsr.io.paths import file_url

log = logging.getLogger(__name__)

# x264's and x265's preset names (x264_preset_names, x265_preset_names); both also take the
# index 0..9, and x264 ignores case. An unknown preset makes the library print its own
# "x264 [error]: invalid preset" line to stderr before avcodec_open2 fails, which no libav
# log level silences, so it is refused here, before any encoder opens.
_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                 "slower", "veryslow", "placebo")
_NAMED_PRESETS = {"libx264": _X26X_PRESETS, "libx265": _X26X_PRESETS}


def check_preset(codec: str, preset: str) -> None:
    """Raise ConfigError unless ``preset`` is one of the x264/x265 presets for those codecs
    (other codecs' presets are checked against the encoder's options when it is set up)."""
    names = _NAMED_PRESETS.get(codec)
    if names is None:
        return
    value = preset.lower() if codec == "libx264" else preset
    if value not in names and value not in {str(i) for i in range(len(names))}:
        raise ConfigError(f"unknown {codec} preset {preset!r}; known: {', '.join(names)}")


@dataclass(frozen=True)
class EncodeConfig:
    """Video encoder settings; None leaves the codec's own default."""

    codec: str = "libx264"
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str):
            raise ConfigError(f"codec must be an encoder name, not {self.codec!r}")
        # exact int: True would reach the encoder as "True"
        if self.crf is not None and (type(self.crf) is not int or not 0 <= self.crf <= 63):
            raise ConfigError(f"crf must be an integer in 0..63, got {self.crf!r}")
        if self.preset is not None:
            if not isinstance(self.preset, str):
                raise ConfigError(f"preset must be a name, not {self.preset!r}")
            check_preset(self.codec, self.preset)
        if self.pix_fmt is not None and not isinstance(self.pix_fmt, str):
            raise ConfigError(f"unknown pixel format {self.pix_fmt!r}")
        if self.pix_fmt is not None:
            try:
                av.VideoFormat(self.pix_fmt)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"unknown pixel format {self.pix_fmt!r}") from exc


def rgb_frame(image: np.ndarray) -> av.VideoFrame:
    """An rgb24 (uint8) or rgb48le (uint16) VideoFrame holding a copy of ``image`` (H, W, 3).

    One numpy copy into the frame's own buffer, which runs without the GIL; PyAV's
    ``from_ndarray`` copies while holding it (9 ms per 2560x1440 frame here), stalling the
    pipeline's inference thread for that long on every frame.
    """
    h, w, _ = image.shape
    eight = image.dtype == np.uint8
    frame = av.VideoFrame(w, h, "rgb24" if eight else "rgb48le")
    plane = frame.planes[0]
    dtype = np.dtype(np.uint8 if eight else "<u2")  # the frame's byte order, whatever image's is
    row = plane.line_size // dtype.itemsize
    dst = np.frombuffer(plane, dtype=dtype, count=h * row).reshape(h, row)
    np.copyto(dst[:, : w * 3].reshape(h, w, 3), image)
    return frame


def check_codec(codec: str) -> None:
    """Raise ConfigError unless PyAV's libavcodec has the video encoder ``codec``."""
    try:
        kind = av.codec.Codec(codec, "w").type
    except (av.error.FFmpegError, ValueError) as exc:
        raise ConfigError(f"unknown or unavailable encoder {codec!r}") from exc
    if kind != "video":
        raise ConfigError(f"{codec!r} is an {kind} encoder, not a video encoder")


class PtsOrder:
    """Hands frames on in strictly increasing pts order, whatever order they come in.

    A decoder whose reorder delay was underestimated, or a camera clock that steps back
    (VLC recordings), gives frames whose pts run backwards now and then; the encoder then
    makes decode timestamps that every muxer refuses ("Invalid argument"). Players show
    frames by pts, so up to ``window`` frames are held and the earliest goes on first: the
    timestamps stay as they are. A pts that still does not advance (a repeat, or a step back
    longer than the window) is moved one tick after the previous one.
    """

    def __init__(self, window: int = 4) -> None:
        self._window = window
        self._heap: list[tuple[int, int, av.VideoFrame]] = []
        self._seq = 0
        self._max_seq = -1
        self._last: int | None = None
        self.reordered = 0  # frames that went on before one that came in earlier
        self.retimed = 0  # frames given a pts one tick after the previous one

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """Take ``frame`` (its pts set); the frames now due, in pts order."""
        heapq.heappush(self._heap, (frame.pts, self._seq, frame))
        self._seq += 1
        return [self._pop()] if len(self._heap) > self._window else []

    def flush(self) -> list[av.VideoFrame]:
        """Every frame still held, in pts order."""
        return [self._pop() for _ in range(len(self._heap))]

    def _pop(self) -> av.VideoFrame:
        pts, seq, frame = heapq.heappop(self._heap)
        if seq < self._max_seq:
            self.reordered += 1
        self._max_seq = max(self._max_seq, seq)
        if self._last is not None and pts <= self._last:
            pts = frame.pts = self._last + 1
            self.retimed += 1
        self._last = pts
        return frame

    def report(self, name: object) -> None:
        """Log what had to be done (nothing for well-formed input)."""
        if self.reordered or self.retimed:
            log.warning("%s: the input's frame timestamps ran backwards; %d frame(s) put back "
                        "in timestamp order, %d moved one tick after the previous one",
                        name, self.reordered, self.retimed)


def choose_pix_fmt(codec: str, info: StreamInfo, requested: str | None) -> str:
    """The encoder pixel format: the request, else the input's bit depth and chroma layout
    where the codec allows it (10-bit stays 10-bit), else the codec's nearest 8-bit format.
    Never one with alpha unless requested: the frames are RGB (an alpha plane would be all
    opaque, and an encoder may list such a format it was built without, as libx265 does)."""
    check_codec(codec)
    formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or ())]
    if requested is not None:
        if formats and requested not in formats:
            raise ConfigError(f"{codec} cannot encode {requested}; it takes {', '.join(formats)}")
        return requested
    if not formats:
        return info.pix_fmt
    if info.pix_fmt in formats and not has_alpha(info.pix_fmt):
        return info.pix_fmt
    chroma = "444" if "444" in info.pix_fmt else "422" if "422" in info.pix_fmt else "420"
    depth = info.bit_depth
    ranked = sorted(
        (f for f in formats if f.startswith(("yuv", "p0", "p2", "gbrp", "nv12"))),
        key=lambda f: (has_alpha(f), bit_depth_of(f) < depth, abs(bit_depth_of(f) - depth),
                       chroma not in f, f.startswith("yuvj"), f.startswith("nv")),
    )
    return ranked[0] if ranked else formats[0]


def _check_named_option(codec: str, option: av.codec.context.CodecOption, value: str) -> None:
    """Raise ConfigError unless ``value`` is one of the named values of an encoder's enum
    option (nvenc's presets, say), or a number in its range; free-text options pass."""
    names = [c.name for c in option.choices or ()]
    if not names or value in names:
        return
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is not None and option.min <= number <= option.max:
        return
    raise ConfigError(f"unknown {codec} {option.name} {value!r}; known: {', '.join(names)}")


def hdr_params(codec: str, info: StreamInfo, *, warn: bool = True) -> list[str]:
    """x264/x265 params carrying the input's HDR10 static metadata; for an encoder that
    cannot take them, one warning naming what the output loses (unless not ``warn``)."""
    if warn:
        warn_hdr_lost(codec, info)
    return info.hdr.x26x_params(codec) if info.hdr is not None else []


def warn_hdr_lost(codec: str, info: StreamInfo) -> None:
    """Warn when the encoder ``codec`` cannot carry the HDR10 metadata of the input ``info``
    (said once per output: a batch says it when it joins a file's segments)."""
    if info.hdr is not None and not info.hdr.x26x_params(codec):
        log.warning("%s: %s cannot carry the input's HDR10 %s; the output has none (use "
                    "libx265 or libx264 to keep it)", Path(info.path).name or info.path, codec,
                    info.hdr.describe())


class VideoEncoder:
    """The encode half shared by the sinks: RGB ndarray -> YUV frame -> packets."""

    def __init__(self, stream: av.video.stream.VideoStream, info: StreamInfo,
                 width: int, height: int, config: EncodeConfig, *,
                 warn_lost: bool = True) -> None:
        """``warn_lost``: warn of input metadata the encoder cannot carry (HDR10)."""
        self.pix_fmt = choose_pix_fmt(config.codec, info, config.pix_fmt)
        cc = stream.codec_context
        cc.width, cc.height, cc.pix_fmt = width, height, self.pix_fmt
        cc.time_base = info.time_base
        stream.time_base = info.time_base
        if info.frame_rate:
            cc.framerate = info.frame_rate
        if info.sample_aspect_ratio:
            cc.sample_aspect_ratio = info.sample_aspect_ratio
        c = info.color
        self._yuv = (self.pix_fmt.startswith(("yuv", "nv", "p0", "p2"))
                     and "yuvj" not in self.pix_fmt)
        if self._yuv:
            cc.color_range = c.sws_range
            if c.matrix not in (0, 2):
                cc.colorspace = c.matrix
        if c.primaries not in (0, 2):
            cc.color_primaries = c.primaries
        if c.transfer not in (0, 2):
            cc.color_trc = c.transfer
        private = {o.name: o for o in cc.supported_options.private}
        opts: dict[str, str] = {}
        if config.crf is not None:
            if "crf" not in private:
                raise ConfigError(f"{config.codec} has no crf setting")
            opts["crf"] = str(config.crf)
        if config.preset is not None:
            if "preset" not in private:
                raise ConfigError(f"{config.codec} has no preset setting")
            _check_named_option(config.codec, private["preset"], config.preset)
            opts["preset"] = config.preset
        params: list[str] = []
        if cc.name == "libx264":
            from vsr.device import x264_asm_without_avx512

            if (asm := x264_asm_without_avx512()) is not None:  # the same output on every run
                params.append(f"asm={asm}")
        params += hdr_params(cc.name, info, warn=warn_lost)
        if params:  # only libx264 and libx265 get any
            opts[cc.name.removeprefix("lib") + "-params"] = ":".join(params)
        cc.options = opts
        cc.thread_count = 0
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        self._stream = stream
        self._info = info
        self._size = (height, width)

    def frame(self, image: np.ndarray, pts: int) -> av.VideoFrame:
        """(H, W, 3) uint8/uint16 RGB at ``pts`` (input time base) -> an encoder-ready frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != self._size:
            raise OutputError(f"frame shape {image.shape} != expected {self._size + (3,)}")
        if image.dtype not in (np.uint8, np.uint16):
            raise OutputError(f"frame dtype {image.dtype} is not uint8 or uint16")
        rgb = rgb_frame(image)
        c = self._info.color
        out = rgb.reformat(format=self.pix_fmt, dst_colorspace=c.sws_matrix if self._yuv else None,
                           dst_color_range=c.sws_range if self._yuv else None)
        out.pts = pts
        out.time_base = self._info.time_base
        return out


class PyAVSink(SinkContext):
    """Writes the upscaled video of ``info`` to ``path`` with the other input streams copied.

    ``write(image, pts)`` takes (height, width, 3) RGB uint8 or uint16; raises OutputError.
    """

    def __init__(self, path: str | os.PathLike, info: StreamInfo, width: int, height: int,
                 config: EncodeConfig = EncodeConfig(), *, overwrite: bool = False,
                 copy_streams: bool = True) -> None:
        self.path = check_output_path(path, overwrite=overwrite, input_path=info.path)
        self._overwrite = overwrite
        self._temp = temp_path_for(self.path)
        self._done = False
        self._pass: Passthrough | None = None
        self._order = PtsOrder()
        self.frames = 0
        try:
            # Keep input timestamps as they are: the default shifts every stream when a copied
            # one starts below zero (AAC priming), which moves the video off its input times.
            self._out = av.open(file_url(self._temp), mode="w",
                                container_options={"avoid_negative_ts": "disabled"})
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            discard(self._temp)
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        try:
            self._setup(info, width, height, config, copy_streams)
        except BaseException:
            self.abort()
            raise

    def _setup(self, info: StreamInfo, width: int, height: int, config: EncodeConfig,
               copy_streams: bool) -> None:
        out = self._out

        def add_video() -> None:
            check_codec(config.codec)
            try:
                stream = out.add_stream(config.codec, rate=info.frame_rate or Fraction(25))
            except (av.error.FFmpegError, ValueError, TypeError) as exc:
                # e.g. .gif or .bmp: a muxer that takes one codec (or stills) only
                raise OutputError(f"the output format of {self.path.name} "
                                  f"({out.format.name}) cannot hold {config.codec} video; "
                                  "use .mp4, .mkv, .mov or another video container") from exc
            # the whole file; a batch segment's loss is said at the join, once per file
            self._enc = VideoEncoder(stream, info, width, height, config,
                                     warn_lost=copy_streams)
            self._stream = stream

        if copy_streams:
            self._pass = Passthrough(info.path, exclude=info.index)
            meta = self._pass.metadata
            out.metadata.update(container_tags(meta))
            self._pass.add_streams(out, add_video)
            chapters = self._pass.chapters
            if chapters:
                try:
                    out.set_chapters(chapters)
                except (av.error.FFmpegError, TypeError, ValueError) as exc:
                    log.warning("chapters not copied: %s", exc)
        else:
            add_video()
        with av.open(file_url(info.path)) as src:
            meta = dict(src.streams[info.index].metadata)
            if copy_streams:  # the whole file (a batch segment's is warned of at the join)
                warn_interlaced(src.streams[info.index], info.path)
        tags = self._pass.tags_for_video(meta) if self._pass is not None else video_tags(meta)
        self._stream.metadata.update(tags)
        try:
            out.start_encoding()
        except av.error.FFmpegError as exc:
            if "avcodec_open2" in str(exc):  # the encoder refused a setting: name them
                settings = ", ".join(f"{k} {v}" for k, v in (("crf", config.crf),
                                     ("preset", config.preset), ("pixel format", self.pix_fmt))
                                     if v is not None)
                raise OutputError(f"cannot start writing {self.path}: the {config.codec} "
                                  f"encoder refused its settings ({settings}): "
                                  f"{exc.strerror or exc}") from exc
            raise OutputError(f"cannot start writing {self.path}: {exc}") from exc

    @property
    def pix_fmt(self) -> str:
        return self._enc.pix_fmt

    @property
    def copied_packets(self) -> dict[int, int]:
        return dict(self._pass.copied) if self._pass else {}

    def write(self, image: np.ndarray, pts: int) -> None:
        for frame in self._order.push(self._enc.frame(image, pts)):
            self._mux(self._stream.encode(frame))
        self.frames += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        for pkt in packets:
            if self._pass is not None:
                t = pkt.dts if pkt.dts is not None else pkt.pts
                self._pass.mux_until(self._out, float(t * pkt.time_base) if t is not None else None)
            try:
                self._out.mux(pkt)
            except av.error.FFmpegError as exc:
                raise write_error(self.path, exc) from exc

    def close(self) -> None:
        """Flush and finish the file; the output appears at ``path`` only now."""
        if self._done:
            return
        try:
            for frame in self._order.flush():
                self._mux(self._stream.encode(frame))
            self._mux(self._stream.encode(None))
            self._order.report(self.path.name)
            if self._pass is not None:
                self._pass.mux_rest(self._out)
            self._out.close()
        except (av.error.FFmpegError, OSError) as exc:  # the trailer: disk full, I/O error
            self.abort()
            raise write_error(self.path, exc, "finishing") from exc
        except BaseException:
            self.abort()
            raise
        self._done = True
        if self._pass is not None:
            self._pass.close()
        finish(self._temp, self.path, replace=self._overwrite)

    def abort(self) -> None:
        """Stop and remove the partial output; never raises for a half-written file."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
            self._out.close()
        if self._pass is not None:
            self._pass.close()
        discard(self._temp)



def output_size(info: StreamInfo, scale: int) -> tuple[int, int]:
    """(width, height) of the output for an input upscaled ``scale`` times."""
    return info.width * scale, info.height * scale

