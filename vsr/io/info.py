"""Typed description of a media input: the video stream the engine reads, and the others."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import Interpolation

from vsr.errors import InputError

# swscale's flags for 8-bit Y'CbCr <-> RGB. Its default Y'CbCr -> RGB path (the SIMD tables it
# takes for widths of a multiple of 8) comes out 1 to 1.5 levels dark on average in every
# channel (up to 2.8; FFmpeg 5.1's ffmpeg program and decord the same), and its RGB -> Y'CbCr
# default rounds 4:2:0 chroma badly (up to 0.66 levels off): with these both follow the standard
# equations within rounding, 8-bit in and out at limited range and 8-bit in at full range
# (tests/test_colour_exact.py), for about 3 ms more a 720p frame. What no flag mends is done by
# vsr.io.colour: Y'CbCr of more than 8 bits to 16-bit RGB (swscale's scale is 255/256: 10-bit
# white read as 65283) and back (0.4% bright, Y 943 for 940), and RGB to full-range Y'CbCr
# (chroma truncated, -0.5 on average). FULL_CHR_H_INT turns yuv420p10 -> rgb48 into garbage in
# PyAV 18's swscale: these flags are for 8-bit RGB only.
EXACT_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
EXACT_YUV = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``image`` is (H, W, 3) RGB, uint8 for 8-bit input, uint16
    (full 16-bit scale) for deeper input; ``pts`` is in the source's time base, and so is
    ``duration``, how long it is shown where the input says (None: until the next frame; it
    matters for the last one: a slideshow's or a GIF's last picture). ``alpha`` is the (H, W)
    alpha plane, of ``image``'s dtype and scale (0 transparent, the maximum opaque), for a
    source whose ``info.alpha`` is set; None otherwise."""

    index: int
    pts: int | None
    image: np.ndarray
    alpha: np.ndarray | None = None
    duration: int | None = None


# AVColorSpace values (as stored on streams and frames) -> swscale colour matrix.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


@dataclass(frozen=True)
class ColorInfo:
    """Colour properties as libav enum values (0 or 2 mean unspecified)."""

    range: int = 0  # AVColorRange: 1 limited (tv/mpeg), 2 full (pc/jpeg)
    matrix: int = 2  # AVColorSpace
    primaries: int = 2  # AVColorPrimaries
    transfer: int = 2  # AVColorTransferCharacteristic

    @classmethod
    def of_frame(cls, frame: av.VideoFrame) -> ColorInfo:
        """The range and matrix a decoded frame is tagged with (the rest unspecified)."""
        return cls(range=int(frame.color_range or 0), matrix=int(frame.colorspace or 2))

    @property
    def sws_matrix(self) -> int | None:
        """The swscale colour matrix for RGB <-> YUV, or None for swscale's default (BT.601)."""
        return _SWS_MATRIX.get(self.matrix)

    @property
    def sws_range(self) -> int:
        """The range swscale should assume for the YUV side (limited unless tagged full)."""
        return 2 if self.range == 2 else 1


# AVMasteringDisplayMetadata: AVRational primaries[3][2] (R, G, B; x, y), white_point[2],
# min_luminance, max_luminance, then int has_primaries, has_luminance; AVContentLightMetadata:
# unsigned MaxCLL, MaxFALL. Both in native byte order.
_MASTERING = struct.Struct("=20i2i")
_LIGHT = struct.Struct("=2I")


def _scaled(num: int, den: int, unit: int) -> int:
    """An AVRational in multiples of 1/``unit`` (x265's and x264's units)."""
    return round(num * unit / den) if den else 0


# decoders whose frames' side data PyAV 18 frees twice (named metadata on the ICC profile)
_SIDE_DATA_CRASHES = frozenset({"png", "apng"})


