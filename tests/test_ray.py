"""`vsr batch --ray`: a local Ray instance started by the test (2 CPUs) gives the same
results as the local run; the CLI connects to it by address. Skipped without Ray
(`pip install 'vsr[cluster]'`)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import alpha_clip, make_clip, packets, video_pts_seconds

from vsr.jobs import BatchConfig, JobOptions, run_batch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                       log_to_driver=False)
    yield context
    ray.shutdown()


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _inputs(tmp_path: Path) -> list[str]:
    a = make_clip(tmp_path / "a.mkv", frames=16, audio_tracks=1, color={"gop_size": 4})
    b = make_clip(tmp_path / "b.mp4", frames=12, color={"gop_size": 4})
    return [str(a), str(b), str(tmp_path / "missing.mp4")]


def test_ray_batch_matches_local_run(tmp_path, ray_cluster):
    inputs = _inputs(tmp_path)

    def run(out: Path, address: str | None):
        return run_batch(BatchConfig(inputs=tuple(inputs), output_dir=out, ray=address,
                                     options=JobOptions(model="bicubic", scale=2),
                                     devices=("cpu",), segment_frames=4))

    local = run(tmp_path / "local", None)
    remote = run(tmp_path / "ray", "auto")
    assert len(local.done) == len(remote.done) == 2
    assert [f["error"] for f in local.failed] == [f["error"] for f in remote.failed]
    assert local.segments_computed == remote.segments_computed == 7
    for name in ("a.mkv", "b.mp4"):
        mine, theirs = tmp_path / "local" / name, tmp_path / "ray" / name
        assert video_pts_seconds(theirs) == video_pts_seconds(mine)
        assert packets(theirs, "audio") == packets(mine, "audio")
        got, want = _frames(theirs), _frames(mine)
        assert len(got) == len(want) and all(np.array_equal(x, y) for x, y in zip(got, want,
                                                                               strict=True))
        assert got[0].shape == (96, 128, 3)


@pytest.mark.slow  # a second Ray driver process: a minute on a loaded 2-core machine
def test_cli_uses_the_cluster_at_an_address(tmp_path, ray_cluster):
    address = ray_cluster.address_info["gcs_address"]
    inputs = _inputs(tmp_path)[:1]
    result = subprocess.run([sys.executable, "-m", "vsr", "batch", *inputs, "-o",
                             str(tmp_path / "out"), "--model", "bicubic", "--scale", "2",
                             "--ray", address, "--segment-frames", "4", "--json",
                             "--no-progress"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert [d["output"] for d in report["done"]] == [str(tmp_path / "out" / "a.mkv")]
    assert "4 segments computed" in result.stderr


def test_a_ray_workers_warnings_reach_the_user_once_per_file(tmp_path, ray_cluster, caplog):
    """A Ray worker's log does not reach the driver (log_to_driver=False), so what a task
    warned of (here: libx264 drops the input's alpha channel) was never said under --ray. The
    tasks now return their warnings; the driver says each once per file, as a local run does."""
    clip = alpha_clip(tmp_path / "alpha.mkv")  # FFV1: an alpha channel; 4 keyframes
    caplog.set_level(logging.WARNING)
    result = run_batch(BatchConfig(inputs=(str(clip),), output_dir=tmp_path / "out", ray="auto",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",), segment_frames=2))
    assert len(result.done) == 1 and result.segments_computed == 4
    said = [r for r in caplog.records if "alpha channel" in r.getMessage()]
    assert len(said) == 1 and said[0].name == "vsr.io.sink", caplog.text
    assert "libx264 video cannot hold" in said[0].getMessage()


def test_an_input_replaced_mid_batch_fails_alone_under_ray(tmp_path, ray_cluster, monkeypatch):
    """--ray, an input replaced by a twin (same segments, other pictures) once one of its
    segments is recorded: that file fails naming it, with no output (its segments came from
    two files); the other file is done; nothing partial is left."""
    import sqlite3

    import conftest

    def clip(path: Path) -> Path:
        return make_clip(path, frames=40, size=(96, 72), audio_tracks=1, color={"gop_size": 4})

    b, a = clip(tmp_path / "b.mkv"), clip(tmp_path / "a.mkv")
    pattern = conftest._pattern
    monkeypatch.setattr(conftest, "_pattern", lambda i, h, w, d: 255 - pattern(i, h, w, d))
    twin = clip(tmp_path / "twin.mkv")
    monkeypatch.undo()
    out = tmp_path / "out"
    db = out / ".vsr-batch" / "jobs.sqlite"
    replaced = []

    def progress(p) -> None:
        if replaced or not db.is_file():
            return
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            (n,) = conn.execute("SELECT count(*) FROM segments JOIN files ON files.id = file_id"
                                " WHERE segments.status = 'done' AND input = ?",
                                (str(b),)).fetchone()
        if n:
            os.replace(twin, b)
            replaced.append(n)

    result = run_batch(BatchConfig(inputs=(str(b), str(a)), output_dir=out, ray="auto",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",), segment_frames=4), progress=progress)
    assert replaced, "the batch ended before a segment of b was recorded"
    assert [d["input"] for d in result.done] == [str(a)]
    assert [f["input"] for f in result.failed] == [str(b)]
    assert f"{b} changed while the batch ran" in result.failed[0]["error"]
    assert not (out / "b.mkv").exists()
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    assert video_pts_seconds(out / "a.mkv") == video_pts_seconds(a)


def test_a_picture_output_that_appears_meanwhile_is_kept_under_ray(tmp_path, ray_cluster,
                                                                   monkeypatch):
    """--ray wrote a whole-file task's result (a picture) over an output that appeared while
    it ran, without --overwrite; the local run keeps such a file and fails that input."""
    from PIL import Image

    from vsr.jobs import ray_executor

    src = tmp_path / "big.png"
    Image.new("RGB", (128, 96), (90, 30, 200)).save(src)
    out = tmp_path / "out"
    theirs = out / "big.png"
    store = ray_executor.store_file

    def appears_first(path, data, **kw) -> None:  # the user's file, just before the result
        theirs.write_bytes(b"USER FILE")
        store(path, data, **kw)

    monkeypatch.setattr(ray_executor, "store_file", appears_first)
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=out, ray="auto",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert theirs.read_bytes() == b"USER FILE"
    assert [f["input"] for f in result.failed] == [str(src)], result
    assert "appeared while this run wrote it" in result.failed[0]["error"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name]

def test_sigterm_under_ray_is_the_clis_one_line_exit_143(tmp_path, ray_cluster):
    """ray.init put in its own SIGTERM handler: `kill` of a `vsr batch --ray` exited 15 with
    Ray's native stack dump and no Error line. The CLI's handler is put back after it."""
    import signal
    import time

    address = ray_cluster.address_info["gcs_address"]
    src = make_clip(tmp_path / "long.mkv", frames=400, size=(160, 120), color={"gop_size": 4})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vsr", "batch", str(src), "-o", str(out),
                             "--model", "bicubic", "--scale", "2", "--ray", address,
                             "--segment-frames", "4", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not any((out / ".vsr-batch" / "segments").rglob("seg-*")):  # tasks have run
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].endswith("(SIGTERM)"), stderr
    assert "SIGTERM received" not in stderr, stderr
