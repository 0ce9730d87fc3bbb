"""Hostile and unusual pictures through `vsr upscale` and the image writer: headers cut
inside their first bytes, colour kept exactly through JPEG, metadata that does not fit the
output."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name, head", [
    ("cut.tif", b"II*\x00"),  # a TIFF header without its first directory's offset
    ("cut-be.tif", b"MM\x00*\x00\x00"),
    ("cut.webp", b"RIFF\x10\x00\x00\x00WEBPVP8X"),  # an extended WebP cut before its flags
    ("cut2.webp", b"RIFF\x10\x00\x00\x00WEBPVP8X\x0a\x00"),
], ids=["tiff", "tiff-big-endian", "webp", "webp-flags"])
def test_a_picture_cut_inside_its_header_is_one_input_error(tmp_path, cli_error, name, head):
    """Such files were "Error: internal error: error: unpack requires a buffer of 4 bytes"
    (TIFF) and "... IndexError: mmap index out of range" (WebP)."""
    src = tmp_path / name
    src.write_bytes(head)
    line = cli_error("upscale", "-m", "bicubic", "-s", "2", str(src), str(tmp_path / "up.png"))
    assert "internal error" not in line and name in line, line
    assert not (tmp_path / "up.png").exists()