@dataclass(frozen=True)
class HdrMetadata:
    """HDR10 static metadata (SMPTE ST 2086 mastering display, CTA-861.3 light levels) in the
    units of x265's and x264's options: chromaticity in 1/50000, luminance in 1/10000 cd/m2.

    ``green``, ``blue``, ``red`` and ``white`` are (x, y); ``luminance`` is (max, min);
    ``light_level`` is (MaxCLL, MaxFALL) in cd/m2. Each part is None where the input has none.
    """

    green: tuple[int, int] | None = None
    blue: tuple[int, int] | None = None
    red: tuple[int, int] | None = None
    white: tuple[int, int] | None = None
    luminance: tuple[int, int] | None = None
    light_level: tuple[int, int] | None = None

    @classmethod
    def from_frame(cls, frame: av.VideoFrame, codec: str | None = None) -> HdrMetadata | None:
        """The metadata in a decoded frame's side data, or None when it carries neither.
        ``codec``: the decoder's name; a PNG's frames are not looked at (their ICC profile's
        side data crashes PyAV 18, see vsr.io.icc, and PNG says nothing of HDR there)."""
        if codec in _SIDE_DATA_CRASHES:
            return None
        parts: dict[str, tuple[int, int]] = {}
        try:
            side_data = list(frame.side_data)
        except ValueError:  # a type PyAV's enum lacks (a TIFF's, 31): PyAV cannot list any
            return None
        for sd in side_data:
            name = getattr(sd.type, "name", "")
            if name == "MASTERING_DISPLAY_METADATA" and sd.buffer_size >= _MASTERING.size:
                v = _MASTERING.unpack_from(bytes(sd))
                if v[20]:  # has_primaries
                    xy = [(_scaled(*v[i:i + 2], 50000), _scaled(*v[i + 2:i + 4], 50000))
                          for i in range(0, 16, 4)]
                    parts.update(red=xy[0], green=xy[1], blue=xy[2], white=xy[3])
                if v[21]:  # has_luminance
                    parts["luminance"] = (_scaled(*v[18:20], 10000), _scaled(*v[16:18], 10000))
            elif name == "CONTENT_LIGHT_LEVEL" and sd.buffer_size >= _LIGHT.size:
                parts["light_level"] = _LIGHT.unpack_from(bytes(sd))
        return cls(**parts) if parts else None

    @property
    def master_display(self) -> str | None:
        """x265's ``master-display`` / x264's ``mastering-display`` value, or None unless
        the primaries, white point and luminance are all known."""
        if None in (self.green, self.blue, self.red, self.white, self.luminance):
            return None
        (gx, gy), (bx, by), (rx, ry), (wx, wy), (hi, lo) = (
            self.green, self.blue, self.red, self.white, self.luminance)
        return f"G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})L({hi},{lo})"

    @property
    def max_cll(self) -> str | None:
        """x265's ``max-cll`` / x264's ``cll`` value ("MaxCLL,MaxFALL"), or None."""
        return None if self.light_level is None else "{},{}".format(*self.light_level)

    def x26x_params(self, codec: str) -> list[str]:
        """``key=value`` items for libx265's x265-params or libx264's x264-params that carry
        this metadata; empty for other codecs (see :meth:`describe` for what they lose)."""
        keys = {"libx265": ("master-display", "max-cll"),
                "libx264": ("mastering-display", "cll")}.get(codec)
        if keys is None:
            return []
        items = [f"{k}={v}" for k, v in zip(keys, (self.master_display, self.max_cll), strict=True)
                 if v is not None]
        if codec == "libx265" and items:
            items.append("hdr10=1")  # the SEI messages go out with every keyframe
        return items

    def describe(self) -> str:
        """What is present, for a warning: "mastering display and content light level"."""
        names = [n for n, v in (("mastering display", self.master_display),
                                ("content light level", self.max_cll)) if v is not None]
        return " and ".join(names) + " metadata"


@dataclass(frozen=True)
class OtherStream:
    """A non-video (or secondary video) stream of the input, carried over unchanged."""

    index: int
    type: str  # "audio", "subtitle", "data", "attachment", "video"
    codec: str | None
    language: str | None = None
    cover: bool = False  # a video stream that is cover art (one attached picture)


