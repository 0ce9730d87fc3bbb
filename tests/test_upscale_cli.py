"""The `vsr upscale` command as users run it: JSON, one-line errors, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time

VSR = [sys.executable, "-m", "vsr"]


def test_json_and_error_lines(clip, tmp_path):
    src = clip("a.mp4", frames=4, audio_tracks=1)
    out = tmp_path / "o.mkv"
    r = subprocess.run([*VSR, "upscale", str(src), str(out), "--model", "bicubic", "--scale",
                        "2", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"frames_in", "frames_out", "seconds", "fps", "output"} <= set(d)
    assert d["frames_in"] == d["frames_out"] == 4 and d["output"] == str(out)
    again = subprocess.run([*VSR, "upscale", str(src), str(out), "--model", "bicubic",
                            "--scale", "2"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and again.stderr.startswith("Error: ")


def test_ctrl_c_stops_cleanly(clip, tmp_path, drn_checkpoint):
    src = clip("long.mp4", frames=400, size=(192, 144), audio_tracks=1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([*VSR, "upscale", str(src), str(out_dir / "o.mp4"), "--model",
                             str(drn_checkpoint), "--progress", "--device", "cpu"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    buf = b""
    deadline = time.monotonic() + 120
    while b"frames" not in buf and time.monotonic() < deadline:  # wait until frames flow
        chunk = os.read(proc.stderr.fileno(), 256)
        if not chunk:
            break
        buf += chunk
    assert b"frames" in buf, buf
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (buf + err).decode()
    assert list(out_dir.iterdir()) == []
