"""Still images: the formats, the pixel limit for reading them, and the one writer.

Images are read by the PyAV source (one frame) and vsr.imageio. :func:`save_image` writes one
encoded picture through PyAV's codecs, via a temporary file renamed into place like the video
sinks; the sink for one-frame image inputs (:class:`ImageSink`) and vsr.imageio.write_image
both write through it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from vsr.errors import InputError, OutputError
from vsr.io.colour import from_rgb, writes_own
from vsr.io.headers import PNG_SIGNATURE, exif_block, jpeg_segments
from vsr.io.icc import (
    embed_exif,
    embed_profile,
    holds_exif,
    holds_profile,
    profile_space,
    read_profile,
)
from vsr.io.info import ColorInfo, StreamInfo
from vsr.io.output import SinkContext, check_frame, check_output_path, store_file
from vsr.io.paths import open_media
from vsr.limits import env_limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFormat:
    """How a still-image suffix is written: the PyAV encoder, the pixel format it is fed for
    8-bit pictures and for 16-bit ones (None: written at 8 bits), encoder options, and the
    pixel formats for pictures with alpha (None: the format holds none; 16-bit RGBA falls
    back to 8 bits where there is an 8-bit one only)."""

    codec: str
    pix_fmt: str
    deep_pix_fmt: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    alpha_pix_fmt: str | None = None
    deep_alpha_pix_fmt: str | None = None


# The one list of still-image formats: what is read as an image (upscale, batch folders, eval
# folders) is what can be written back under the same suffix (save_image: ImageSink and
# imageio.write_image go through it).
IMAGE_FORMATS: dict[str, ImageFormat] = {
    ".png": ImageFormat("png", "rgb24", "rgb48be", alpha_pix_fmt="rgba",
                        deep_alpha_pix_fmt="rgba64be"),
    ".jpg": ImageFormat("mjpeg", "yuvj444p"),
    ".jpeg": ImageFormat("mjpeg", "yuvj444p"),
    ".bmp": ImageFormat("bmp", "bgr24"),
    ".tif": ImageFormat("tiff", "rgb24", "rgb48le", alpha_pix_fmt="rgba",
                        deep_alpha_pix_fmt="rgba64le"),
    ".tiff": ImageFormat("tiff", "rgb24", "rgb48le", alpha_pix_fmt="rgba",
                         deep_alpha_pix_fmt="rgba64le"),
    ".webp": ImageFormat("libwebp", "bgra", None, (("lossless", "1"),), alpha_pix_fmt="bgra"),
    ".ppm": ImageFormat("ppm", "rgb24", "rgb48be"),
    ".pgm": ImageFormat("pgm", "gray", "gray16be"),  # a gray picture stays gray
}
IMAGE_SUFFIXES = frozenset(IMAGE_FORMATS)

# Pictures larger than this are refused before a byte of them is decoded: a 746 KB PNG can
# declare 16000x16000 (768 MB as RGB, gigabytes once upscaled). 50 M takes 8K video (33 M)
# and the largest camera photos; VSR_MAX_PIXELS raises (or lowers) it.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "VSR_MAX_PIXELS"
_HEAD_BYTES = 1 << 20  # where the size of a PNG/JPEG/GIF/BMP/WebP/PPM must have been said
_FFMPEG_MAX_BYTES = (1 << 31) - 1  # INT_MAX


def max_pixels() -> int:
    """The picture size limit (width x height): ``$VSR_MAX_PIXELS``, else 50 000 000."""
    return env_limit(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def ffmpeg_takes(width: int, height: int) -> bool:
    """Whether FFmpeg accepts a ``width`` x ``height`` picture at all (av_image_check_size:
    8 bytes a pixel with 128 of padding each way must stay under 2 GiB); beyond that its
    demuxers fail with an unrelated error code ("Device or resource busy")."""
    return 8 * (width + 128) * (height + 128) < _FFMPEG_MAX_BYTES


def check_pixels(width: int, height: int, name: object) -> None:
    """Raise InputError if a ``width`` x ``height`` picture is over the pixel limit, or larger
    than FFmpeg can decode whatever the limit (0: a size not known yet, not checked)."""
    if width > 0 and height > 0 and not ffmpeg_takes(width, height):
        raise InputError(f"{name}: frames of {width}x{height} ({width * height:,} pixels) are "
                         "too large to decode")
    limit = max_pixels()
    if width * height > limit:
        raise InputError(f"{name} declares a {width}x{height} picture ({width * height:,} "
                         f"pixels), over the limit of {limit:,} pixels; set {MAX_PIXELS_ENV} "
                         "to raise it if the file is trusted")


def declared_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, GIF, BMP, WebP or PNM picture, or of
    a Y4M video, read without decoding; None for other files or a header that does not say."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    return _size_in(head)


def _size_in(head: bytes) -> tuple[int, int] | None:
    """:func:`declared_size` of a file that begins with ``head``."""
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(head)
    if head[:10] == b"YUV4MPEG2 ":
        return _y4m_size(head)
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456":
        fields = re.sub(rb"#[^\n]*", b" ", head[2:256]).split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]), int(fields[1])
    return None




def upright_exif(exif: bytes) -> bytes | None:
    """EXIF data (TIFF-structured) for the upright picture: its orientation tag set to 1 and
    its second directory (a thumbnail, stored as the picture was) cut off; None where the
    first directory cannot be followed."""
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return None
    (first,) = struct.unpack(order + "I", exif[4:8])
    if first + 2 > len(exif):
        return None
    (count,) = struct.unpack(order + "H", exif[first:first + 2])
    link = first + 2 + 12 * count
    if link + 4 > len(exif):
        return None
    out = bytearray(exif)
    for at in range(first + 2, link, 12):
        if struct.unpack(order + "HH", out[at:at + 4]) == (0x0112, 3):  # SHORT orientation
            out[at + 8:at + 10] = struct.pack(order + "H", 1)
    out[link:link + 4] = bytes(4)
    return bytes(out)


def _tiff_tags(tiff: bytes, wanted: set[int]) -> dict[int, int]:
    """The numeric values (SHORT or LONG) of the ``wanted`` tags of the first image directory
    of TIFF-structured data, those present and within ``tiff``."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return {}
    (first,) = struct.unpack(order + "I", tiff[4:8])
    if first + 2 > len(tiff):
        return {}
    (count,) = struct.unpack(order + "H", tiff[first:first + 2])
    found = {}
    for k in range(count):
        at = first + 2 + 12 * k
        if at + 12 > len(tiff):
            break
        tag, kind = struct.unpack(order + "HH", tiff[at:at + 4])
        if tag in wanted and kind in (3, 4):  # SHORT, LONG
            (value,) = struct.unpack(order + ("H" if kind == 3 else "I"), tiff[at + 8:at + 8 + (
                2 if kind == 3 else 4)])
            found[tag] = value
    return found


