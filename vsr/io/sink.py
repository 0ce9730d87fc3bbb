"""PyAV sink: encodes RGB frames at their input timestamps, copies every other stream.

A sink is a context manager; leaving the ``with`` block normally finishes the file (flush the
encoder, mux the remaining copied packets, rename the temporary file into place); leaving it
with an exception removes the temporary file. ``close()`` and ``abort()`` are idempotent.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vsr.errors import ConfigError, OutputError
from vsr.io.colour import from_rgb, is_grey, writes_own
from vsr.io.info import (
    EXACT_YUV,
    ColorInfo,
    StreamInfo,
    bit_depth_of,
    clock_reset,
    clock_reset_error,
    format_has_alpha,
    has_alpha,
    written_time_base,
)
from vsr.io.output import (
    SinkContext,
    check_frame,
    check_output_path,
    discard,
    finish,
    temp_path_for,
    write_error,
)
from vsr.io.passthrough import (
    MOVENC_FORMATS,
    Passthrough,
    container_tags,
    metadata_movflags,
    video_tags,
)
from vsr.io.paths import file_url, negative_ts_option, open_media
from vsr.options import Config

log = logging.getLogger(__name__)

# x264's and x265's preset names (x264_preset_names, x265_preset_names); both also take the
# index 0..9, and x264 ignores case. An unknown preset makes the library print its own
# "x264 [error]: invalid preset" line to stderr before avcodec_open2 fails, which no libav
# log level silences, so it is refused here, before any encoder opens.
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")
_NAMED_PRESETS = {"libx264": X26X_PRESETS, "libx265": X26X_PRESETS}


def check_preset(codec: str, preset: str) -> None:
    """Raise ConfigError unless ``preset`` is one of the x264/x265 presets for those codecs
    (other codecs' presets are checked against the encoder's options when it is set up)."""
    names = _NAMED_PRESETS.get(codec)
    if names is None:
        return
    value = preset.lower() if codec == "libx264" else preset
    if value not in names and value not in {str(i) for i in range(len(names))}:
        raise ConfigError(f"unknown {codec} preset {preset!r}; known: {', '.join(names)}")


# the CRF range of encoders that clamp a value over it without a word (libx264 wrote crf=51 for
# 60); others take 0..63 (libvpx-vp9, libsvtav1, libaom-av1) or have no crf, which the open says
CRF_MAX = {"libx264": 51, "libx264rgb": 51, "libx265": 51, "libvpx-vp9": 63, "libsvtav1": 63,
           "libaom-av1": 63}


@dataclass(frozen=True)
class EncodeConfig(Config):
    """Video encoder settings; None leaves the codec's own default. The codec is checked
    where it is used (the ffmpeg program's encoder may be one PyAV lacks); ``crf`` here,
    against the codec's range (:data:`CRF_MAX`; 0..63 for another codec)."""

    codec: str = "libx264"
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.codec, str):
            raise ConfigError(f"codec must be an encoder name, not {self.codec!r}")
        # exact int: True would reach the encoder as "True"
        top = CRF_MAX.get(self.codec, 63)
        if self.crf is not None and (type(self.crf) is not int or not 0 <= self.crf <= top):
            which = f" for {self.codec}" if self.codec in CRF_MAX else ""
            raise ConfigError(f"crf must be an integer in 0..{top}{which}, got {self.crf!r}")
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
    """An rgb24 / rgba (uint8) or rgb48le / rgba64le (uint16) VideoFrame holding a copy of
    ``image`` (H, W, 3) RGB or (H, W, 4) RGBA.

    One numpy copy into the frame's own buffer, which runs without the GIL; PyAV's
    ``from_ndarray`` copies while holding it (9 ms per 2560x1440 frame here), stalling the
    pipeline's inference thread for that long on every frame.
    """
    h, w, c = image.shape
    eight = image.dtype == np.uint8
    fmt = {(True, 3): "rgb24", (False, 3): "rgb48le", (True, 4): "rgba", (False, 4): "rgba64le"}
    frame = av.VideoFrame(w, h, fmt[eight, c])
    plane = frame.planes[0]
    dtype = np.dtype(np.uint8 if eight else "<u2")  # the frame's byte order, whatever image's is
    row = plane.line_size // dtype.itemsize
    dst = np.frombuffer(plane, dtype=dtype, count=h * row).reshape(h, row)
    np.copyto(dst[:, : w * c].reshape(h, w, c), image)
    return frame


def check_codec(codec: str) -> None:
    """Raise ConfigError unless PyAV's libavcodec has the video encoder ``codec``."""
    try:
        kind = av.codec.Codec(codec, "w").type
    except (av.error.FFmpegError, ValueError) as exc:
        raise ConfigError(f"unknown or unavailable encoder {codec!r}") from exc
    if kind != "video":
        raise ConfigError(f"{codec!r} is an {kind} encoder, not a video encoder")


# (width, height) the libx265 bundled with PyAV encodes safely: it refuses pictures under 16
# pixels a side and corrupts its heap (the process aborts) on some under 50x32, measured
# (34-48 wide, 16-30 high); vsr.codecs pads its small clips to it
X265_MIN_SIZE = (64, 32)


