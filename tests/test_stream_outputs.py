"""`vsr stream` and its destinations: an rtp:// output with a live source's audio (one clock
across the streams), the ffmpeg relay to stdout and over an existing file, --format on a
pipe, encoding options checked up front, two runs racing for one new file, a FIFO nobody
reads, a udp port out of range, closed standard streams. Real sockets on 127.0.0.1, real
files, FIFOs and codecs."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    H,
    Lines,
    W,
    free_port,
    free_rtp_port,
    killed_at_exit,
    make_ts,
    wait_for,
)
from test_stream_edge import _listening, _Receiver

from vsr.errors import ConfigError, OutputError
from vsr.io.ffmpeg_sink import ffmpeg_available
from vsr.io.info import ColorInfo, StreamInfo
from vsr.io.sink import EncodeConfig
from vsr.stream import StreamConfig
from vsr.stream.io import LiveSink


def paced(proc: subprocess.Popen, data: bytes, parts: int, pause: float) -> None:
    """``data`` into ``proc``'s stdin in ``parts`` pieces ``pause`` s apart (a live source:
    each piece is read, decoded and sent on before the next comes), then the end."""
    step = -(-len(data) // parts)
    with contextlib.suppress(BrokenPipeError):  # vsr failed: its exit status says why
        for i in range(0, len(data), step):
            proc.stdin.write(data[i:i + step])
            proc.stdin.flush()
            time.sleep(pause)
        proc.stdin.close()


def test_an_rtp_output_keeps_going_when_audio_comes_after_later_video(tmp_path):
    """MPEG-TS in RTP hands every packet to a one-stream RTP muxer that needs one monotonic
    dts: a live source's audio, which comes a few hundred ms after the video of its time, was
    muxed behind video already out, and the stream failed ('copying stream 0 failed:
    Invalid argument'). Video now waits (up to 1 s) for the audio of its time."""
    buf = io.BytesIO()
    make_ts(buf, 50, audio_lag=True)
    port = free_rtp_port()
    url = f"rtp://127.0.0.1:{port}"
    receiver = _Receiver(url, {})
    receiver.start()
    deadline = time.monotonic() + 30
    while not _listening(port, socket.SOCK_DGRAM):
        assert time.monotonic() < deadline, "the rtp receiver did not start"
        time.sleep(0.05)
    proc = subprocess.Popen([*VSR, "-", url, *BICUBIC, "--drop", "none", "--json"], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    paced(proc, buf.getvalue(), 20, 0.05)
    assert proc.wait(timeout=120) == 0, "\n".join(err.lines)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert final["frames_out"] == 50, final
    assert final["audio_out"] + final["audio_skipped"] == final["audio_in"] > 0, final
    assert final["audio_out"] >= 0.9 * final["audio_in"], final  # waits: keeps the audio
    print({k: final[k] for k in ("frames_out", "audio_in", "audio_out", "audio_skipped")})
    receiver.join(timeout=30)
    assert set(receiver.video) == {(2 * W, 2 * H)} and receiver.audio > 0


needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="needs the ffmpeg program")


def frame_count(data_or_path) -> tuple[int, tuple[int, int] | None]:
    """(decoded video frames, their size) of an MPEG-TS file or bytes."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(src, format="mpegts") as c:
        frames = list(c.decode(video=0))
    return len(frames), (frames[0].width, frames[0].height) if frames else None


@needs_ffmpeg
def test_via_ffmpeg_to_stdout_writes_the_stream(tmp_path):
    """The relay's stdout was /dev/null: `vsr stream SRC - --via-ffmpeg` wrote nothing and
    exited 0."""
    make_ts(str(tmp_path / "in.ts"), 10)
    result = subprocess.run([*VSR, str(tmp_path / "in.ts"), "-", "--via-ffmpeg", *BICUBIC,
                             "--drop", "none"], capture_output=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert frame_count(result.stdout) == (10, (2 * W, 2 * H))


@needs_ffmpeg
def test_via_ffmpeg_replaces_an_existing_file_with_overwrite(tmp_path):
    """--overwrite let the run start, but the relay was never given -y: ffmpeg refused the
    file ('already exists') after the first frame."""
    make_ts(str(tmp_path / "in.ts"), 10)
    out = tmp_path / "out.ts"
    out.write_bytes(b"old")
    result = subprocess.run([*VSR, str(tmp_path / "in.ts"), str(out), "--via-ffmpeg",
                             "--overwrite", *BICUBIC, "--drop", "none"], capture_output=True,
                            env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert frame_count(out) == (10, (2 * W, 2 * H))


def test_format_is_honoured_on_stdout(tmp_path):
    """--format was ignored for DST -: stdout was MPEG-TS whatever it said. The MP4 family,
    which seeks back to write its index, goes out as fragmented MP4; a format that writes
    files of its own is refused before the source is opened."""
    make_ts(str(tmp_path / "in.ts"), 10)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*VSR, str(tmp_path / "in.ts"), "-", *BICUBIC, "--drop", "none",
                               *args], capture_output=True, env=ENV, timeout=120)

    for fmt, extra, name in (("nut", (), "nut"), ("mp4", ("--no-audio",), "mp4")):
        result = run("--format", fmt, *extra)
        assert result.returncode == 0, result.stderr.decode()
        with av.open(io.BytesIO(result.stdout)) as c:
            assert name in c.format.name.split(",")
            assert sum(1 for _ in c.decode(video=0)) == 10
    result = run("--format", "hls")
    assert result.returncode == 1 and not result.stdout
    assert result.stderr.decode().strip().splitlines() == [
        "Error: the hls format writes files of its own and cannot stream to stdout "
        "(e.g. --format mpegts)"]


@pytest.mark.parametrize(("option", "message"), [
    (("--codec", "aac"), "Error: 'aac' is an audio encoder, not a video encoder"),
    (("--codec", "nope"), "Error: unknown or unavailable encoder 'nope'"),
    (("--pix-fmt", "rgba"), "Error: libx264 cannot encode rgba; it takes yuv420p"),
])
def test_encoding_options_are_checked_before_the_source_is_opened(tmp_path, option, message):
    """--codec aac waited for a live source and failed at its first frame ('internal error:
    TypeError ...'); a pixel format the encoder cannot take failed there too."""
    port = free_port(socket.SOCK_DGRAM)  # nothing sends: the source would wait --timeout
    start = time.monotonic()
    result = subprocess.run([*VSR, f"udp://127.0.0.1:{port}", str(tmp_path / "out.ts"),
                             *BICUBIC, "--timeout", "3", *option], capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert result.returncode == 1
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")][0] \
        .startswith(message), result.stderr
    assert "nothing received" not in result.stderr
    assert not (tmp_path / "out.ts").exists() and time.monotonic() - start < 60
    with pytest.raises(ConfigError, match="audio encoder"):
        StreamConfig(src="-", dst="-", encode=EncodeConfig(codec="aac"))


def test_two_runs_racing_for_one_new_file_do_not_both_write_it(tmp_path):
    """Each run checked that its DST did not exist, then opened it truncating: two streams
    started at once to one new file could both pass the check and both write, interleaved
    (6 of 50 pairs here). The file is now created exclusively (O_EXCL): one run gets it."""
    info = StreamInfo(path="live", container="live", index=0, codec="h264", width=W, height=H,
                      frame_rate=Fraction(25), time_base=Fraction(1, 90000), start_pts=None,
                      frames=None, duration_s=None, pix_fmt="yuv420p", bit_depth=8,
                      color=ColorInfo(range=1, matrix=2))
    image = np.zeros((H, W, 3), np.uint8)
    for k in range(40):
        path = str(tmp_path / f"out{k}.ts")
        start = threading.Barrier(2)
        results: list[str] = []

        def run(path=path, start=start, results=results) -> None:
            sink = LiveSink(path, EncodeConfig(), output_format=None, gop=None,
                            via_ffmpeg=False)
            start.wait()
            try:
                sink.write(image, 0.0, info)
                sink.close()
                results.append("written")
            except OutputError as exc:
                sink.abort()
                results.append(str(exc))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(results) == [f"output exists (use --overwrite): {path}", "written"]
        assert frame_count(path) == (1, (W, H))


@pytest.mark.parametrize("then", ["a reader comes", "ctrl-c"])
def test_a_fifo_nobody_reads_is_reported_and_ctrl_c_ends_the_wait(tmp_path, then):
    """A FIFO as DST with no reader: FFmpeg's open(2) waited for one inside C, silently, for
    ever, and Ctrl-C then failed the run ('Interrupted system call'). Now the wait is
    reported after 5 s, as for other outputs that take no data, Ctrl-C ends vsr cleanly
    (exit 0), and a reader that comes gets the stream."""
    make_ts(str(tmp_path / "in.ts"), 10)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*VSR, str(tmp_path / "in.ts"), str(fifo), "--format", "mpegts",
                             *BICUBIC, "--drop", "none"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    with killed_at_exit(proc):
        wait_for(lambda: True if any("has taken no data" in ln for ln in err.lines) else None,
                 proc, err, "the report of the output", timeout=60)
        if then == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0, "\n".join(err.lines)
        else:
            with open(fifo, "rb") as reader:
                data = reader.read()
            assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
            assert frame_count(data) == (10, (2 * W, 2 * H))
    err.join(timeout=5)
    assert not any(ln.startswith("Error") for ln in err.lines), err.lines


@pytest.mark.parametrize("fmt", ["matroska", "mp4", "flv"])
def test_aac_from_mpeg_ts_goes_into_formats_that_need_its_configuration(tmp_path, fmt):
    """MPEG-TS carries AAC as ADTS, whose configuration Matroska, MP4 and FLV need in their
    header: to a pipe, where nothing can be written back, Matroska failed at the start
    ('cannot open the output -: Invalid argument') and MP4 at the first audio packet
    ('Operation not permitted'). The configuration is now made from the stream's parameters
    and the packets go without their ADTS headers."""
    make_ts(str(tmp_path / "in.ts"), 10)
    result = subprocess.run([*VSR, str(tmp_path / "in.ts"), "-", *BICUBIC, "--drop", "none",
                             "--format", fmt], capture_output=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    with av.open(io.BytesIO(result.stdout)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10
    with av.open(io.BytesIO(result.stdout)) as c:
        assert sum(f.samples for f in c.decode(audio=0)) > 0.3 * 48000  # 0.4 s of audio