def _tiff_size(head: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of a TIFF's first page."""
    tags = _tiff_tags(head, {256, 257})
    return (tags[256], tags[257]) if len(tags) == 2 else None


def _tiff_orientation(tiff: bytes) -> int:
    """Tag 0x0112 of the first image directory of TIFF-structured data (EXIF's), or 1."""
    value = _tiff_tags(tiff, {0x0112}).get(0x0112, 1)
    return value if 1 <= value <= 8 else 1


def _tiff_pages(data: bytes | mmap.mmap) -> int:
    """How many image directories (pages) a TIFF chains, following each one's link to the
    next; a link out of the file or back to one already seen ends the count (a header cut
    before the first link: 1, for FFmpeg to refuse)."""
    if len(data) < 8:
        return 1
    order = "<" if data[:2] == b"II" else ">"
    (at,) = struct.unpack(order + "I", data[4:8])
    seen: set[int] = set()
    while at and at not in seen and at + 2 <= len(data):
        seen.add(at)
        (count,) = struct.unpack(order + "H", data[at:at + 2])
        link = at + 2 + 12 * count
        if link + 4 > len(data):
            break
        (at,) = struct.unpack(order + "I", data[link:link + 4])
    return max(1, len(seen))


# EXIF orientation -> what turns the stored picture upright, on (H, W, ...) arrays: 2 and 4
# mirror, 3 turns half round, 5 and 7 transpose (about either diagonal), 6 turns a quarter
# clockwise and 8 anticlockwise. A picture of orientation 5 to 8 is stored on its side.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def upright(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) as an EXIF ``orientation`` says it is shown."""
    turn = _UPRIGHT.get(orientation)
    return array if turn is None else np.ascontiguousarray(turn(array))


def _y4m_size(head: bytes) -> tuple[int, int] | None:
    """The W and H parameters of a YUV4MPEG2 stream header (one line of space-separated
    parameters, each a letter and its value)."""
    fields = head[10:head.find(b"\n", 10)].split()
    size = {f[:1]: f[1:] for f in fields if f[:1] in (b"W", b"H") and f[1:].isdigit()}
    if len(size) != 2:
        return None
    return int(size[b"W"]), int(size[b"H"])


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    for _, marker, payload, _ in jpeg_segments(head):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(payload) >= 5:
            h, w = struct.unpack(">HH", payload[1:5])  # start of frame
            return w, h
    return None


# after a scan's header: its entropy-coded data runs to the next marker, FF then a byte other
# than 00 (a stuffed FF), D0..D7 (restart markers, inside the data) or FF (fill)
_AFTER_SCAN = re.compile(rb"\xff+(?=[^\x00\xd0-\xd7\xff])")


def _jpeg_cut(data: bytes) -> bool:
    """Whether a JPEG's markers run out before its end-of-image marker (EOI): a download or
    copy cut short, which FFmpeg's decoder conceals (grey or smeared rows) without an error.
    What comes after the EOI (a camera's trailer, a motion photo's video) is not read; data
    this walk cannot follow is not judged (False)."""
    i = 2
    while True:
        if i + 2 > len(data):
            return True
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xD9:
            return False
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
        else:
            if i + 4 > len(data):
                return True
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker == 0xDA:  # start of scan: skip its data
                found = _AFTER_SCAN.search(data, i)
                if found is None:
                    return True
                i = found.end() - 1


def _gif_blocks(data: bytes | mmap.mmap) -> Iterator[tuple[str, int]]:
    """The blocks of a GIF after its header and global colour table, as (kind, offset):
    "ext" (21: label, sub-blocks) and "image" (2C: descriptor, local table, LZW code size,
    sub-blocks); then one that ends the walk: "trailer" (3B), "end" (the data ran out),
    "short" (an image descriptor cut off) or "unknown" (a byte no block starts with)."""
    def table(flags: int) -> int:
        return 3 << ((flags & 7) + 1) if flags & 0x80 else 0

    def sub_blocks(i: int) -> int:
        while i < len(data) and data[i]:
            i += 1 + data[i]
        return i + 1

    i = 13 + table(data[10]) if len(data) > 10 else len(data)
    while i < len(data):
        block = data[i]
        if block == 0x3B:
            yield "trailer", i
            return
        if block == 0x21:
            yield "ext", i
            i = sub_blocks(i + 2)
        elif block == 0x2C:
            if i + 10 > len(data):
                yield "short", i
                return
            yield "image", i
            i = sub_blocks(i + 10 + table(data[i + 9]) + 1)
        else:
            yield "unknown", i
            return
    yield "end", len(data)


def _gif_cut(data: bytes | mmap.mmap) -> bool:
    """Whether a GIF's blocks run out before its trailer (3B): FFmpeg decodes the pictures
    (or frames) it has, the rest grey or missing, without an error. Data this walk cannot
    follow is not judged (False)."""
    last = next(kind for kind, _ in _gif_blocks(data) if kind not in ("ext", "image"))
    return last in ("end", "short")


def cut_short(path: str | os.PathLike) -> str | None:
    """Why the JPEG or GIF picture ``path`` is not whole, or None (whole, another format,
    or unreadable here): the formats whose truncation FFmpeg decodes without an error."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _cut_in(data)
    except (OSError, ValueError):  # unreadable, or empty (nothing to map)
        return None


def _cut_in(data: bytes | mmap.mmap) -> str | None:
    """:func:`cut_short` of a file's bytes (mapped, not read: a JPEG walk stops at the first
    picture's end, an MJPEG file's)."""
    if data[:3] == b"\xff\xd8\xff" and _jpeg_cut(data):
        return "its JPEG data stops before the end of the picture"
    if data[:6] in (b"GIF87a", b"GIF89a") and _gif_cut(data):
        return "its GIF data stops before the end"
    return None


def _gif_later_transparency(data: bytes | mmap.mmap) -> bool:
    """Whether a GIF picture after the first has a transparent colour (its Graphic Control
    Extension, 21 F9, says so): only then can a later frame show through where the first
    did not. Data this walk cannot follow counts as yes."""
    images = 0
    for kind, i in _gif_blocks(data):
        if kind == "ext":
            if images and data[i + 1:i + 3] == b"\xf9\x04" and i + 3 < len(data) \
                    and data[i + 3] & 1:
                return True
        elif kind == "image":
            images += 1
        else:
            return kind in ("short", "unknown")
    return False


def _gif_one_picture(data: bytes | mmap.mmap) -> bool:
    """Whether a GIF holds exactly one picture (image block) before its trailer: a still
    picture, not an animation. Data this walk cannot follow counts as no."""
    images = 0
    for kind, _ in _gif_blocks(data):
        if kind == "image":
            images += 1
            if images > 1:
                return False
        elif kind != "ext":
            return kind == "trailer" and images == 1
    return False


def gif_alpha_after_first(path: str | os.PathLike) -> bool:
    """Whether a frame after the first of the animated GIF ``path`` is not fully opaque.

    FFmpeg decodes every GIF as bgra: whether it has alpha is told by its pixels, and a GIF
    whose first frame is opaque can still show through later. Decoded until such a frame;
    worth it only where :func:`open_picture` found a later picture with a transparent colour.
    Raises InputError where it cannot be decoded."""
    try:
        with open_media(str(path), mode="r", options={"max_pixels": str(max_pixels())}) as c:
            stream = c.streams.video[0]
            limit_stream(stream, Path(path).name)
            for n, frame in enumerate(c.decode(stream)):
                if n and (frame.to_ndarray(format="rgba")[..., 3] != 0xFF).any():
                    return True
    except av.error.FFmpegError as exc:
        raise InputError(f"decoding {Path(path).name} failed: {exc}") from exc
    return False


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return (int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1)
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


class Picture(NamedTuple):
    """What :func:`open_picture` opens and learns from the file's header."""

    container: av.container.InputContainer
    gif_later: bool  # a GIF whose pictures after the first have a transparent colour
    gif_still: bool  # a GIF of exactly one picture: a still picture, not an animation
    orientation: int  # a still picture's EXIF orientation: 1-8, 1 as stored (see upright)
    pages: int  # a TIFF's pages (image directories), of which FFmpeg decodes the first
    icc_profile: bytes | None  # the embedded ICC colour profile (vsr.io.icc), if any
    exif: bytes | None  # a JPEG's, PNG's or WebP's EXIF block (a TIFF is its own), if any