# Encoders that refuse a picture whose size the pixel format's chroma subsampling does not
# divide (an odd width in 4:2:0 or 4:2:2, an odd height in 4:2:0): "Generic error in an
# external library", and x265 prints its own lines to stderr first. VP9, AV1, FFV1 and MPEG-4
# take such sizes.
_WHOLE_CHROMA_ENCODERS = frozenset({"libx264", "libx265"})


def check_chroma_size(codec: str, pix_fmt: str, width: int, height: int) -> None:
    """Raise OutputError, before the encoder opens, where ``codec`` cannot code a
    ``width`` x ``height`` picture in ``pix_fmt`` (see _WHOLE_CHROMA_ENCODERS)."""
    if codec not in _WHOLE_CHROMA_ENCODERS:
        return
    components = av.VideoFormat(pix_fmt, 64, 64).components
    if len(components) < 2:
        return
    sub_w, sub_h = 64 // components[1].width, 64 // components[1].height
    if width % sub_w or height % sub_h:
        raise OutputError(f"{codec} cannot code a {width}x{height} picture in {pix_fmt}, whose "
                          f"colour planes are 1/{sub_w} as wide and 1/{sub_h} as high: use "
                          "--pix-fmt yuv444p, or another --scale or --codec (e.g. libvpx-vp9)")


class PtsOrder:
    """Hands frames on in strictly increasing pts order, whatever order they come in.

    A decoder whose reorder delay was underestimated, or a camera clock that steps back
    (VLC recordings), gives frames whose pts run backwards now and then; the encoder then
    makes decode timestamps that every muxer refuses ("Invalid argument"). Players show
    frames by pts, so up to ``window`` frames are held and the earliest goes on first: the
    timestamps stay as they are. A pts that still does not advance (a repeat, or a step back
    longer than the window) is moved one tick after the previous one. With ``name`` (the
    input's), a step back that is a restart of the clock (:func:`vsr.io.info.clock_reset`, at
    ``frame_rate``) raises InputError: no order of the frames is right then.
    """

    def __init__(self, window: int = 4, *, name: str | None = None,
                 frame_rate: Fraction | None = None) -> None:
        self._window = window
        self._name, self._frame_rate = name, frame_rate
        self._pushed: Fraction | None = None  # the time of the frame pushed last, in s
        self._heap: list[tuple[int, int, av.VideoFrame]] = []
        self._seq = 0
        self._max_seq = -1
        self._last: int | None = None
        self.reordered = 0  # frames that went on before one that came in earlier
        self.retimed = 0  # frames given a pts one tick after the previous one

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """Take ``frame`` (its pts set); the frames now due, in pts order."""
        if self._name is not None and frame.time_base:
            now = frame.pts * Fraction(frame.time_base)
            if self._pushed is not None and clock_reset(self._pushed, now, self._frame_rate):
                raise clock_reset_error(self._name, self._seq, self._pushed, now)
            self._pushed = now
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

    def report(self, name: object, tick: Fraction | None = None,
               container: str | None = None) -> None:
        """Log what had to be done (nothing for well-formed input). ``tick``: the output's
        time base where it is coarser than the input's (AVI, raw streams: one frame a tick),
        so that frames of a variable-rate input closer than a tick share one; ``container``:
        the output's muxer, to name it."""
        if tick is not None and self.retimed and not self.reordered:
            log.warning("%s: %s holds one frame per tick of %.4g s; %d frame(s) of the input, "
                        "closer to the one before, moved to the next tick", name,
                        (container or "this output").upper(), float(tick), self.retimed)
            return
        if self.reordered or self.retimed:
            log.warning("%s: the input's frame timestamps ran backwards; %d frame(s) put back "
                        "in timestamp order, %d moved one tick after the previous one",
                        name, self.reordered, self.retimed)


# Encoders that write an alpha plane in the formats with alpha they list. Others that list one
# are left out: libx265 lists yuva420p whether or not it was built with alpha (and few
# decoders read HEVC's alpha layer); NVENC's rgba/bgra are inputs it converts to YUV.
_ALPHA_ENCODERS = frozenset({"ffv1", "ffvhuff", "huffyuv", "utvideo", "magicyuv", "prores_ks",
                             "prores_aw", "libvpx", "libvpx-vp9", "png", "apng", "qtrle", "cfhd",
                             "libwebp", "libwebp_anim", "tiff"})
# libvpx's alpha plane goes beside each frame as Matroska BlockAdditional: only Matroska and
# WebM keep it (MP4, NUT and the rest drop it without a word).
_ALPHA_BESIDE = frozenset({"libvpx", "libvpx-vp9"})
# What the warning suggests: (encoder, where it goes)
_ALPHA_ADVICE = (("ffv1", ".mkv"), ("prores_ks", ".mov or .mkv"), ("libvpx-vp9", ".webm or .mkv"),
                 ("png", ".mov"), ("qtrle", ".mov"))


def keeps_alpha(codec: str, container: str | None = None) -> bool:
    """Whether the encoder ``codec`` writes an alpha plane that the muxer ``container``
    (a format name as FFmpeg's, "matroska,webm", "mov,mp4..."; None: not known) keeps."""
    if codec not in _ALPHA_ENCODERS:
        return False
    if codec in _ALPHA_BESIDE and container is not None:
        return "matroska" in container or "webm" in container
    return True


