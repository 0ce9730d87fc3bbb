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
    assert b"did not stop" not in err, err.decode()  # a worker that ran on past the stop
    assert list(out_dir.iterdir()) == []


def test_model_path_errors_name_the_file(clip, tmp_path, monkeypatch, cli_error):
    """A --model that is a path says what is wrong with the file, not "unknown model" with
    the registry names: a missing path without the .safetensors suffix, a folder, a device;
    a read that fails is named too (it was 'internal error: OSError')."""
    src = clip("a.mp4", frames=2)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)

    def error_of(model: str) -> str:
        line = cli_error("upscale", str(src), str(tmp_path / "o.mp4"), "--model", model,
                         "--device", "cpu")
        assert not (tmp_path / "o.mp4").exists()
        return line

    cases = {"./no-such-model": "no such checkpoint file",
             str(tmp_path / "runs" / "x" / "model-fp16"): "no such checkpoint file",
             str(folder): "is a folder, not a checkpoint file",
             os.devnull: "not a regular file"}
    if os.path.exists("/proc/self/mem"):  # a file whose read fails (EIO), as an unreadable
        cases["/proc/self/mem"] = "cannot read the checkpoint"  # one (EACCES) does
    for model, said in cases.items():
        line = error_of(model)
        assert line.startswith(f"Error: {model}: "), (model, line)
        assert said in line and "unknown model" not in line, (model, line)
    # a bare word is still a registry name, mistyped
    assert "unknown model 'drn-t-x3' (did you mean" in error_of("drn-t-x3")


def test_a_checkpoint_of_a_network_that_does_not_upscale_is_named(clip, tmp_path, cli_error):
    """A drn-dual checkpoint (the dual networks of a training run; a valid architecture, so
    it loads) as --model was 'internal error: AttributeError: ... no attribute scale'."""
    from vsr.models import CheckpointInfo, DualNetworks, save_model

    dual = DualNetworks(phase=1)
    ckpt = save_model(tmp_path / "dual.safetensors", dual,
                      CheckpointInfo(arch="drn-dual", hparams=dict(dual.hparams), scale=2))
    src = clip("a.mp4", frames=2)
    out = tmp_path / "o.mp4"
    for args in (["upscale", str(src), str(out)], ["export", "--format", "torchscript", "-o",
                                                   str(tmp_path / "m.pt")]):
        assert cli_error(*args, "--model", str(ckpt), "--device", "cpu") == \
            f"Error: {ckpt}: a 'drn-dual' checkpoint, not an upscaling network (vsr upscales " \
            "with a 'drn' checkpoint)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "dual.safetensors"]


def test_a_scale_the_model_lacks_names_a_shipped_model_of_that_scale(clip, tmp_path,
                                                                      cli_error):
    """`--scale 4` with the default (x2) model said only that it upscales x2: the hint names a
    shipped x4 model from the registry; none where no shipped model has the scale (x8)."""
    from vsr.models import REGISTRY

    src = clip("a.mp4", frames=2)
    x4 = next(s.name for s in REGISTRY if s.weights and s.scale == 4)
    line = cli_error("upscale", str(src), str(tmp_path / "o.mp4"), "--scale", "4")
    assert line == (f"Error: model 'drn-t-x2-drc50' upscales x2, not x4; --model {x4} "
                    "upscales x4"), line
    line = cli_error("upscale", str(src), str(tmp_path / "o.mp4"), "--scale", "8")
    assert line == "Error: model 'drn-t-x2-drc50' upscales x2, not x8", line
