"""`vsr stream` refuses what would destroy data and fails loudly: a DST that is a link to SRC,
an existing DST file without --overwrite (also one that appears while the stream waits for
its first frame), unknown container formats, and a source that breaks mid-stream (exit 1,
the output still closed cleanly). Real files, codecs, FIFOs and 127.0.0.1 sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

import av
import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    Lines,
    W,
    connect_tcp,
    free_port,
    make_ts,
    read_stamp,
    wait_for,
)

from vsr.errors import ConfigError
from vsr.stream import StreamConfig


def run_vsr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*VSR, *args, *BICUBIC, "--drop", "none"], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one `Error:` line on stderr and no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamps(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_destination_that_links_to_the_source_is_refused(tmp_path, link):
    src = tmp_path / "src.ts"
    make_ts(str(src), 12)
    before = digest(src)
    dst = tmp_path / "link.ts"
    (os.symlink if link == "symlink" else os.link)(src, dst)
    for extra in ((), ("--overwrite",)):  # --overwrite never lets it replace its own source
        line = error_line(run_vsr(str(src), str(dst), *extra))
        assert "source and destination are the same file" in line
        assert digest(src) == before
    # the same file under another spelling of its name (file: URL, a detour in the path)
    line = error_line(run_vsr(f"file:{src}", str(tmp_path / "." / "src.ts")))
    assert "same" in line and digest(src) == before


def test_an_existing_output_file_needs_overwrite(tmp_path):
    src, dst = tmp_path / "in.ts", tmp_path / "keep.ts"
    make_ts(str(src), 6)
    dst.write_bytes(b"precious recording\n")
    assert "use --overwrite" in error_line(run_vsr(str(src), str(dst)))
    assert dst.read_bytes() == b"precious recording\n"
    assert "output is a directory" in error_line(run_vsr(str(src), str(tmp_path)))
    result = run_vsr(str(src), str(dst), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert stamps(dst) == list(range(6))
    # a FIFO that exists is no file to keep: written to without --overwrite
    fifo, got = tmp_path / "out.fifo", bytearray()
    os.mkfifo(fifo)

    def drain() -> None:
        with open(fifo, "rb") as f:
            got.extend(f.read())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    result = run_vsr(str(src), str(fifo), "--format", "mpegts")
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    (tmp_path / "got.ts").write_bytes(bytes(got))
    assert stamps(tmp_path / "got.ts") == list(range(6))


def test_an_output_file_that_appears_before_the_first_frame_is_kept(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    dst = tmp_path / "out.ts"
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", str(dst), *BICUBIC,
                             "--drop", "none"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    try:
        with connect_tcp(port, proc, err) as conn:
            dst.write_bytes(b"written meanwhile\n")  # after the start, before any frame
            make_ts(str(tmp_path / "in.ts"), 6)
            conn.sendall((tmp_path / "in.ts").read_bytes())
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.join(timeout=5)
    assert [line for line in err.lines if line.startswith("Error:")] == [
        f"Error: output exists (use --overwrite): {dst}"], "\n".join(err.lines)
    assert dst.read_bytes() == b"written meanwhile\n"


def test_unknown_container_formats_fail_when_the_config_is_built(tmp_path):
    with pytest.raises(ConfigError, match="unknown input format 'bogus'"):
        StreamConfig(src="-", dst="-", input_format="bogus")
    with pytest.raises(ConfigError, match="did you mean nut"):
        StreamConfig(src="-", dst="-", output_format="nutt")
    with pytest.raises(ConfigError, match="'lavfi' is not an output format"):
        StreamConfig(src="-", dst="-", output_format="lavfi")
    StreamConfig(src="-", dst="-", input_format="mpegts", output_format="matroska")
    # the ffmpeg program muxes these, with muxers PyAV's build may lack: it judges the name
    StreamConfig(src="-", dst="-", output_format="only-ffmpeg-has-it", via_ffmpeg=True)
    StreamConfig(src="-", dst="srt://127.0.0.1:9000", output_format="only-ffmpeg-has-it")
    src, dst = tmp_path / "in.ts", tmp_path / "out.ts"
    make_ts(str(src), 6)
    for option in ("--input-format", "--format"):
        line = error_line(run_vsr(str(src), str(dst), option, "bogus"))
        assert "format 'bogus'" in line
        assert not dst.exists()


def test_a_source_that_fails_midway_exits_1_with_the_output_closed(tmp_path):
    # a tcp source reset mid-stream (damaged data is no failure: tests/test_stream_network.py)
    port, dst = free_port(socket.SOCK_STREAM), tmp_path / "out.ts"
    src = tmp_path / "in.ts"
    make_ts(str(src), 200)
    data = src.read_bytes()
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", str(dst), *BICUBIC,
                             "--drop", "none"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    with connect_tcp(port, proc, err) as conn:
        conn.sendall(data[:len(data) // 2 // 188 * 188])
        wait_for(lambda: True if dst.exists() and dst.stat().st_size else None, proc, err,
                 "the first frames out")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    code = proc.wait(timeout=60)
    err.join(timeout=5)
    line = error_line(subprocess.CompletedProcess(proc.args, code, "", "\n".join(err.lines)))
    assert f"source tcp://127.0.0.1:{port}?listen=1" in line and "reset by peer" in line
    with av.open(str(dst)) as c:  # closed cleanly: what was written before reads back
        frames = list(c.decode(video=0))
    assert 0 < len(frames) < 200 and frames[0].width == 2 * W
    assert f"closed with {len(frames)} frames" in line