def alpha_advice() -> str:
    """Which outputs keep an alpha channel, for a warning."""
    codecs = [f"{c} ({where})" for c, where in _ALPHA_ADVICE if c in av.codecs_available]
    return ("pictures written as .png, .webp or .tif keep it, and video with --codec "
            + ", ".join(codecs))


def warn_alpha_lost(info: StreamInfo, writer: str) -> None:
    """Warn that the input ``info`` has an alpha channel that ``writer`` (what writes the
    output: "libx264 video", "a .jpg picture") cannot hold; the same words for every segment
    of a file, so a batch says it once (vsr.jobs.segments.TASK_LOGGERS)."""
    log.warning("%s has an alpha channel (%s) that %s cannot hold: the colour is upscaled, "
                "the output has no alpha; %s", Path(info.path).name or info.path, info.pix_fmt,
                writer, alpha_advice())


def alpha_writer(codec: str, pix_fmt: str, container: str | None) -> str:
    """What drops the alpha plane, for :func:`warn_alpha_lost`: the encoder, the container
    it is in, or the pixel format it was asked for."""
    if keeps_alpha(codec, container):
        return f"{codec} video in pixel format {pix_fmt}"  # a --pix-fmt without alpha
    if keeps_alpha(codec):
        batch = ", and vsr batch encodes into .nut segments" if container == "nut" else ""
        return (f"{codec} video in a {container or 'non-Matroska'} file (only .webm and .mkv "
                f"keep its alpha{batch})")
    return f"{codec} video"


def choose_pix_fmt(codec: str, info: StreamInfo, requested: str | None, *,
                   alpha: bool = False, formats: Sequence[str] | None = None) -> str:
    """The encoder pixel format: the request, else the input's bit depth and chroma layout
    where the codec allows it (10-bit stays 10-bit), else the codec's nearest 8-bit format.

    ``alpha``: the frames carry an alpha plane the output can keep (:func:`keeps_alpha`); the
    format then has alpha where the codec has one. Never one with alpha otherwise unless
    requested: the frames are RGB (an alpha plane would be all opaque, and an encoder may list
    such a format it was built without, as libx265 does). ``formats``: those the encoder
    takes (the ffmpeg program's may differ from PyAV's); None: PyAV's encoder's."""
    if formats is None:
        check_codec(codec)
        formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or ())]
    if requested is not None:
        if formats and requested not in formats:
            raise ConfigError(f"{codec} cannot encode {requested}; it takes {', '.join(formats)}")
        return requested
    if not formats:
        return info.pix_fmt
    named = format_has_alpha(info.pix_fmt)  # by the name: a GIF's bgra has it, used or not
    # H.264 4:0:0 comes out of FFmpeg's decoder as yuv420p, its range applied, while swscale
    # writes grey at full range whatever is asked: grey video's contrast came out stretched
    grey_h264 = info.pix_fmt.startswith("gray") and _canonical(codec) == "h264"
    # a lossless codec keeps RGB frames RGB, in whichever packing it takes, and palette
    # frames too: their upscaled colours are no longer the palette's
    rgb = _canonical(codec) in _LOSSLESS_CODECS and _is_rgb(info.pix_fmt)
    if info.pix_fmt in formats and not grey_h264 and not (rgb and info.pix_fmt == "pal8") and (
            named if alpha else not (named or has_alpha(info.pix_fmt))):
        return info.pix_fmt
    chroma = "444" if "444" in info.pix_fmt else "422" if "422" in info.pix_fmt else "420"
    depth = info.bit_depth
    kinds = ("yuv", "p0", "p2", "gbrp", "nv12") + (("gbrap", "rgba", "bgra", "argb", "abgr")
                                                   if alpha else ())
    if rgb:
        kinds += ("rgb", "bgr", "0rgb", "0bgr")
    ranked = sorted(
        (f for f in formats if f.startswith(kinds)),
        key=lambda f: (has_alpha(f) != alpha, bit_depth_of(f) < depth,
                       abs(bit_depth_of(f) - depth), rgb and not _is_rgb(f), chroma not in f,
                       f.startswith("yuvj"), f.startswith("nv")),
    )
    return ranked[0] if ranked else formats[0]


# Codecs that code the frames exactly: an RGB input stays RGB in them (choose_pix_fmt).
_LOSSLESS_CODECS = frozenset({"ffv1", "ffvhuff", "huffyuv", "utvideo", "magicyuv", "png",
                              "apng", "qtrle", "rawvideo", "zmbv", "tiff"})


def _is_rgb(pix_fmt: str) -> bool:
    """Whether ``pix_fmt`` holds RGB (packed or planar) or palette colours."""
    try:
        return pix_fmt == "pal8" or av.VideoFormat(pix_fmt).is_rgb
    except (ValueError, TypeError):
        return False


# Codecs whose bitstream has no full-range flag (ProRes, MPEG-1/2 video, VP8): their decoders
# read every frame as limited range, so a full-range input written as it was came back with
# its contrast stretched.
_LIMITED_RANGE_CODECS = frozenset({"prores", "mpeg1video", "mpeg2video", "vp8"})