def open_picture(path: str | os.PathLike, url: str | None = None) -> Picture:
    """``av.open`` for reading, with the pixel limit applied before anything is decoded,
    and what the header says (:class:`Picture`; for a GIF whose later pictures have a
    transparent colour :func:`gif_alpha_after_first` tells whether one shows through).

    The header of a still picture is read first; FFmpeg's own ``max_pixels`` then stops the
    probe and the decoders (for formats whose header says nothing) from allocating a larger
    picture. Call :func:`limit_stream` on the stream that will be decoded. A JPEG or GIF cut
    short is refused (:func:`cut_short`): FFmpeg would decode it, the missing part grey.
    The file is opened once for all of that. Raises InputError (over the limit, cut short, a
    playlist of other files); av.FFmpegError as ``av.open`` does.
    """
    later_transparency, still, orientation, pages, profile, exif = False, False, 1, 1, None, None
    # mapped, not read: a JPEG walk stops at the first picture's end; unreadable or empty
    # (nothing to map): FFmpeg says why
    with contextlib.suppress(OSError, ValueError), open(path, "rb") as fh, \
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8X" and data[20:21] \
                and data[20] & 0x02:
            # the animation flag: FFmpeg's WebP decoder fails on its frames ("Invalid data")
            raise InputError(f"{Path(path).name} is an animated WebP, which FFmpeg cannot "
                             "decode; convert it to an animated GIF or PNG, or a video")
        head = data[:_HEAD_BYTES]
        tiff = head[:4] in (b"II*\x00", b"MM\x00*")
        exif = None if tiff else exif_block(head)
        tags = head if tiff else exif  # the EXIF orientation: 1-8, 1 as stored
        orientation = _tiff_orientation(tags) if tags else 1
        profile = read_profile(data)
        if tiff:
            pages = _tiff_pages(data)
        size = _size_in(head)
        if size is not None:
            check_pixels(*size, Path(path).name)
            if (problem := _cut_in(data)) is not None:
                raise InputError(f"{Path(path).name} is truncated or damaged: {problem}")
            if data[:6] in (b"GIF87a", b"GIF89a"):
                later_transparency = _gif_later_transparency(data)
                still = _gif_one_picture(data)
    container = open_media(url or str(path), mode="r", options={"max_pixels": str(max_pixels())})
    if kind := set(container.format.name.split(",")) & _LISTS_OF_FILES:
        container.close()
        raise InputError(f"{Path(path).name} is a list of other files ({kind.pop()}), not "
                         "media: vsr reads only the file it is given")
    return Picture(container, later_transparency, still, orientation, pages, profile, exif)