@dataclass(frozen=True)
class StreamInfo:
    """What the source knows about its input before the first frame is handed out.

    ``frames`` is the container's count and may be None or approximate; the engine
    counts what it actually decodes. ``pix_fmt`` is the decoded pixel format and
    ``bit_depth`` its bits per component (8, 10, 12, 16). ``alpha``: the frames the source
    hands out carry the input's alpha plane (``has_alpha(pix_fmt)`` says whether the input
    has one; a decoder may still hand out colour only).
    """

    path: str
    container: str
    index: int
    codec: str
    width: int
    height: int
    frame_rate: Fraction | None
    time_base: Fraction
    start_pts: int | None
    frames: int | None
    duration_s: float | None
    pix_fmt: str
    bit_depth: int
    rotation: int = 0
    sample_aspect_ratio: Fraction | None = None
    color: ColorInfo = field(default_factory=ColorInfo)
    hdr: HdrMetadata | None = None  # of the first frame
    others: tuple[OtherStream, ...] = ()
    is_image: bool = False
    alpha: bool = False  # the source's frames carry an alpha plane (Frame.alpha)
    # the field order of interlaced frames the source hands out as they are, two fields woven
    # into each (None: progressive, or deinterlaced by the source)
    interlaced: str | None = None
    # a still picture's embedded ICC colour profile (vsr.io.icc), which its output carries
    icc_profile: bytes | None = field(default=None, repr=False)
    # a still JPEG, PNG or WebP picture's EXIF block (TIFF data), which its output carries
    exif: bytes | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels of the decoded frames."""
        return self.width, self.height


# AVFieldOrder: 0 unknown, 1 progressive, then the interlaced orders.
_FIELD_ORDERS = {2: "top field first", 3: "bottom field first",
                 4: "top field first, bottom coded first", 5: "bottom field first, top coded first"}


# Muxers whose video has one frame a tick: AVI has one frame slot a tick (in a finer time
# base it fills the slots between frames with empty chunks and declares the tick rate, e.g.
# 600 fps, as the frame rate); raw elementary streams keep no timestamps, their timing is the
# encoder's time base (H.264's VUI: a .h264 written in 1/1000 played at 1000 fps); so does
# Y4M, whose header's rate is the time base (a 25 fps Matroska input came out "F1000:1").
_ONE_FRAME_A_TICK = frozenset({"avi", "h264", "hevc", "m4v", "mpeg1video", "mpeg2video",
                               "yuv4mpegpipe"})
# Encoders that take only their standard frame rates as time base, in any container
# (MPEG-1/2 video refused 1/12800, an MP4's: "does not support 12800/1 fps").
_FRAME_RATE_ENCODERS = frozenset({"mpeg1video", "mpeg2video"})
_GIF_TICK = Fraction(1, 100)
_MILLISECOND_MUXERS = frozenset({"matroska", "webm", "flv"})


def written_time_base(info: StreamInfo, container: str | None, codec: str | None = None
                      ) -> Fraction:
    """The time base the video of ``info`` is written in, in the ``container`` format (a
    muxer's name, e.g. "matroska", "avi") with the encoder ``codec``: the input's own; one
    frame a tick where the muxer or the encoder needs it (_ONE_FRAME_A_TICK,
    _FRAME_RATE_ENCODERS) and the input has a frame rate."""
    if info.frame_rate and (container in _ONE_FRAME_A_TICK or codec in _FRAME_RATE_ENCODERS):
        return 1 / Fraction(info.frame_rate)
    if container in _MILLISECOND_MUXERS and info.frame_rate and info.frame_rate > 1000:
        # over 1000 fps (a Y4M or raw stream timed by its rate, or a header that claims it),
        # frames shared the muxer's millisecond without a word: on its clock they are moved
        # to the next tick, with a warning
        return Fraction(1, 1000)
    if container == "gif":
        # a GIF's delays are in hundredths of a second: frames closer than that (over 100
        # fps) shared a tick, which the muxer refused ("Invalid argument"); on this clock they
        # are moved to the next tick, with a warning, as in AVI
        return _GIF_TICK
    return info.time_base


# A step back of the video's clock further than a decoder's reordering goes: more than the
# frames vsr.io.sink.PtsOrder puts back in order (a decoder that underestimates its reorder
# delay hands out a frame or two late, VLC's camera clock steps back one) and more than
# FFmpeg's own threshold for a discontinuity (0.1 s). Pieces of a stream joined end to end
# (MPEG-TS recordings or HLS segments put together with cat) restart their clock so; kept as
# they are, their frames were sorted into each other.
_RESET_S = Fraction(1, 10)
_RESET_FRAMES = 4


def clock_reset(before: Fraction, now: Fraction, frame_rate: Fraction | None) -> bool:
    """Whether a frame at ``now`` seconds, after one at ``before``, is a restart of the clock
    rather than a reordering glitch (see _RESET_S)."""
    return before - now > max(_RESET_S, _RESET_FRAMES / frame_rate if frame_rate else 0)


def clock_reset_error(name: str, index: int, before: Fraction, now: Fraction) -> InputError:
    """The error for a clock that restarts at frame ``index`` of the input ``name``."""
    return InputError(
        f"{name}: the video's timestamps jump back from {float(before):.3f} s to "
        f"{float(now):.3f} s at frame {index}, as in pieces of a stream joined end to end "
        "(MPEG-TS files put together with cat); vsr keeps each frame's time and cannot place "
        f"these. A remux makes the times continuous: ffmpeg -i {name} -map 0 -c copy fixed.mkv")


def field_order(stream: av.video.stream.VideoStream, first: av.VideoFrame) -> str | None:
    """The field order of an interlaced video ``stream`` whose first decoded frame is
    ``first``, in words; None for progressive video. The stream's codec parameters say it;
    where they do not (unknown), the frame's own flag does."""
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        order = _FIELD_ORDERS.get(int(stream.codec_context.field_order))
        if order:
            return order
    if getattr(first, "interlaced_frame", False):
        return "field order not given"
    return None


def bit_depth_of(pix_fmt: str) -> int:
    """Bits per component of a pixel format name (8 when it cannot be told)."""
    try:
        comps = av.VideoFormat(pix_fmt).components
    except (ValueError, TypeError):
        return 8
    return max((c.bits for c in comps), default=8)


class PixelFormat(str):
    """A pixel format name that also says whether its pictures have transparency where the
    name cannot tell: a palette (pal8) has none or some, by the alpha of the colours it uses;
    a GIF decodes as bgra whether or not any pixel is see-through."""

    alpha: bool

    def __new__(cls, name: str, *, alpha: bool = False) -> PixelFormat:
        out = super().__new__(cls, name)
        out.alpha = alpha
        return out


def decoded_format(frame: av.VideoFrame) -> str:
    """The pixel format of a decoded ``frame``: its name, as a :class:`PixelFormat` that has
    ``alpha`` where it is a palette picture that uses a colour that is not opaque (a PNG
    with a tRNS chunk, a GIF's transparent index)."""
    name = frame.format.name
    if name != "pal8" or len(frame.planes) < 2:
        return name
    # plane 0: one index a pixel (rows padded to line_size); plane 1: 256 native-endian
    # 0xAARRGGBB colours, those a decoder leaves unset opaque
    h, w, line = frame.height, frame.width, frame.planes[0].line_size
    index = np.frombuffer(frame.planes[0], np.uint8, count=h * line).reshape(h, line)[:, :w]
    colours = np.frombuffer(frame.planes[1], np.uint32, count=256)
    used = np.unique(index)
    return PixelFormat(name, alpha=bool(((colours[used] >> 24) != 0xFF).any()))


# Decoders that hand out an alpha channel whatever the file holds: FFmpeg's GIF decoder
# makes bgra of every GIF, opaque or not, its JPEG decoder gbrap of a CMYK (Adobe) JPEG,
# which holds no alpha, and its WebP decoder argb of every lossless WebP. Their pictures
# have alpha if a pixel is not opaque.
_DECODER_MADE_ALPHA = frozenset({"gif", "mjpeg", "webp"})


def judged_format(frame: av.VideoFrame, decoder: str) -> str:
    """:func:`decoded_format`, and for a decoder that gives every picture an alpha channel
    (GIF's, a lossless WebP's), a :class:`PixelFormat` whose ``alpha`` says whether any pixel
    of ``frame`` (the first) is not fully opaque: one conversion of one frame."""
    fmt = decoded_format(frame)
    if decoder in _DECODER_MADE_ALPHA and format_has_alpha(fmt):
        opaque = bool((frame.to_ndarray(format="rgba")[..., 3] == 0xFF).all())
        return PixelFormat(fmt, alpha=not opaque)
    return fmt


def format_has_alpha(pix_fmt: str | None) -> bool:
    """Whether the pixel format named ``pix_fmt`` has an alpha component (by its name only)."""
    try:
        return any(c.is_alpha for c in av.VideoFormat(str(pix_fmt)).components)
    except (ValueError, TypeError):
        return False


def has_alpha(pix_fmt: str | None) -> bool:
    """Whether a pixel format carries an alpha channel (rgba, ya8, yuva420p...; a palette's
    transparency, and whether a GIF's is used, is told by a :class:`PixelFormat` from
    :func:`decoded_format` or :func:`judged_format`)."""
    alpha = getattr(pix_fmt, "alpha", None)
    if alpha is not None:
        return alpha
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, TypeError):
        return False