def is_yuv(pix_fmt: str) -> bool:
    """Whether ``pix_fmt`` is YUV or grey (luma alone): formats that take a range."""
    return pix_fmt.startswith(("yuv", "nv", "p0", "p2", "gray"))


def written_colour(codec: str, pix_fmt: str, color: ColorInfo, input_fmt: str) -> ColorInfo:
    """The colour properties the encoder ``codec`` writes in ``pix_fmt`` for an input of
    ``color`` in ``input_fmt``: JPEG YUV (yuvj) is full range whatever was said; grey from
    colour input too (FFmpeg's swscale reads any grey as full range, a tag-aware player by its
    tag: full is where both agree; grey input keeps its own range); ProRes, MPEG-1/2 and VP8
    limited (they cannot say full)."""
    if pix_fmt.startswith("yuvj") or (is_grey(pix_fmt) and not is_grey(input_fmt)):
        return replace(color, range=2)
    if color.range == 2 and (_canonical(codec) or codec) in _LIMITED_RANGE_CODECS:
        return replace(color, range=1)
    return color


def _canonical(codec: str) -> str | None:
    """The codec the encoder ``codec`` writes ("h264" for libx264), where PyAV knows it."""
    try:
        return av.codec.Codec(codec, "w").canonical_name
    except (av.error.FFmpegError, ValueError):
        return None


# encoders that keep 10 bits or more, in the order a warning suggests them
_DEEP_ADVICE = ("libx265", "libsvtav1", "libx264", "ffv1")


def warn_depth_lost(info: StreamInfo, codec: str, pix_fmt: str,
                    formats: Sequence[str] | None = None) -> None:
    """Warn where ``pix_fmt``, chosen for ``codec`` (which takes ``formats``; None: PyAV's
    encoder's), holds fewer bits than the input ``info``: the same words for every segment
    of a file, so a batch says it once."""
    depth = bit_depth_of(pix_fmt)
    if depth >= info.bit_depth:
        return
    if formats is None:
        formats = ([f.name for f in (av.codec.Codec(codec, "w").video_formats or ())]
                   if codec in av.codecs_available else [])
    most = max((bit_depth_of(f) for f in formats), default=depth)
    deep = [c for c in _DEEP_ADVICE if c != codec and c in av.codecs_available
            and max(map(bit_depth_of, av.codec.Codec(c, "w").video_formats or ()), default=0)
            >= info.bit_depth]
    log.warning("%s: %s encodes %d bits at most here: the %d-bit input is written at %d bits "
                "(%s); codecs that keep %d: %s", Path(info.path).name or info.path, codec,
                most, info.bit_depth, depth, pix_fmt, info.bit_depth,
                ", ".join(deep) or "none here")


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


def hdr_params(codec: str, info: StreamInfo) -> list[str]:
    """x264/x265 params carrying the input's HDR10 static metadata; for an encoder that
    cannot take them, one warning naming what the output loses."""
    warn_hdr_lost(codec, info)
    return info.hdr.x26x_params(codec) if info.hdr is not None else []


def warn_hdr_lost(codec: str, info: StreamInfo) -> None:
    """Warn when the encoder ``codec`` cannot carry the HDR10 metadata of the input ``info``
    (said once per output: a batch says a segment's once per file)."""
    if info.hdr is not None and not info.hdr.x26x_params(codec):
        log.warning("%s: %s cannot carry the input's HDR10 %s; the output has none (use "
                    "libx265 or libx264 to keep it)", Path(info.path).name or info.path, codec,
                    info.hdr.describe())


def cannot_hold(output: Path, fmt: str, codec: str) -> OutputError:
    """The error for an output whose container (muxer ``fmt``) cannot hold ``codec`` video:
    a picture or raw format (.gif, .bmp, .y4m), or a pairing such as ffv1 in .mov."""
    where = _holding(codec, fmt)
    held = _held_by(fmt)
    return OutputError(f"the output format of {output.name} ({fmt}) cannot hold {codec} "
                       "video; use another --codec" + (f" ({fmt} holds {' or '.join(held)})"
                                                      if held else "")
                       + (f", or a container that can (e.g. {where})" if where else ""))


# Encoders an error may suggest for a container, in this order (each tried on the muxer):
# WebM holds none of the default's H.264, and the user had to find out which it does hold
_SUGGESTED_ENCODERS = ("libx264", "libvpx-vp9", "libsvtav1", "libx265", "ffv1")


def _held_by(fmt: str) -> list[str]:
    """The first two of :data:`_SUGGESTED_ENCODERS` that PyAV has and whose video the muxer
    ``fmt`` takes; [] where none (a picture or raw format) or the muxer is unknown."""
    try:
        with open_media(io.BytesIO(), mode="w", format=fmt) as trial:
            takes = trial.supported_codecs
    except (av.error.FFmpegError, ValueError):
        return []
    return [c for c in _SUGGESTED_ENCODERS if (name := _canonical(c)) and name in takes][:2]


