"""Local paths handed to FFmpeg (PyAV, decord, the ffmpeg program) as files, never as URLs.

FFmpeg reads ``concat:a.mp4``, ``pipe:0.ts`` or ``http:x`` as a protocol and a target, so a
local file with such a name would open something else (or nothing); pathlib also drops the
``./`` a user may have written to avoid that. The ``file:`` protocol takes the rest of the
string verbatim as the file name, whatever it holds.
"""

from __future__ import annotations

import os

import av

# Muxers that write the input's timestamps below zero as they are (MP4/MOV by edit lists and
# signed offsets, Matroska, MPEG-TS past its own start delay) or keep none to shift (AVI):
# there every stream keeps its input times. Elsewhere FFmpeg's default moves all streams
# together to start at zero: FLV wrapped a copied AAC stream's priming (-1024 samples) and the
# video's first decode times to 2**32 ms less a few; NUT refused that priming ("Negative pts
# not supported"). NUT keeps decode times below zero, those of a re-encoded video with
# B-frames: a video-only NUT (the segments `vsr batch` joins) keeps its times as they are.
_KEEPS_NEGATIVE_TS = frozenset({"mov", "mp4", "ipod", "ismv", "3gp", "3g2", "psp", "f4v",
                                "matroska", "webm", "mpegts", "avi"})


def open_media(target, mode: str | None = None, **kwargs):
    """``av.open``, every metadata tag's bytes kept whatever their encoding: a tag that is not
    UTF-8 (a Latin-1 title from an old AVI, a damaged byte) is read with those bytes as
    surrogates and written back as the same bytes. PyAV decodes tags strictly by default, and
    any such file was an internal error (a UnicodeDecodeError) before a frame was read."""
    return av.open(target, mode, metadata_errors="surrogateescape", **kwargs)


def file_url(path: str | os.PathLike) -> str:
    """``path`` as an FFmpeg URL that opens exactly that local file (relative or absolute)."""
    return "file:" + os.fspath(path)


def output_format(path: str | os.PathLike) -> str | None:
    """The muxer FFmpeg picks for ``path`` by its name, or None where it knows none.
    Opens no file."""
    try:
        with open_media(file_url(path), mode="w") as named:
            return named.format.name
    except (av.error.FFmpegError, ValueError, OSError):
        return None


def negative_ts_option(fmt: str | None, *, copies_streams: bool) -> str:
    """``avoid_negative_ts`` for writing with the muxer ``fmt``: "disabled" (the input's times
    as they are) where it keeps them, else FFmpeg's "auto". ``copies_streams``: whether
    streams of the input (audio) go into it beside the encoded video: what is copied, not
    what the input holds (a data track left out copies nothing)."""
    keeps = fmt in _KEEPS_NEGATIVE_TS or (fmt == "nut" and not copies_streams)
    return "disabled" if keeps else "auto"
