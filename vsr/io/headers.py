"""Walks over the structure of still-picture files before their picture data: JPEG marker
segments, PNG chunks, RIFF (WebP) chunks. Each yields what it finds and stops quietly where
the data runs out or stops making sense; callers judge what is missing."""

from __future__ import annotations

import struct
from collections.abc import Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, bytes, int]]:
    """(offset, marker, payload, end) of each marker segment of a JPEG, from after its SOI
    up to its first scan (SOS, not yielded); markers without a length are stepped over."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # no length field
            i += 2
            continue
        if marker == 0xDA:  # start of scan: no header segment after it
            return
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        yield i, marker, data[i + 4:i + 2 + length], i + 2 + length
        i += 2 + length


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes, bytes, int]]:
    """(offset, type, data, end) of each chunk of a PNG up to and including its first IDAT
    (or IEND): the header chunks, which all come before the picture data."""
    i = len(PNG_SIGNATURE)
    while i + 12 <= len(data):
        (size,) = struct.unpack(">I", data[i:i + 4])
        kind = bytes(data[i + 4:i + 8])
        yield i, kind, data[i + 8:i + 8 + size], i + 12 + size
        if kind in (b"IDAT", b"IEND"):
            return
        i += 12 + size


def riff_chunks(data: bytes, i: int = 12) -> Iterator[tuple[bytes, bytes]]:
    """(name, data) of each chunk of a RIFF file from offset ``i`` (12: after a WebP's
    "RIFF" size "WEBP"); a chunk's data is padded to an even size."""
    while i + 8 <= len(data):
        kind, (size,) = bytes(data[i:i + 4]), struct.unpack("<I", data[i + 4:i + 8])
        yield kind, data[i + 8:i + 8 + size]
        i += 8 + size + (size & 1)


def riff_chunk(data: bytes, name: bytes) -> bytes | None:
    """The data of a RIFF file's first chunk ``name`` (what there is of it), or None."""
    for kind, body in riff_chunks(data):
        if kind == name:
            return body
    return None


def exif_block(data: bytes) -> bytes | None:
    """The EXIF data (TIFF-structured, without the "Exif\\0\\0" some writers put before it) of
    a JPEG (APP1), PNG (eXIf) or WebP (EXIF chunk) whose first bytes are ``data``; None
    where there is none (or the format is another)."""
    exif = None
    if data[:2] == b"\xff\xd8":
        exif = next((payload for _, marker, payload, _ in jpeg_segments(data)
                     if marker == 0xE1 and payload[:6] == b"Exif\x00\x00"), None)
    elif data[:8] == PNG_SIGNATURE:
        exif = next((body for _, kind, body, _ in png_chunks(data) if kind == b"eXIf"), None)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        exif = riff_chunk(data, b"EXIF")
    if exif is not None and exif[:6] == b"Exif\x00\x00":
        exif = exif[6:]
    return bytes(exif) if exif else None
