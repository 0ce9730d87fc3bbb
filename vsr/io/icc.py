"""ICC colour profiles of still pictures: read from a file's bytes, written into encoded ones.

A phone or camera photo in Display P3 or Adobe RGB says so with an embedded ICC profile; its
pixel values mean other colours without it (an upscaled P3 photo shown as sRGB looks dull).
The upscaled picture holds values in the same space, so the input's profile is carried into
the output as it is: PNG (iCCP), JPEG (APP2 ICC_PROFILE segments), WebP (VP8X + ICCP) and
TIFF (tag 34675). BMP and PNM hold none (:func:`holds_profile`). A photo's EXIF data (camera,
date, place) goes the same way into PNG (eXIf), JPEG (APP1) and WebP (EXIF): :func:`embed_exif`.

Profiles are read from the file, not from the decoded frame: PyAV 18 frees the metadata of a
frame's side data twice (its SideData wraps the dictionary the frame owns), and FFmpeg's PNG
decoder names the profile there, so touching a PNG frame's side data crashes the process.
"""

from __future__ import annotations

import struct
import zlib

from vsr.io.headers import PNG_SIGNATURE, jpeg_segments, png_chunks, riff_chunk, riff_chunks

_JPEG_ICC = b"ICC_PROFILE\x00"
_JPEG_ICC_BYTES = 65535 - 2 - len(_JPEG_ICC) - 2  # one APP2 segment's share of a profile
_TIFF_ICC_TAG = 34675
MAX_PROFILE_BYTES = 16 << 20  # larger ones (none real) are left behind, not inflated
_PROFILE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"})
_JPEG_EXIF = b"Exif\x00\x00"
_EXIF_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})


def holds_profile(suffix: str) -> bool:
    """Whether a picture written under ``suffix`` (".png") can carry an ICC profile."""
    return suffix.lower() in _PROFILE_SUFFIXES


def profile_space(profile: bytes) -> str:
    """The data colour space an ICC profile describes, from its header ("RGB", "CMYK",
    "GRAY", "Lab"...): the values of the picture it is embedded in."""
    return profile[16:20].decode("latin-1").strip()


