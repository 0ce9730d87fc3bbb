"""Tags that are not UTF-8 (a Latin-1 title from an old AVI, a damaged byte): PyAV decoded them
strictly, and any such file was an internal error (UnicodeDecodeError) in `vsr upscale` and
`vsr batch` before a frame was read. Now they are read and written back byte for byte."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from conftest import make_clip

from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.upscale import UpscaleConfig, upscale_file

TITLE = b"caf\xe9 \xff"  # Latin-1, and a byte no encoding has


def _tagged(tmp_path: Path, suffix: str) -> Path:
    """A clip with audio whose container and video stream titles are :data:`TITLE` (written
    by remuxing a clip, the tags set as the bytes' surrogates)."""
    plain = make_clip(tmp_path / f"plain{suffix}", frames=6, audio_tracks=1)
    path = tmp_path / f"tagged{suffix}"
    title = TITLE.decode("utf-8", "surrogateescape")
    with av.open(str(plain)) as src, \
            av.open(str(path), "w", metadata_errors="surrogateescape") as out:
        out.metadata["title"] = title
        streams = {}
        for s in src.streams:
            streams[s.index] = out.add_stream_from_template(s)
            if s.type == "video":
                streams[s.index].metadata["title"] = title
        for pkt in src.demux():
            if pkt.size:
                pkt.stream = streams[pkt.stream.index]
                out.mux(pkt)
    with pytest.raises(UnicodeDecodeError):  # what PyAV does by default
        av.open(str(path)).close()
    return path


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_tag_that_is_not_utf8_is_kept_byte_for_byte(tmp_path: Path, suffix: str,
                                                        encoder: str) -> None:
    if encoder == "ffmpeg" and not ffmpeg_available():
        pytest.skip("needs the ffmpeg program")
    src = _tagged(tmp_path, suffix)
    out = tmp_path / f"out{suffix}"
    result = upscale_file(UpscaleConfig(input=src, output=out, model="bicubic", scale=2,
                                        encoder=encoder))
    assert result.frames_out == 6
    assert out.read_bytes().count(TITLE) >= (2 if suffix == ".mkv" else 1)


def test_batch_takes_a_file_whose_tags_are_not_utf8(tmp_path: Path) -> None:
    src = _tagged(tmp_path, ".mkv")
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=tmp_path / "out",
                                   devices=("cpu",),
                                   options=JobOptions(model="bicubic", scale=2)))
    assert not result.failed and len(result.done) == 1
    [out] = (tmp_path / "out").glob("*.mkv")
    assert out.read_bytes().count(TITLE) >= 2
