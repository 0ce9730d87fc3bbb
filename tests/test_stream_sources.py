"""`vsr stream` and what a live source sends: bursts of fresh frames (kept under --drop
oldest: frames go by age, within a memory bound), frames too large for VSR_MAX_PIXELS, audio
that first appears on a later connection, a source of several programs. Real sockets on
127.0.0.1, real codecs."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import time

import pytest
from test_stream import (
    BICUBIC,
    ENV,
    VSR,
    Lines,
    connect_tcp,
    free_port,
    killed_at_exit,
    make_ts,
    wait_for,
)
from test_stream_network import _sized_ts


def _bursts(data: bytes, parts: int) -> list[bytes]:
    step = -(-len(data) // parts)
    return [data[i:i + step] for i in range(0, len(data), step)]


def tcp_source(*chunks: bytes, pause: float = 0.0, args: tuple[str, ...] = (),
               dst: str = "-") -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`vsr stream` of a tcp listener sent ``chunks`` (``pause`` s apart) to ``dst``, with
    JSON stats; returns (the run, with stdout as bytes and stderr as text, the stats)."""
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1", dst, *BICUBIC, "--json",
                             "--timeout", "2", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    with killed_at_exit(proc), connect_tcp(port, proc, err) as conn:
        for chunk in chunks:
            conn.sendall(chunk)
            time.sleep(pause)
        conn.close()
        proc.wait(timeout=120)
    out.join(timeout=5)
    err.join(timeout=5)
    stderr = "\n".join(err.lines)
    assert "Traceback" not in stderr, stderr
    stats = [json.loads(line) for line in out.lines + err.lines if line.startswith("{")]
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr), stats


def test_a_burst_of_fresh_frames_is_not_dropped(tmp_path):
    """--drop oldest dropped the oldest frame whenever two waited, whatever their age: a
    source that sends in bursts (a network that delivers late, then all at once) lost most
    of each burst, with latencies of milliseconds against a limit of 10 s."""
    buf = io.BytesIO()
    make_ts(buf, 60, audio=False)
    result, stats = tcp_source(*_bursts(buf.getvalue(), 3), pause=0.3,
                               args=("--max-latency", "10000", "--drop", "oldest"),
                               dst=str(tmp_path / "out.ts"))
    assert result.returncode == 0, result.stderr
    final = stats[-1]
    assert final["final"] and final["latency_max_ms"] < 10000
    assert (final["frames_in"], final["frames_out"], final["dropped"]) == (60, 60, 0), final


@pytest.mark.parametrize("sizes", [((128, 96),), ((64, 48), (128, 96))],
                         ids=["at-the-start", "mid-stream"])
def test_pictures_over_the_pixel_limit_end_the_source(tmp_path, sizes):
    """VSR_MAX_PIXELS bounded files only: a network source, the most hostile input, could
    declare (or switch to) any size and have it decoded and upscaled. Now the declared size
    is checked when the source opens, the decoder refuses larger pictures, and a switch to
    one ends the source with the limit named (the frames before it written)."""
    data = b"".join(_sized_ts(20, w, h, 20 * k) for k, (w, h) in enumerate(sizes))
    out = tmp_path / "out.ts"
    result = subprocess.run([*VSR, "-", str(out), *BICUBIC, "--drop", "none", "--json"],
                            input=data, capture_output=True, timeout=120,
                            env={**ENV, "VSR_MAX_PIXELS": "5000"})
    assert result.returncode == 1, result.stderr.decode()
    errors = [ln for ln in result.stderr.decode().splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "128x96 picture (12,288 pixels), over the limit of 5,000 " \
        "pixels; set VSR_MAX_PIXELS" in errors[0], result.stderr.decode()
    final = json.loads(result.stdout.decode().splitlines()[-1])
    assert final["frames_out"] == 20 * (len(sizes) - 1), final


def test_audio_that_appears_on_a_later_connection_is_counted_and_warned_of(tmp_path):
    """With --reconnect, a first connection of video only fixes the output's streams; the
    audio a later connection brought was dropped without a word and counted nowhere (the
    stats said audio 0/0)."""
    port = free_port(socket.SOCK_STREAM)
    silent, loud = io.BytesIO(), io.BytesIO()
    make_ts(silent, 10, audio=False)
    make_ts(loud, 10)
    proc = subprocess.Popen([*VSR, f"tcp://127.0.0.1:{port}?listen=1",
                             str(tmp_path / "out.ts"), *BICUBIC, "--reconnect", "--drop",
                             "none", "--json", "--stats-interval", "0.3"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    with killed_at_exit(proc):
        for clip in (silent, loud):
            with connect_tcp(port, proc, err) as conn:
                conn.sendall(clip.getvalue())
            time.sleep(0.5)
        wait_for(lambda: True if any(s["frames_out"] >= 20 for s in out.stats()) else None,
                 proc, err, "both connections' frames")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "\n".join(err.lines)
    out.join(timeout=5)
    final = out.stats()[-1]
    assert final["audio_in"] == final["audio_skipped"] > 0 and final["audio_out"] == 0, final
    assert sum("appeared on a later connection" in ln for ln in err.lines) == 1, err.lines