def _holding(codec: str, fmt: str) -> str | None:
    """The suffix of the first of Matroska, MOV, MP4 and AVI (not ``fmt``) whose muxer takes
    ``codec`` video; None where none does, or PyAV does not know the encoder."""
    name = _canonical(codec)
    for suffix, candidate in ((".mkv", "matroska"), (".mov", "mov"), (".mp4", "mp4"),
                              (".avi", "avi")):
        if candidate == fmt or name is None:
            continue
        with contextlib.suppress(av.error.FFmpegError, ValueError), \
                open_media(io.BytesIO(), mode="w", format=candidate) as trial:
            if name in trial.supported_codecs:
                return suffix
    return None


# The video codecs MPEG-TS has a stream type for (FFmpeg's mpegtsenc). It takes any other
# one without a word and writes it as opaque private data: a .ts of VP9, AV1, FFV1 or ProRes
# read back as a "bin_data" stream and no video at all.
_MPEGTS_VIDEO = frozenset({"mpeg1video", "mpeg2video", "mpeg4", "h264", "hevc", "vvc", "cavs",
                           "avs2", "avs3", "dirac", "vc1"})


def _y4m_formats(codec: str, container: str | None) -> list[str] | None:
    """The pixel formats ``codec`` can write into ``container`` where the muxer takes fewer
    than the encoder (Y4M: Y'CbCr and grey, no RGB: rawvideo of an RGB input kept its format,
    which the muxer refused); None: the encoder's own."""
    if container != "yuv4mpegpipe":
        return None
    check_codec(codec)
    takes = [f.name for f in (av.codec.Codec(codec, "w").video_formats or ())]
    return [f for f in _Y4M_FORMATS if not takes or f in takes] or None


# What FFmpeg's Y4M muxer writes (yuv4mpegenc): planar Y'CbCr and grey, 8 to 16 bits
_Y4M_FORMATS = ("yuv420p", "yuv422p", "yuv444p", "yuv411p", "gray",
                *(f"yuv{c}p{b}le" for c in ("420", "422", "444") for b in (9, 10, 12, 14, 16)),
                *(f"gray{b}le" for b in (9, 10, 12, 16)))


def check_holds(output: Path, fmt: str | None, codec: str) -> None:
    """Raise :func:`cannot_hold` where the muxer ``fmt`` takes ``codec`` video but writes it
    as something no reader sees as video (MPEG-TS and its unknown codecs), or refuses it only
    when its header is written (Y4M: raw pictures only; `vsr batch` computed every segment
    first); the other refusals come from the muxer itself."""
    if fmt not in ("mpegts", "yuv4mpegpipe"):
        return
    try:
        name = av.Codec(codec, "w").canonical_name
    except ValueError:  # an encoder only the ffmpeg program has: its own check stands
        return
    if fmt == "yuv4mpegpipe" and name not in ("rawvideo", "wrapped_avframe"):
        raise OutputError(f"the output format of {output.name} (yuv4mpegpipe) holds raw "
                          f"pictures only, not {codec} video: use --codec rawvideo, or a "
                          "container that holds it (e.g. .mkv)")
    if fmt == "mpegts" and name not in _MPEGTS_VIDEO:
        raise cannot_hold(output, fmt, codec)


def fitting_config(fmt: str, config: EncodeConfig, output: Path) -> EncodeConfig:
    """``config`` for the muxer ``fmt``: a GIF holds GIF pictures only, so another --codec
    (libx264, the default) is replaced by the gif encoder, with a warning, as `vsr batch`
    needs for a folder's animated GIFs written back as .gif."""
    if fmt == "gif" and config.codec != "gif":
        log.warning("%s: a GIF holds GIF pictures only: written with the gif encoder, not %s",
                    output.name, config.codec)
        return EncodeConfig(codec="gif")
    return config


def x265_quiet(codec: str) -> list[str]:
    """x265-params that keep libx265 from printing its "x265 [info]" lines to stderr (the
    library never prints; its errors still reach the log through libav)."""
    return ["log-level=error"] if codec == "libx265" else []


def quiet_encoder(codec: str) -> None:
    """Keep ``codec``'s own log off stderr where only the environment can: SVT-AV1 prints
    about 20 "Svt[info]" lines at each encoder it opens (a `vsr batch` segment each), and
    reads SVT_LOG once, at the first. Errors only (1), unless the environment chooses."""
    if codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")


def _own_alpha_plane(pix_fmt: str) -> int | None:
    """The index of an 8-bit plane that holds the alpha alone (yuva420p, gbrap...), or None."""
    comps = av.VideoFormat(pix_fmt).components
    alpha = [c for c in comps if c.is_alpha]
    if len(alpha) != 1 or alpha[0].bits != 8:
        return None
    plane = alpha[0].plane
    return plane if sum(c.plane == plane for c in comps) == 1 else None


