"""`vsr stream` and its destinations: an rtp:// output with a live source's audio (one clock
across the streams), the ffmpeg relay to stdout and over an existing file, --format on a
pipe, encoding options checked up front, two runs racing for one new file, a FIFO nobody
reads, a udp port out of range, closed standard streams. Real sockets on 127.0.0.1, real
files, FIFOs and codecs."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import time

from test_stream import BICUBIC, ENV, VSR, H, Lines, W, free_port, make_ts
from test_stream_edge import _listening, _Receiver


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
    port = free_port(socket.SOCK_DGRAM)
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