# Demuxers whose input is a list of other files: FFmpeg follows it, so an ffconcat text saved
# as upload.mp4 had vsr upscale a file it was never given (any file below the list's folder:
# for a service that upscales uploads, someone else's). Live sources (`vsr stream`) may be HLS.
_LISTS_OF_FILES = frozenset({"concat", "hls", "dash", "imf", "webm_dash_manifest"})


def open_limited(path: str | os.PathLike, url: str | None = None):
    """:func:`open_picture`'s container."""
    return open_picture(path, url).container


def limit_stream(stream: av.video.stream.VideoStream, name: object) -> None:
    """Check the size the container declares for ``stream`` and bound its decoder."""
    cc = stream.codec_context
    check_pixels(cc.width or 0, cc.height or 0, name)
    cc.options = {**cc.options, "max_pixels": str(max_pixels())}


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_format(path: str | os.PathLike) -> ImageFormat:
    """How ``path`` is written, by its suffix (case-insensitive).

    Raises:
        OutputError: the suffix is not one of IMAGE_FORMATS.
    """
    path = Path(path)
    out = IMAGE_FORMATS.get(path.suffix.lower())
    if out is None:
        raise OutputError(f"unsupported image format {path.suffix!r} for {path.name}; an "
                          f"image is written as one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    return out


def jpeg_qscale(quality: int) -> int:
    """The JPEG encoder's quantiser scale (2 best .. 31 worst) for a quality of 1..100
    (clamped): 100 -> 2, 1 -> 31."""
    return int(round(2 + (100 - max(1, min(100, quality))) * 29 / 99))


# how a picture's Y'CbCr or grey is coded: JFIF's full-range BT.601
_PICTURE_COLOUR = ColorInfo(range=2, matrix=5)


def encode_image(image: np.ndarray, out: ImageFormat, *, jpeg_scale: int = 2,
                 name: object = "image") -> tuple[bytes, str]:
    """One picture encoded as a whole file of format ``out``.

    Args:
        image: (H, W, 3) RGB, or (H, W, 4) RGBA where ``out`` has an alpha pixel format;
            uint8 or uint16 (kept at 16 bits where ``out`` has a deep pixel format, else
            written at 8).
        jpeg_scale: the JPEG quantiser scale, 2..31 (see :func:`jpeg_qscale`).
        name: what the file is called in error messages.

    Returns:
        (the file's bytes, the pixel format they hold).

    Raises:
        OutputError: ``image`` breaks the contract, or the encoder fails.
    """
    channels = (3, 4) if out.alpha_pix_fmt is not None else (3,)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] not in channels \
            or image.dtype not in (np.uint8, np.uint16):
        shape = getattr(image, "shape", type(image).__name__)
        raise OutputError(f"an image is written from an (H, W, {' or '.join(map(str, channels))})"
                          " uint8 or uint16 array, got "
                          f"{tuple(shape) if isinstance(shape, tuple) else shape} "
                          f"{getattr(image, 'dtype', '')}".rstrip())
    from vsr.io.sink import rgb_frame  # the sinks' frame copy (any byte order of uint16)

    if image.shape[2] == 4:
        deep = image.dtype == np.uint16 and out.deep_alpha_pix_fmt is not None
        pix_fmt = out.deep_alpha_pix_fmt if deep else out.alpha_pix_fmt
    else:
        deep = image.dtype == np.uint16 and out.deep_pix_fmt is not None
        pix_fmt = out.deep_pix_fmt if deep else out.pix_fmt
    cc = av.CodecContext.create(out.codec, "w")
    cc.options = dict(out.options)
    if out.codec == "mjpeg":
        # qmin = qmax fixes the scale (the qscale flag with global_quality did not: the
        # encoder reads the frame's quality, left 0, and every file came out at scale 2)
        cc.qmin = cc.qmax = jpeg_scale
        cc.color_range = 2  # full-range (JPEG) YUV
    cc.width, cc.height, cc.pix_fmt = image.shape[1], image.shape[0], pix_fmt
    cc.time_base = Fraction(1, 25)  # required by the encoders, meaningless for one picture
    if writes_own(pix_fmt, image.dtype == np.uint8, _PICTURE_COLOUR):
        # Y'CbCr by the equations, rounded: swscale truncates the chroma (every JPEG came out
        # with Cb and Cr half a level low, R -0.7 G +0.5 B -1.0), and its 16-bit grey is off
        # (a 16-bit grey PGM: 32768 written as 32895)
        frame = from_rgb(image, pix_fmt, _PICTURE_COLOUR)
    else:
        frame = rgb_frame(image).reformat(format=pix_fmt)
    frame.pts = 0
    try:
        return b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None)), pix_fmt
    except av.error.FFmpegError as exc:
        raise OutputError(f"encoding {name} failed: {exc}") from exc