class VideoEncoder:
    """The encode half shared by the sinks: RGB(A) ndarray -> YUV(A) frame -> packets.

    ``alpha``: the encoder writes an alpha plane, and :meth:`frame` takes RGBA frames.
    """

    def __init__(self, stream: av.video.stream.VideoStream, info: StreamInfo,
                 width: int, height: int, config: EncodeConfig, *,
                 container: str | None = None) -> None:
        """``container``: the muxer's format name, for whether it keeps the alpha plane.
        What the output loses of the input (its alpha channel, HDR10 metadata) is warned of
        (a batch says it once per file)."""
        if config.codec == "libx265" and (width < X265_MIN_SIZE[0] or height < X265_MIN_SIZE[1]):
            raise OutputError(f"libx265 cannot encode a {width}x{height} picture here (PyAV's "
                              "x265 fails, or aborts the process, on pictures under 64x32); "
                              "use another --codec, e.g. libx264")
        keep = info.alpha and keeps_alpha(config.codec, container)
        self.pix_fmt = choose_pix_fmt(config.codec, info, config.pix_fmt, alpha=keep,
                                      formats=_y4m_formats(config.codec, container))
        if config.pix_fmt is None:
            warn_depth_lost(info, config.codec, self.pix_fmt)
        check_chroma_size(config.codec, self.pix_fmt, width, height)
        quiet_encoder(config.codec)
        self.alpha = keep and has_alpha(self.pix_fmt)
        if info.alpha and not self.alpha:
            warn_alpha_lost(info, alpha_writer(config.codec, self.pix_fmt, container))
        cc = stream.codec_context
        cc.width, cc.height, cc.pix_fmt = width, height, self.pix_fmt
        cc.time_base = info.time_base
        stream.time_base = info.time_base
        if info.frame_rate:
            cc.framerate = info.frame_rate
        if info.sample_aspect_ratio:
            cc.sample_aspect_ratio = info.sample_aspect_ratio
        # YUV and grey (luma alone) take a range, and YUV a matrix: the input's, so that the
        # output shows as it does; grey was written full range and declared nothing, so
        # players stretched its contrast.
        self._yuv = is_yuv(self.pix_fmt)
        self._color = c = written_colour(config.codec, self.pix_fmt, info.color, info.pix_fmt)
        # the range the output declares: the input's, where it says one (0: none)
        self.color_range = c.range if self._yuv and c.range in (1, 2) else 0
        # the description as frame properties too: some encoders (prores_ks) write each
        # frame's own, and frames from swscale carry none (all unspecified in its headers)
        self._described: dict[str, int] = {}
        if self._yuv:
            cc.color_range = c.sws_range
            if c.matrix not in (0, 2) and not self.pix_fmt.startswith("gray"):
                cc.colorspace = self._described["colorspace"] = c.matrix
        if c.primaries not in (0, 2):
            cc.color_primaries = self._described["color_primaries"] = c.primaries
        if c.transfer not in (0, 2):
            cc.color_trc = self._described["color_trc"] = c.transfer
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
        params += hdr_params(cc.name, info) + x265_quiet(cc.name)
        if params:  # only libx264 and libx265 get any
            opts[cc.name.removeprefix("lib") + "-params"] = ":".join(params)
        cc.options = opts
        cc.thread_count = 0
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        self._stream = stream
        self._info = info
        self._size = (height, width)
        self._alpha_plane = _own_alpha_plane(self.pix_fmt) if self.alpha else None
        # Y'CbCr and grey of more than 8 bits, or from 16-bit RGB, or full range: converted by
        # vsr.io.colour (swscale was 0.4% off, or truncated full-range chroma); 8-bit RGB to
        # 8-bit limited range stays with swscale, exact with EXACT_YUV and faster
        self._own = {eight: writes_own(self.pix_fmt, eight, c) for eight in (True, False)}

    def frame(self, image: np.ndarray, pts: int) -> av.VideoFrame:
        """(H, W, 3) uint8/uint16 RGB at ``pts`` (input time base) -> an encoder-ready frame;
        (H, W, 4) RGBA too where the encoder writes alpha (RGB then is opaque)."""
        check_frame(image, self._size, alpha=self.alpha)
        c = self._color
        if self._own[image.dtype == np.uint8]:
            out = from_rgb(image, self.pix_fmt, c)  # its alpha exact too
            return self._stamped(out, pts)
        direct = image.shape[2] == 4 and image.dtype == np.uint8 and self._alpha_plane is not None
        rgb = rgb_frame(image[..., :3] if direct else image)
        out = rgb.reformat(format=self.pix_fmt, dst_colorspace=c.sws_matrix if self._yuv else None,
                           dst_color_range=c.sws_range if self._yuv else None,
                           interpolation=EXACT_YUV if image.dtype == np.uint8 else None)
        if direct:  # the colour planes as from RGBA; the alpha exact (swscale's is off by one)
            plane = out.planes[self._alpha_plane]
            h, w = self._size
            dst = np.frombuffer(plane, np.uint8, count=h * plane.line_size)
            np.copyto(dst.reshape(h, plane.line_size)[:, :w], image[..., 3])
        return self._stamped(out, pts)

    def _stamped(self, out: av.VideoFrame, pts: int) -> av.VideoFrame:
        """``out`` with the colour description and ``pts`` (input time base) set."""
        for key, value in self._described.items():
            setattr(out, key, value)
        out.pts = pts
        out.time_base = self._info.time_base
        return out


