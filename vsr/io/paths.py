"""Local paths handed to FFmpeg (PyAV, decord, the ffmpeg program) as files, never as URLs.

FFmpeg reads ``concat:a.mp4``, ``pipe:0.ts`` or ``http:x`` as a protocol and a target, so a
local file with such a name would open something else (or nothing); pathlib also drops the
``./`` a user may have written to avoid that. The ``file:`` protocol takes the rest of the
string verbatim as the file name, whatever it holds.
"""

from __future__ import annotations

import os


def file_url(path: str | os.PathLike) -> str:
    """``path`` as an FFmpeg URL that opens exactly that local file (relative or absolute)."""
    return "file:" + os.fspath(path)