def read_profile(data: bytes) -> bytes | None:
    """The ICC profile embedded in a PNG, JPEG, WebP or TIFF file whose bytes (or mapping)
    are ``data``; None where there is none, it is damaged or incomplete, or the format is
    another. Never raises on malformed input."""
    try:
        if data[:8] == PNG_SIGNATURE:
            profile = _png_profile(data)
        elif data[:2] == b"\xff\xd8":
            profile = _jpeg_profile(data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            profile = riff_chunk(data, b"ICCP")
        elif data[:4] in (b"II*\x00", b"MM\x00*"):
            profile = _tiff_profile(data)
        else:
            return None
    except (struct.error, zlib.error, ValueError, IndexError):
        return None
    # an ICC profile is at least its 128-byte header, which begins with its own size
    if profile is None or len(profile) < 128 or struct.unpack(">I", profile[:4])[0] \
            != len(profile):
        return None
    return bytes(profile)


def embed_profile(encoded: bytes, profile: bytes) -> bytes:
    """``encoded`` (a whole PNG, JPEG, WebP or TIFF file as FFmpeg's encoders write it) with
    ``profile`` embedded; any profile or sRGB claim it had is replaced. ValueError for
    another format or a structure these encoders do not write."""
    if encoded[:8] == PNG_SIGNATURE:
        # the profile replaces the encoder's sRGB (and any iCCP); gAMA and cHRM yield to it
        return _png_with(encoded, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile, 9),
                         (b"iCCP", b"sRGB"))
    if encoded[:2] == b"\xff\xd8":
        return _jpeg_with(encoded, profile)
    if encoded[:4] == b"RIFF" and encoded[8:12] == b"WEBP":
        return _webp_with(encoded, b"ICCP", profile, 0x20)
    if encoded[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_with(encoded, profile)
    raise ValueError("not a PNG, JPEG, WebP or TIFF file")


def holds_exif(suffix: str) -> bool:
    """Whether a picture written under ``suffix`` carries EXIF data here (TIFF's own tags
    are its directory: not merged)."""
    return suffix.lower() in _EXIF_SUFFIXES


def embed_exif(encoded: bytes, exif: bytes) -> bytes:
    """``encoded`` (a whole PNG, JPEG or WebP file as FFmpeg's encoders write it) with the
    TIFF-structured ``exif`` embedded (eXIf, APP1, EXIF), replacing any it had. ValueError
    for another format, or EXIF data larger than a JPEG segment holds."""
    if encoded[:8] == PNG_SIGNATURE:
        return _png_with(encoded, b"eXIf", exif, (b"eXIf",))
    if encoded[:2] == b"\xff\xd8":
        payload = _JPEG_EXIF + exif
        if len(payload) + 2 > 0xFFFF:
            raise ValueError(f"EXIF data of {len(exif):,} bytes does not fit in a JPEG segment")
        app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
        return _jpeg_insert(encoded, app1, (0xE0,), 0xE1, _JPEG_EXIF)  # after JFIF's APP0
    if encoded[:4] == b"RIFF" and encoded[8:12] == b"WEBP":
        return _webp_with(encoded, b"EXIF", exif, 0x08)
    raise ValueError("not a PNG, JPEG or WebP file")


# PNG: chunks of (length, type, data, CRC) after the signature; iCCP comes before the data.

def _png_profile(data: bytes) -> bytes | None:
    for _, kind, body, _ in png_chunks(data):
        if kind == b"iCCP":
            name_end = body.index(b"\x00")
            if body[name_end + 1] != 0:  # the one compression method
                return None
            inflate = zlib.decompressobj()
            profile = inflate.decompress(body[name_end + 2:], MAX_PROFILE_BYTES)
            return profile if inflate.eof else None  # cut short, or over the bound
    return None


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_with(encoded: bytes, kind: bytes, body: bytes, replaced: tuple[bytes, ...]) -> bytes:
    """``encoded`` with a chunk ``kind`` of ``body`` right after IHDR (before the picture
    data, where readers take iCCP and eXIf), its chunks of the kinds ``replaced`` left out."""
    chunks = list(png_chunks(encoded))
    if not chunks or chunks[0][1] != b"IHDR":
        raise ValueError("a PNG without IHDR first")
    ihdr_end = chunks[0][3]
    kept = b"".join(encoded[start:end] for start, kind_, _, end in chunks[1:]
                    if kind_ not in replaced)
    rest = encoded[chunks[-1][3]:]  # from the first IDAT's end on
    return encoded[:ihdr_end] + _png_chunk(kind, body) + kept + rest


# JPEG: marker segments up to the first scan; a profile is split over numbered APP2s.

def _jpeg_profile(data: bytes) -> bytes | None:
    parts: dict[int, bytes] = {}
    count = 0
    for _, marker, payload, _ in jpeg_segments(data):
        if marker == 0xE2 and payload[:len(_JPEG_ICC)] == _JPEG_ICC and len(payload) > 14:
            seq, count = payload[12], payload[13]
            parts[seq] = bytes(payload[14:])
    if not count or sorted(parts) != list(range(1, count + 1)):
        return None  # none, or a part missing
    return b"".join(parts[k] for k in range(1, count + 1))


def _jpeg_with(encoded: bytes, profile: bytes) -> bytes:
    pieces = [profile[k:k + _JPEG_ICC_BYTES] for k in range(0, len(profile), _JPEG_ICC_BYTES)]
    if len(pieces) > 255:
        raise ValueError(f"an ICC profile of {len(profile):,} bytes does not fit in a JPEG")
    app2 = b"".join(b"\xff\xe2" + struct.pack(">H", 2 + len(_JPEG_ICC) + 2 + len(piece))
                    + _JPEG_ICC + bytes((k + 1, len(pieces))) + piece
                    for k, piece in enumerate(pieces))
    # after the JFIF/Exif application segments, where readers look for it
    return _jpeg_insert(encoded, app2, (0xE0, 0xE1), 0xE2, _JPEG_ICC)


def _jpeg_insert(encoded: bytes, segments: bytes, after: tuple[int, ...], marker: int,
                 tag: bytes) -> bytes:
    """``encoded`` with ``segments`` put after the run of ``after`` segments that follows
    its SOI, and its segments ``marker`` whose payload starts with ``tag`` left out."""
    found = list(jpeg_segments(encoded))
    at = 2
    for start, kind, _, end in found:
        if kind in after and start == at:
            at = end
    old = [(s, e) for s, m, p, e in found if m == marker and p[:len(tag)] == tag]
    body = bytearray(encoded)
    for s, e in reversed(old):
        del body[s:e]
        if s < at:
            at -= e - s
    return bytes(body[:at]) + segments + bytes(body[at:])


# WebP: a RIFF file; an extended one (VP8X first) flags and holds an ICCP chunk.

def _riff_chunk_bytes(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def _webp_with(encoded: bytes, name: bytes, body: bytes, flag: int) -> bytes:
    """``encoded`` made extended (VP8X) where it is not, with ``flag`` set in VP8X and the
    chunk ``name`` of ``body`` in the place the format gives it (ICCP right after VP8X, EXIF
    after the picture), any chunk ``name`` it had left out."""
    first = encoded[12:16]
    (size,) = struct.unpack("<I", encoded[16:20])
    after_first = 20 + size + (size & 1)
    if first == b"VP8X":
        vp8x = encoded[12:20] + bytes((encoded[20] | flag,)) + encoded[21:after_first]
        rest = b"".join(_riff_chunk_bytes(kind, chunk) for kind, chunk in riff_chunks(
            encoded, after_first) if kind != name)
    else:
        width, height, alpha = _webp_simple_size(first, encoded[20:20 + size])
        vp8x = _riff_chunk_bytes(b"VP8X", bytes((flag | (0x10 if alpha else 0), 0, 0, 0))
                                 + (width - 1).to_bytes(3, "little")
                                 + (height - 1).to_bytes(3, "little"))
        rest = encoded[12:]
    chunk = _riff_chunk_bytes(name, body)
    chunks = vp8x + chunk + rest if name == b"ICCP" else vp8x + rest + chunk
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def _webp_simple_size(kind: bytes, body: bytes) -> tuple[int, int, bool]:
    """(width, height, alpha) of a simple WebP's VP8L or VP8 bitstream."""
    if kind == b"VP8L" and body[:1] == b"\x2f":
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)
    if kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF, False
    raise ValueError(f"a WebP whose first chunk is {kind!r}")


# TIFF: the first image directory's tag 34675 points at the profile.

def _tiff_directory(data: bytes) -> tuple[str, int, list[bytes]]:
    order = "<" if data[:2] == b"II" else ">"
    (at,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[at:at + 2])
    entries = [bytes(data[at + 2 + 12 * k:at + 14 + 12 * k]) for k in range(count)]
    if not entries or len(entries[-1]) != 12:
        raise ValueError("a TIFF directory cut short")
    return order, at, entries


def _tiff_profile(data: bytes) -> bytes | None:
    order, _, entries = _tiff_directory(data)
    for entry in entries:
        tag, kind, count, offset = struct.unpack(order + "HHII", entry)
        if tag == _TIFF_ICC_TAG and kind in (1, 7) and count <= MAX_PROFILE_BYTES:
            body = entry[8:8 + count] if count <= 4 else data[offset:offset + count]
            return body if len(body) == count else None
    return None


def _tiff_with(encoded: bytes, profile: bytes) -> bytes:
    """The profile and a new first directory (the old one's entries and the profile's tag,
    in tag order) appended, the header pointed at it; the old directory stays unused."""
    order, at, entries = _tiff_directory(encoded)
    (next_ifd,) = struct.unpack(order + "I", encoded[at + 2 + 12 * len(entries):
                                                    at + 6 + 12 * len(entries)])
    body = bytearray(encoded)
    body += b"\x00" * (len(body) & 1)  # TIFF offsets are word aligned
    profile_at = len(body)
    body += profile + b"\x00" * (len(profile) & 1)
    tag = struct.pack(order + "HHII", _TIFF_ICC_TAG, 7, len(profile), profile_at)
    kept = [e for e in entries if struct.unpack(order + "H", e[:2])[0] != _TIFF_ICC_TAG]
    ordered = sorted([*kept, tag], key=lambda e: struct.unpack(order + "H", e[:2])[0])
    directory_at = len(body)
    body += struct.pack(order + "H", len(ordered)) + b"".join(ordered) + struct.pack(
        order + "I", next_ifd)
    body[4:8] = struct.pack(order + "I", directory_at)
    return bytes(body)