def save_image(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False,
               input_path: str | os.PathLike | None = None, jpeg_scale: int = 2) -> str:
    """Write one picture as an image file, the format following the suffix (IMAGE_FORMATS),
    under the output rules of the sinks (vsr.io.output): an existing file is refused unless
    ``overwrite``, the input is never replaced, and the file appears whole or not at all.

    Args:
        image: (H, W, 3) RGB uint8 or uint16 (see :func:`encode_image`).

    Returns:
        The pixel format written.

    Raises:
        OutputError: unsupported suffix, unusable path, bad ``image``, encoder or disk failure.
    """
    out = image_format(path)
    path = check_output_path(path, overwrite=overwrite, input_path=input_path)
    data, pix_fmt = encode_image(image, out, jpeg_scale=jpeg_scale, name=path.name)
    store_file(path, data, replace=overwrite)
    return pix_fmt


class ImageSink(SinkContext):
    """Writes exactly one (H, W, 3) RGB uint8/uint16 frame in the format of its suffix
    (IMAGE_FORMATS: 16 bits kept where the format has them), as :func:`save_image` does;
    the path is checked when the sink opens, the file written when it closes.

    ``info``: the input; where its frames carry alpha and the format holds it (.png, .webp,
    .tif), :attr:`alpha` is set and the frame may be (H, W, 4) RGBA; where the format holds
    none (.jpg, .bmp...), that is warned of."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, *,
                 overwrite: bool = False, input_path: str | None = None,
                 jpeg_scale: int = 2, info: StreamInfo | None = None) -> None:
        self._format = image_format(path)
        self.path = check_output_path(path, overwrite=overwrite, input_path=input_path)
        wanted = info is not None and info.alpha
        self.alpha = wanted and self._format.alpha_pix_fmt is not None
        if wanted and not self.alpha:
            from vsr.io.sink import warn_alpha_lost

            warn_alpha_lost(info, f"a {self.path.suffix.lower()} picture")
        if info is not None and self._format.pix_fmt == "gray" \
                and not info.pix_fmt.startswith(("gray", "ya", "monow", "monob")):
            log.warning("%s: its colour is dropped: a %s picture holds grey only (.png and "
                        ".ppm keep colour)", Path(info.path).name, self.path.suffix.lower())
        deep_kept = self._format.deep_pix_fmt or (self.alpha and self._format.deep_alpha_pix_fmt)
        if info is not None and info.bit_depth > 8 and not deep_kept:
            log.warning("%s: its %d-bit picture is written at 8 bits (a %s picture holds no "
                        "more; .png or .tif keep 16)", Path(info.path).name, info.bit_depth,
                        self.path.suffix.lower())
        self._profile = info.icc_profile if info is not None else None
        if self._profile is not None and not holds_profile(self.path.suffix):
            log.warning("%s: its ICC colour profile is not carried into a %s picture, whose "
                        "colours may then look different (.png, .jpg, .webp and .tif keep it)",
                        Path(info.path).name, self.path.suffix.lower())
            self._profile = None
        if self._profile is not None and profile_space(self._profile) != "RGB":
            # a CMYK JPEG's press profile, a grey picture's: they describe other values than
            # the RGB written, and an RGB picture's profile must be an RGB one (PNG, ICC)
            log.warning("%s: its ICC colour profile describes %s values, not the RGB written "
                        "into the %s picture: it is not carried", Path(info.path).name,
                        profile_space(self._profile), self.path.suffix.lower())
            self._profile = None
        # the input's EXIF (camera, date, place...) as it describes the upright picture written
        self._exif = upright_exif(info.exif) if info is not None and info.exif and holds_exif(
            self.path.suffix) else None
        self._overwrite = overwrite
        self._size = (height, width)
        self._q = jpeg_scale
        self._data: bytes | None = None
        self._done = False
        self.frames = 0
        self.pix_fmt = "rgb24"

    def write(self, image: np.ndarray, pts: int | None = None,
              duration: int | None = None) -> None:
        if self._data is not None:
            raise OutputError("an image output takes one frame")
        check_frame(image, self._size, alpha=self.alpha)
        self._data, self.pix_fmt = encode_image(image, self._format, jpeg_scale=self._q,
                                                name=self.path.name)
        if self._exif is not None:  # first: a JPEG's ICC segments follow its EXIF
            try:
                self._data = embed_exif(self._data, self._exif)
            except ValueError as exc:
                log.warning("%s: the input's EXIF data is not carried: %s", self.path.name, exc)
        if self._profile is not None:
            try:
                self._data = embed_profile(self._data, self._profile)
            except ValueError as exc:
                log.warning("%s: the input's ICC colour profile is not carried: %s",
                            self.path.name, exc)
        self.frames = 1

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._data is None:
            raise OutputError("no frame was written")
        store_file(self.path, self._data, replace=self._overwrite)

    def abort(self) -> None:
        self._done = True

    @property
    def copied_packets(self) -> dict[int, int]:
        return {}