def other_streams(container: av.container.InputContainer,
                  video_index: int) -> tuple[OtherStream, ...]:
    """Every stream except the one the engine decodes, in container order."""
    out = []
    for s in container.streams:
        if s.index == video_index:
            continue
        codec = None
        try:
            codec = s.codec_context.name if s.codec_context is not None else None
        except (AttributeError, av.error.FFmpegError):
            codec = None
        lang = s.metadata.get("language") if s.metadata else None
        cover = bool(int(s.disposition) & int(av.stream.Disposition.attached_pic))
        out.append(OtherStream(index=s.index, type=s.type, codec=codec, language=lang,
                               cover=cover))
    return tuple(out)


def declared_end(container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream) -> int | None:
    """Where the container says the video stream ends, in its time base; None where it does
    not say. Matroska: the per-stream DURATION tag (the end timestamp; never the segment
    duration, which includes audio). MP4/MOV: start + the stream's (edited) duration. AVI:
    start + its frame slots, the empty chunks of dropped frames among them (its frame count
    counts those too, so a capture with drops fell short by count with nothing missing).
    Other containers' stream durations are estimates (from the packets read, or the bit
    rate)."""
    tb = stream.time_base
    if not tb:
        return None
    if "matroska" in container.format.name:
        tag = stream.metadata.get("DURATION") or ""
        try:
            h, m, sec = tag.split(":")
            seconds = (int(h) * 60 + int(m)) * 60 + Fraction(sec)
        except ValueError:
            return None
        return int(seconds / Fraction(tb)) if seconds > 0 else None
    if ("mov" in container.format.name.split(",") or container.format.name == "avi") \
            and stream.duration:
        return (stream.start_time or 0) + stream.duration
    return None
