"""Backends in the engine: upscale with --backend/--batch, the fallback when onnxruntime
is really not importable (blocked in a subprocess), and bench side by side."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from vsr.io.sink import EncodeConfig
from vsr.upscale import UpscaleConfig, upscale_file

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
ENCODE = EncodeConfig(codec="ffv1")


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def run(src, out, ckpt, **kw):
    return upscale_file(UpscaleConfig(input=src, output=out, model=str(ckpt), device="cpu",
                                      encode=ENCODE, **kw))


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_config_validates_backend_and_batch(tmp_path):
    from vsr.errors import ConfigError

    with pytest.raises(ConfigError, match="backend"):
        UpscaleConfig(input="a.mp4", output="b.mkv", backend="fast")
    with pytest.raises(ConfigError, match="batch"):
        UpscaleConfig(input="a.mp4", output="b.mkv", batch=0)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnx_backend_in_batches_matches_eager(clip, drn_checkpoint, tmp_path, cache_env):
    src = clip("in.mp4", frames=5, size=(48, 32))
    # fp32 for both: auto would run eager in bf16 on a CPU that has it (onnx is fp32 only)
    ref = run(src, tmp_path / "eager.mkv", drn_checkpoint, backend="eager", precision="fp32")
    got = run(src, tmp_path / "onnx.mkv", drn_checkpoint, backend="onnx", batch=2)
    assert (ref.backend, ref.batch) == ("eager", 1)
    assert (got.backend, got.batch) == ("onnx", 2)  # 5 frames: the last batch is padded
    assert got.frames_out == ref.frames_out == 5
    a, b = decoded(tmp_path / "eager.mkv"), decoded(tmp_path / "onnx.mkv")
    assert a.shape == b.shape == (5, 64, 96, 3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_a_batch_is_never_more_than_the_frames(clip, drn_checkpoint, tmp_path, cache_env):
    """--batch 64 on a 3-frame clip (--batch 1000 on a picture: 66 s and 9 GB for a 0.3 s
    job) built and checked the backend on 64 copies of the first frame and ran 64-frame
    batches; the run's batch is the frames there are, and the result says so."""
    from vsr.engine import ModelCache

    src = clip("in.mp4", frames=3, size=(48, 32))
    config = UpscaleConfig(input=src, output=tmp_path / "o.mkv", model=str(drn_checkpoint),
                           device="cpu", encode=ENCODE, backend="onnx", batch=64,
                           precision="fp32")
    models = ModelCache()
    handle = models.handle(config, "cpu", pixels=48 * 32)  # the one the run will use
    seen: list[int] = []
    hook = handle.module.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        got = upscale_file(config, models=models)
    finally:
        hook.remove()
    assert (got.backend, got.batch, got.frames_out) == ("onnx", 3, 3)
    assert seen and max(seen) == 3, seen  # the eager check of the backend: 3 frames


def test_batched_eager_equals_unbatched(clip, drn_checkpoint, tmp_path):
    src = clip("in.mp4", frames=4, size=(40, 24))
    run(src, tmp_path / "b1.mkv", drn_checkpoint, backend="eager")
    run(src, tmp_path / "b3.mkv", drn_checkpoint, backend="eager", batch=3)
    np.testing.assert_array_equal(decoded(tmp_path / "b1.mkv"), decoded(tmp_path / "b3.mkv"))


BLOCKED = """
import sys
sys.modules["onnxruntime"] = None  # a real ImportError for every `import onnxruntime`
from vsr.cli.main import main
sys.argv = ["vsr"] + sys.argv[1:]
main()
"""


def test_missing_onnxruntime_falls_back_to_eager(clip, drn_checkpoint, tmp_path):
    src = clip("in.mp4", frames=3, size=(40, 24))
    env = {**os.environ, "VSR_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run(
        [sys.executable, "-c", BLOCKED, "upscale", str(src), str(tmp_path / "out.mkv"),
         "-m", str(drn_checkpoint), "--device", "cpu", "--codec", "ffv1", "--backend", "onnx",
         "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1, p.stderr
    assert "backend onnx" in warnings[0] and "onnxruntime is not installed" in warnings[0]
    result = json.loads(p.stdout)
    assert result["backend"] == "eager" and any("onnx" in n for n in result["notes"])
    assert result["precision"] == "float32"  # asked for onnx: fp32, the precision it runs
    run(src, tmp_path / "eager.mkv", drn_checkpoint, backend="eager", precision="fp32")
    np.testing.assert_array_equal(decoded(tmp_path / "out.mkv"), decoded(tmp_path / "eager.mkv"))


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_bench_reports_backends_side_by_side(clip, drn_checkpoint, tmp_path):
    from click.testing import CliRunner

    from vsr.cli.bench import bench

    src = clip("b.mp4", frames=3, size=(32, 24))
    env = {"VSR_CACHE_DIR": str(tmp_path / "cache")}
    args = ["--input", str(src), "-m", str(drn_checkpoint), "--device", "cpu", "--frames", "2",
            "--preset", "ultrafast", "--json"]
    r = CliRunner().invoke(bench, [*args, "--backend", "eager,onnx"], env=env)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["backends"]
    assert [(x["requested"], x["backend"]) for x in rows] == [("eager", "eager"),
                                                              ("onnx", "onnx")]
    for x in rows:
        assert x["model_fps"] > 0 and x["pipeline_fps"] > 0 and x["prepare_seconds"] >= 0
    r = CliRunner().invoke(bench, [*args, "--backend", "onnx"], env=env)
    one = json.loads(r.stdout)
    assert one["backend"] == "onnx" and one["max_error"] <= 1e-3 and "decode_fps" in one
