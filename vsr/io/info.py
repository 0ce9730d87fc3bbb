"""Typed description of a media input: the video stream the engine reads, and the others."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``image`` is (H, W, 3) RGB, uint8 for 8-bit input, uint16
    (full 16-bit scale) for deeper input; ``pts`` is in the source's time base."""

    index: int
    pts: int | None
    image: np.ndarray


# AVColorSpace values (as stored on streams and frames) -> swscale colour matrix.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


@dataclass(frozen=True)
class ColorInfo:
    """Colour properties as libav enum values (0 or 2 mean unspecified)."""

    range: int = 0  # AVColorRange: 1 limited (tv/mpeg), 2 full (pc/jpeg)
    matrix: int = 2  # AVColorSpace
    primaries: int = 2  # AVColorPrimaries
    transfer: int = 2  # AVColorTransferCharacteristic

    @property
    def sws_matrix(self) -> int | None:
        """The swscale colour matrix for RGB <-> YUV, or None for swscale's default (BT.601)."""
        return _SWS_MATRIX.get(self.matrix)

    @property
    def sws_range(self) -> int:
        """The range swscale should assume for the YUV side (limited unless tagged full)."""
        return 2 if self.range == 2 else 1


@dataclass(frozen=True)
class OtherStream:
    """A non-video (or secondary video) stream of the input, carried over unchanged."""

    index: int
    type: str  # "audio", "subtitle", "data", "attachment", "video"
    codec: str | None
    language: str | None = None


@dataclass(frozen=True)
class StreamInfo:
    """What the source knows about its input before the first frame is handed out.

    ``frames`` is the container's count and may be None or approximate; the engine
    counts what it actually decodes. ``pix_fmt`` is the decoded pixel format and
    ``bit_depth`` its bits per component (8, 10, 12, 16).
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
    others: tuple[OtherStream, ...] = ()
    is_image: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels of the decoded frames."""
        return self.width, self.height


def bit_depth_of(pix_fmt: str) -> int:
    """Bits per component of a pixel format name (8 when it cannot be told)."""
    try:
        comps = av.VideoFormat(pix_fmt).components
    except (ValueError, TypeError):
        return 8
    return max((c.bits for c in comps), default=8)


def has_alpha(pix_fmt: str | None) -> bool:
    """Whether a pixel format name carries an alpha channel (rgba, ya8, yuva420p...; a
    palette's transparency cannot be told from the name)."""
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
        out.append(OtherStream(index=s.index, type=s.type, codec=codec, language=lang))
    return tuple(out)