class PyAVSink(SinkContext):
    """Writes the upscaled video of ``info`` to ``path`` with the other input streams copied.

    ``write(image, pts)`` takes (height, width, 3) RGB uint8 or uint16, or (height, width, 4)
    RGBA where :attr:`alpha` (the input has alpha, the codec and container keep it); raises
    OutputError.
    """

    def __init__(self, path: str | os.PathLike, info: StreamInfo, width: int, height: int,
                 config: EncodeConfig = EncodeConfig(), *, overwrite: bool = False,
                 copy_streams: bool = True, audio: bool = True,
                 cut_at_video_end: bool = False, chapters_until: float | None = None) -> None:
        """``copy_streams`` False: the video alone (a batch segment); ``audio`` False: every
        stream but the audio copied (`--no-audio`); ``cut_at_video_end``: the other streams
        end where the last frame written does (`vsr upscale --frames`: the first frames of a
        longer input), not where the input's do; ``chapters_until`` (seconds, known before the
        first frame): only the chapters that start before it, the last ending there (an MP4's
        chapter track otherwise ran on, and the file declared the input's duration)."""
        self.path = check_output_path(path, overwrite=overwrite, input_path=info.path)
        self._overwrite = overwrite
        self._temp = temp_path_for(self.path)
        # The file exists once the constructor returns: a stop landing before the caller's
        # `with` (or try) loses this sink, and its file goes when the sink is collected.
        self._lost = weakref.finalize(self, discard, self._temp)
        self._done = False
        self._pass: Passthrough | None = None
        self._order = PtsOrder(name=Path(info.path).name, frame_rate=info.frame_rate)
        self._durations: dict[int, int] = {}  # pts -> how long the input shows that frame
        self._held: dict[int, int] = {}  # the same for frames still in the order, by id
        self._in_time_base = info.time_base
        self._time_base = info.time_base  # the encoder's: another one for AVI
        self.frames = 0
        # where the video written so far ends (input time base), for cut_at_video_end
        self._cut = cut_at_video_end
        self._frame_rate = info.frame_rate
        self._last: tuple[int, int | None] | None = None  # the last frame's pts and duration
        self._step: int | None = None  # the pts step before it
        self._widest = (0, 0)  # the widest step between two frames' pts, and where it starts
        try:
            self._out = open_media(file_url(self._temp), mode="w", container_options={})
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            discard(self._temp)
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        try:
            self._setup(info, width, height, config, copy_streams, audio, chapters_until)
        except BaseException:
            self.abort()
            raise

    def _setup(self, info: StreamInfo, width: int, height: int, config: EncodeConfig,
               copy_streams: bool, audio: bool, chapters_until: float | None) -> None:
        out = self._out
        config = fitting_config(out.format.name, config, self.path)

        def add_video() -> None:
            check_codec(config.codec)
            try:
                stream = out.add_stream(config.codec, rate=info.frame_rate or Fraction(25))
            except (av.error.FFmpegError, ValueError, TypeError) as exc:
                # e.g. .gif or .bmp: a muxer that takes one codec (or stills) only
                raise cannot_hold(self.path, out.format.name, config.codec) from exc
            check_holds(self.path, out.format.name, config.codec)
            self._enc = VideoEncoder(stream, info, width, height, config,
                                     container=out.format.name)
            self._stream = stream
            self._time_base = written_time_base(info, out.format.name, config.codec)
            if self._time_base != info.time_base:  # AVI, raw streams, MPEG-1/2
                stream.time_base = stream.codec_context.time_base = self._time_base
            if self._enc.color_range and "mp4" in out.format.name.split(","):
                # H.264 writes its range only beside a colour description (x264's VUI):
                # the MP4 'colr' box carries it alone
                out.container_options["movflags"] = (
                    out.container_options.get("movflags", "") + "+write_colr")

        if copy_streams:
            self._pass = Passthrough(info.path, exclude=info.index, audio=audio)
            self._pass.output_name = self.path
            meta = container_tags(self._pass.metadata)
            out.metadata.update(meta)
            if flags := metadata_movflags(out.format.name, meta):  # read at the header
                out.container_options["movflags"] = flags
            self._pass.add_streams(out, add_video)
            chapters = self._pass.chapters
            if chapters_until is not None:
                chapters = chapters_before(chapters, chapters_until)
            if chapters:
                try:
                    out.set_chapters(chapters)
                except (av.error.FFmpegError, TypeError, ValueError) as exc:
                    log.warning("chapters not copied: %s", exc)
        else:
            add_video()
        with open_media(file_url(info.path)) as src:
            meta = dict(src.streams[info.index].metadata)
        tags = self._pass.tags_for_video(meta) if self._pass is not None else video_tags(meta)
        self._stream.metadata.update(tags)
        # Keep input timestamps as they are: the default shifts every stream when a copied one
        # starts below zero (AAC priming), which moves the video off its input times; only
        # where the muxer can keep them (vsr.io.paths.negative_ts_option). Read at the header.
        out.container_options["avoid_negative_ts"] = negative_ts_option(
            out.format.name, copies_streams=bool(self._pass is not None and self._pass.copied))
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
            codec = av.codec.Codec(config.codec, "w").canonical_name
            if out.supported_codecs and codec not in out.supported_codecs:
                # e.g. .y4m, whose muxer takes raw pictures only: name the user's file, not
                # the temporary one FFmpeg's message holds
                raise cannot_hold(self.path, out.format.name, config.codec) from exc
            raise OutputError(f"cannot start writing {self.path}: "
                              f"{exc.strerror or exc}") from exc

    @property
    def pix_fmt(self) -> str:
        return self._enc.pix_fmt

    @property
    def alpha(self) -> bool:
        """Whether the output keeps an alpha plane: ``write`` then takes RGBA too."""
        return self._enc.alpha

    @property
    def copied_packets(self) -> dict[int, int]:
        return dict(self._pass.copied) if self._pass else {}

    def write(self, image: np.ndarray, pts: int, duration: int | None = None) -> None:
        """``duration``: how long the frame is shown, where the input says (input time
        base); its packet carries it, so that the last picture keeps its time."""
        frame = self._enc.frame(image, pts)
        if self._time_base != self._in_time_base:
            frame.pts = round(pts * self._in_time_base / self._time_base)
            frame.time_base = self._time_base
        if duration:  # held by the frame until the order has settled its pts
            self._held[id(frame)] = max(1, round(duration * self._in_time_base
                                                 / self._time_base))
        for due in self._order.push(frame):
            self._encode(due)
        self.frames += 1
        if self._last is not None and pts > self._last[0]:
            self._step = pts - self._last[0]
            self._widest = max(self._widest, (self._step, self._last[0]))
        self._last = (pts, duration)

    def _video_end(self) -> float | None:
        """Where the video written ends, in seconds: the last frame's pts plus its duration
        (else the step before it, else one frame at the input's rate); None before a frame."""
        if self._last is None:
            return None
        pts, shown = self._last
        if not shown:
            rate = self._frame_rate or Fraction(25)
            shown = self._step or max(1, round(1 / (rate * self._in_time_base)))
        return float((pts + shown) * self._in_time_base)

    def _encode(self, frame: av.VideoFrame) -> None:
        """Encode a frame the order let go of, its pts now final (a repeat moved a tick on):
        its packet, met by that pts, takes the frame's duration."""
        if (shown := self._held.pop(id(frame), None)) is not None:
            self._durations[frame.pts] = shown
        self._mux(self._stream.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> None:
        for pkt in packets:
            if (shown := self._durations.pop(pkt.pts, None)) is not None:
                pkt.duration = shown
            if self._pass is not None:
                t = pkt.dts if pkt.dts is not None else pkt.pts
                self._pass.mux_until(self._out, float(t * pkt.time_base) if t is not None else None)
            try:
                self._out.mux(pkt)
            except av.error.FFmpegError as exc:
                raise self._gap_error(exc) or write_error(self.path, exc) from exc

    def _gap_error(self, exc: av.error.FFmpegError) -> OutputError | None:
        """The error for a packet the MOV/MP4 muxer refused where the input's frame times jump
        further than its 32-bit sample durations and offsets reach (a recording whose clock
        jumped by days): FFmpeg's own words were "Not yet implemented in FFmpeg, patches
        welcome". None where that is not why."""
        gap, at = self._widest
        if not isinstance(exc, av.error.PatchWelcomeError) or not gap \
                or self._out.format.name not in MOVENC_FORMATS \
                or gap * self._in_time_base / Fraction(self._stream.time_base) < 2 ** 31:
            return None
        tb = self._in_time_base
        return OutputError(f"{self.path.name}: the video jumps {float(gap * tb):,.0f} s between "
                           f"two frames (at {float(at * tb):.3f} s), more than "
                           f"{self._out.format.name.upper()} can hold; write .mkv, which can")

    def close(self) -> None:
        """Flush and finish the file; the output appears at ``path`` only now."""
        if self._done:
            return
        try:
            for frame in self._order.flush():
                self._encode(frame)
            self._mux(self._stream.encode(None))
            self._order.report(self.path.name, self._time_base
                               if self._time_base != self._in_time_base else None,
                               self._out.format.name)
            if self._pass is not None:
                self._pass.mux_rest(self._out, self._video_end() if self._cut else None)
            self._out.close()
        except (av.error.FFmpegError, OSError) as exc:  # the trailer: disk full, I/O error
            self.abort()
            raise write_error(self.path, exc, "finishing") from exc
        except BaseException:
            self.abort()
            raise
        self._done = True
        try:  # a stop before the move: no partial file left
            if self._pass is not None:
                self._pass.close()
            finish(self._temp, self.path, replace=self._overwrite)
        except BaseException:
            discard(self._temp)
            raise
        self._lost.detach()

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
        self._lost.detach()



def chapters_before(chapters: list[dict], end: float) -> list[dict]:
    """The ``chapters`` (PyAV's dicts) that start before ``end`` seconds, each ending by it."""
    return [{**c, "end": min(c["end"], math.floor(Fraction(end) / c["time_base"]))}
            for c in chapters if c["start"] * c["time_base"] < end]


def output_size(info: StreamInfo, scale: int) -> tuple[int, int]:
    """(width, height) of the output for an input upscaled ``scale`` times."""
    return info.width * scale, info.height * scale

