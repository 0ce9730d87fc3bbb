"""`vsr batch` against hostile manifests, a second run on the same folder, signals and
unwritable output folders (issue 16): real clips, real `vsr` processes and signals, a real
SQLite job store."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest
from conftest import alpha_clip, make_clip, packets, video_pts_seconds

import vsr
from vsr.errors import ConfigError, Interrupted, VsrError
from vsr.jobs import BatchConfig, BatchResult, JobOptions, run_batch
from vsr.jobs.plan import read_manifest
from vsr.jobs.segments import TASK_LOGGERS

BICUBIC = ["--model", "bicubic", "--scale", "2", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
VSR = [sys.executable, "-m", "vsr"]


def _run(*args: str, timeout: float = 300) -> tuple[int, dict, str]:
    result = subprocess.run([*VSR, "batch", *args, "--json"], env=ENV, capture_output=True,
                            text=True, timeout=timeout)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    return result.returncode, json.loads(lines[-1]) if lines else {}, result.stderr


def _outputs(items: list[dict]) -> list[tuple[str, str]]:
    """(input, output) of each done or skipped entry (other fields may come and go)."""
    return [(d["input"], d["output"]) for d in items]


def _size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


def _done_segments(db: Path) -> list[int]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return [i for (i,) in conn.execute("SELECT idx FROM segments WHERE status = 'done' "
                                               "ORDER BY idx")]
    except sqlite3.Error:
        return []


def _start_until_segments(cmd: list[str], db: Path, n: int) -> subprocess.Popen:
    """Start a batch and return once it has finished ``n`` segments (still running)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if db.is_file() and len(_done_segments(db)) >= n:
            return proc
        time.sleep(0.02)
    out, err = proc.communicate()
    pytest.fail(f"the batch ended (rc {proc.returncode}) before {n} segments were done: {err}")


def _partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if ".partial" in p.name)


def _heavy_clip(path: Path) -> Path:
    """60 frames, a keyframe every 6: 10 segments that each take a moment on a CPU."""
    return make_clip(path, frames=60, size=(320, 240), audio_tracks=1, color={"gop_size": 6})


def test_an_output_that_is_another_entrys_input_is_refused_even_with_overwrite(tmp_path):
    """Line 1 writes out/b.mkv, line 2 reads it: with --overwrite the first job replaced the
    second one's input before it was read (data lost, and the second failed as 'changed while
    the batch ran'). The writing entry is refused at planning, naming the other; the reading
    one runs on the file as it was."""
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mp4", frames=6)
    out = tmp_path / "out"
    out.mkdir()
    make_clip(out / "b.mkv", frames=4)
    before = (out / "b.mkv").read_bytes()
    manifest = tmp_path / "chain.jsonl"
    manifest.write_text(json.dumps({"input": "in/a.mp4", "output": "b.mkv"}) + "\n"
                        + json.dumps({"input": "out/b.mkv", "output": "b-up.mkv"}) + "\n")
    result = run_batch(BatchConfig(inputs=(), manifests=(manifest,), output_dir=out,
                                   overwrite=True,
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert [f["error"] for f in result.failed] == [
        f"{manifest}:1: output {out / 'b.mkv'} is also an input of this batch ({manifest}:2): "
        "writing it would replace that input, --overwrite or not"]
    assert [d["output"] for d in result.done] == [str(out / "b-up.mkv")]
    assert (out / "b.mkv").read_bytes() == before


def test_manifests_as_editors_save_them_and_what_their_values_mean(tmp_path):
    """A manifest that is UTF-16, Latin-1, empty or missing was an internal error
    (UnicodeDecodeError) or a run of nothing (exit 0), and each left -o/.vsr-batch behind:
    now a ConfigError before anything is made. A UTF-8 byte order mark (Notepad) is no part
    of the first path; null is the command line's option (it put the registry's default
    model in place of --model bicubic); "" is an error, never the default name."""
    make_clip(tmp_path / "a.mp4", frames=4)
    out = tmp_path / "out"

    def run(name: str, data: bytes) -> BatchResult:
        (tmp_path / name).write_bytes(data)
        return run_batch(BatchConfig(inputs=(), manifests=(tmp_path / name,), output_dir=out,
                                     options=JobOptions(model="bicubic", scale=2),
                                     devices=("cpu",)))

    for name, data, said in [
            ("u16.txt", "a.mp4\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
            ("latin.txt", "# é\nb.mp4\n".encode("latin-1"), "is not UTF-8 text (line 1)"),
            ("empty.txt", b"# nothing\n\n", "names no inputs"),
            ("missing.txt", None, "cannot read manifest")]:
        with pytest.raises(ConfigError, match=re.escape(said)):
            if data is None:
                run_batch(BatchConfig(inputs=(), manifests=(tmp_path / name,), output_dir=out,
                                      devices=("cpu",)))
            else:
                run(name, data)
        assert not out.exists(), name
    lines = [{"input": "a.mp4", "output": "1.mp4", "model": None},
             {"input": "a.mp4", "output": ""},
             {"input": "a.mp4", "output": "3.mp4", "codec": ""}]
    result = run("m.jsonl", b"\xef\xbb\xbf" + "".join(json.dumps(o) + "\n"
                                                       for o in lines).encode())
    assert [d["output"] for d in result.done] == [str(out / "1.mp4")]
    m = tmp_path / "m.jsonl"
    assert read_manifest(m)[0].overrides == {}  # the batch's --model, not the default
    assert [f["error"] for f in result.failed] == [f'{m}:2: "output" is empty',
                                                   f'{m}:3: "codec" is empty']


def test_a_rerun_skips_finished_files_however_their_paths_are_spelt(tmp_path, monkeypatch):
    """The job store knew a file by its path as typed: after `vsr batch /abs/in -o out`,
    `vsr batch in -o out` (or through a link) failed every finished file with 'output exists'
    instead of skipping it, and a --resume spelt otherwise recomputed every segment."""
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mp4", frames=6)
    (tmp_path / "link").symlink_to(tmp_path / "in")
    monkeypatch.chdir(tmp_path)

    def run(where: str) -> BatchResult:
        return run_batch(BatchConfig(inputs=(where,), output_dir=Path("out"),
                                     options=JobOptions(model="bicubic", scale=2),
                                     devices=("cpu",)))

    assert len(run(str(tmp_path / "in")).done) == 1
    for spelling in ("in", "link", "./in/../in"):
        result = run(spelling)
        assert not result.failed and len(result.skipped) == 1, (spelling, result.failed)
    # a store an older vsr wrote keeps the paths as typed: its record is taken over, not lost
    with sqlite3.connect(tmp_path / "out" / ".vsr-batch" / "jobs.sqlite") as db:
        db.execute("UPDATE files SET input = 'in/a.mp4', output = 'out/a.mp4'")
    result = run("in")
    assert not result.failed and len(result.skipped) == 1, result.failed


def test_manifest_outputs_stay_inside_the_output_folder(tmp_path):
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mp4", frames=6)
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(b"an unrelated file")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(elsewhere)
    manifest = tmp_path / "list.jsonl"
    lines = [{"input": "in/a.mp4", "output": "../victim.mp4"},
             {"input": "in/a.mp4", "output": str(tmp_path / "absolute.mp4")},
             {"input": "in/a.mp4", "output": "link/through-a-symlink.mp4"},
             {"input": "in/a.mp4", "output": ".vsr-batch/jobs.sqlite"},
             {"input": "in/a.mp4", "output": "sub/inside.mp4"}]
    manifest.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    code, report, err = _run("--manifest", str(manifest), "-o", str(out), *BICUBIC,
                             "--devices", "cpu", "--overwrite")
    assert code == 1, err
    assert _outputs(report["done"]) == [(str(tmp_path / "in" / "a.mp4"),
                                         str(out / "sub" / "inside.mp4"))]
    errors = [f["error"] for f in report["failed"]]
    print("refused:", errors)
    assert len(errors) == 4
    for number, error in zip((1, 2, 3, 4), errors, strict=True):
        assert error.startswith(f"{manifest}:{number}: output ")
    assert all("is outside the output folder" in e for e in errors[:3])
    assert "inside the job state folder" in errors[3]
    assert victim.read_bytes() == b"an unrelated file"
    assert not (tmp_path / "absolute.mp4").exists()
    assert list(elsewhere.iterdir()) == []
    assert _size(out / "sub" / "inside.mp4") == (128, 96)


def test_every_manifest_line_is_done_or_reported(tmp_path):
    (tmp_path / "in").mkdir()
    src = make_clip(tmp_path / "in" / "a.mp4", frames=6, audio_tracks=1)
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("in/a.mp4\n"
                        '{"input": "in/a.mp4", "output": "a_x3.mkv", "scale": 3}\n'
                        '{"input": "in/a.mp4", "output": "copy.mkv"}\n'
                        '{"input": "in/a.mp4", "output": "./a.mp4", "scale": 3}\n')
    out = tmp_path / "out"
    args = ("--manifest", str(manifest), "-o", str(out), *BICUBIC, "--devices", "cpu")
    code, report, err = _run(*args)
    assert code == 1, err
    assert sorted(d["output"] for d in report["done"]) == sorted(
        str(out / n) for n in ("a.mp4", "a_x3.mkv", "copy.mkv"))
    assert len(report["done"]) + len(report["skipped"]) + len(report["failed"]) == 4
    [failed] = report["failed"]
    assert failed["input"] == str(src)
    assert failed["error"].startswith(f"{manifest}:4: duplicate output ")
    assert failed["error"].endswith(f"already the output of {manifest}:1")
    assert _size(out / "a.mp4") == _size(out / "copy.mkv") == (128, 96)
    assert _size(out / "a_x3.mkv") == (192, 144)
    for name in ("a.mp4", "a_x3.mkv", "copy.mkv"):
        assert video_pts_seconds(out / name) == video_pts_seconds(src)
        assert packets(out / name, "audio") == packets(src, "audio")
    # the job store tells the three outputs of one input apart: a rerun skips all three
    code, report, err = _run(*args)
    assert code == 1, err
    assert report["done"] == [] and len(report["failed"]) == 1
    assert sorted(d["output"] for d in report["skipped"]) == sorted(
        str(out / n) for n in ("a.mp4", "a_x3.mkv", "copy.mkv"))


_OLD_FILES = """CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    input TEXT NOT NULL UNIQUE,
    output TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    frames INTEGER,
    updated REAL NOT NULL
)"""


def test_job_store_of_an_older_version_is_migrated(tmp_path):
    src = make_clip(tmp_path / "a.mkv", frames=6)
    out = tmp_path / "out"

    def batch(*names: str):
        manifest = tmp_path / "list.jsonl"
        manifest.write_text("".join(json.dumps({"input": str(src), "output": n}) + "\n"
                                    for n in names))
        return run_batch(BatchConfig(inputs=(), manifests=(manifest,), output_dir=out,
                                     options=JobOptions(model="bicubic", scale=2),
                                     devices=("cpu",)))

    assert len(batch("a.mkv").done) == 1
    db = out / ".vsr-batch" / "jobs.sqlite"
    with sqlite3.connect(db) as conn:  # back to the schema keyed by input alone
        conn.execute("PRAGMA foreign_keys=OFF")
        rows = conn.execute("SELECT id, input, output, fingerprint, status, error, frames, "
                            "updated FROM files").fetchall()  # output sizes came later
        conn.execute("DROP TABLE files")
        conn.execute(_OLD_FILES)
        conn.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("ALTER TABLE segments DROP COLUMN bytes")  # segment sizes came later
    result = batch("a.mkv", "b.mkv")
    assert [d["output"] for d in result.skipped] == [str(out / "a.mkv")]
    assert [d["output"] for d in result.done] == [str(out / "b.mkv")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, output, status FROM files ORDER BY id").fetchall() == [
            (rows[0][0], str(out / "a.mkv"), "done"), (rows[0][0] + 1, str(out / "b.mkv"),
                                                      "done")]


def _segmented_batch(tmp_path, *extra: str):
    """A heavy clip, its batch's output folder and job store, and the command that upscales it
    in segments of 6 frames (``extra``: more options)."""
    src = _heavy_clip(tmp_path / "long.mkv")
    out = tmp_path / "out"
    cmd = [*VSR, "batch", str(src), "-o", str(out), *BICUBIC, "--segment-frames", "6", *extra]
    return src, out, out / ".vsr-batch" / "jobs.sqlite", cmd


def test_second_batch_on_one_folder_refuses_or_waits_and_a_killed_one_never_blocks(tmp_path):
    src, out, db, cmd = _segmented_batch(tmp_path, "--devices", "cpu", "--json")
    first = _start_until_segments(cmd, db, 1)
    os.kill(first.pid, signal.SIGSTOP)  # deterministic: it holds the folder, doing nothing
    try:
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        t0 = time.monotonic()
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        err_lines = second.stderr.strip().splitlines()
        print(f"second run refused in {took:.1f} s: {err_lines}")
        assert second.returncode == 1
        assert len(err_lines) == 1 and err_lines[0].startswith("Error: another vsr batch is "
                                                                "running on this output folder")
        assert second.stdout == ""
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
        # with --wait it starts once the first one is over, and finds the file finished
        waiting = subprocess.Popen([*cmd, "--wait"], env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        assert waiting.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out1, err1 = first.communicate(timeout=240)
    assert first.returncode == 0, err1
    assert _outputs(json.loads(out1.splitlines()[-1])["done"]) == [(str(src),
                                                                     str(out / "long.mkv"))]
    out2, err2 = waiting.communicate(timeout=240)
    assert waiting.returncode == 0, err2
    report = json.loads(out2.splitlines()[-1])
    assert report["done"] == [] and [s["input"] for s in report["skipped"]] == [str(src)]
    assert video_pts_seconds(out / "long.mkv") == video_pts_seconds(src)
    # a run killed with SIGKILL leaves no lock behind: the next one resumes at once
    # (tests/test_batch.py::test_sigkill_mid_video_then_resume, on one folder)


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    signal.SIGTERM,
                                    pytest.param(signal.SIGHUP, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])  # one stop path for the three
def test_signal_stops_cleanly_and_resume_reuses_finished_segments(tmp_path, signum):
    src, out, db, cmd = _segmented_batch(tmp_path, "--devices", "cpu,cpu")
    proc = _start_until_segments(cmd, db, 2)
    t0 = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    print(f"{signal.Signals(signum).name}: exit {proc.returncode} after "
          f"{time.monotonic() - t0:.2f} s; stderr {err.strip().splitlines()}")
    assert "terminate called" not in err
    assert proc.returncode == 128 + signum  # 130, 143, 129: as the shell reports the signal
    assert err.strip().splitlines()[-1].startswith("Error: interrupted")
    assert _partials(out) == []
    assert not (out / "long.mkv").exists()
    done = _done_segments(db)
    assert 2 <= len(done) < 10
    assert (f"interrupted; 1 of 1 file unfinished, {len(done)} finished segments kept (rerun "
            "with --resume to reuse them)") in err.strip().splitlines()[-1]
    seg_dir = out / ".vsr-batch" / "segments" / "000001"
    assert sorted(p.name for p in seg_dir.iterdir()) == [f"seg-{i:05d}.nut" for i in done]
    if signum != signal.SIGINT:
        return  # the state left is the same for every stop signal: resumed once, below

    result = subprocess.run([*cmd, "--resume", "--json"], env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _outputs(json.loads(result.stdout.splitlines()[-1])["done"]) == [
        (str(src), str(out / "long.mkv"))]
    summary = result.stderr.strip().splitlines()[-1]
    assert f"{10 - len(done)} segments computed, {len(done)} reused" in summary
    assert video_pts_seconds(out / "long.mkv") == video_pts_seconds(src)
    assert packets(out / "long.mkv", "audio") == packets(src, "audio")
    assert _size(out / "long.mkv") == (640, 480)
    assert _partials(out) == []


def _one_clean_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "internal error" not in lines[0]
    return lines[0]


def test_output_folder_that_cannot_be_created_is_one_clean_error(tmp_path):
    src = make_clip(tmp_path / "a.mp4", frames=3)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, _, err = _run(str(src), "-o", str(a_file / "sub"), *BICUBIC)
    line = _one_clean_error(code, err)
    assert line == f"Error: cannot create the output folder {a_file / 'sub'}: Not a directory"


def _read_only_run(tmp_path: Path, src: Path, output: Path) -> subprocess.CompletedProcess:
    """`vsr batch` with ``tmp_path/ro`` a read-only file system (a tmpfs mounted read-only in
    a private mount namespace, so nothing outside the test sees it)."""
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(tmp_path / "ro"),
                           *VSR, "batch", str(src), "-o", str(output), *BICUBIC],
                          env=ENV, capture_output=True, text=True, timeout=120)


def test_read_only_output_mount_is_one_clean_error(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private read-only mount")
    (tmp_path / "ro").mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            'mount -t tmpfs -o ro tmpfs "$0" && ! touch "$0/x"',
                            str(tmp_path / "ro")], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private read-only mount here: {probe.stderr.strip()}")
    src = make_clip(tmp_path / "a.mp4", frames=3)
    inside = _read_only_run(tmp_path, src, tmp_path / "ro" / "new")
    line = _one_clean_error(inside.returncode, inside.stderr)
    assert line == (f"Error: cannot create the output folder {tmp_path / 'ro' / 'new'}: "
                    "Read-only file system")
    itself = _read_only_run(tmp_path, src, tmp_path / "ro")
    line = _one_clean_error(itself.returncode, itself.stderr)
    assert line.startswith(f"Error: cannot create the job store {tmp_path / 'ro'}")
    assert line.endswith("Read-only file system")


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_resume_recomputes_finished_segments_that_were_damaged(tmp_path):
    # a crash can leave a segment recorded as done but torn (half written, or cut inside its
    # last frame, where every packet is still there) or empty (data never flushed): --resume
    # computes those again, never joins what is left of them
    src, out, db, cmd = _segmented_batch(tmp_path, "--devices", "cpu", "--json")
    first = _start_until_segments(cmd, db, 3)
    first.kill()
    first.communicate()
    done = _done_segments(db)
    assert 3 <= len(done) < 10
    seg_dir = out / ".vsr-batch" / "segments" / "000001"
    half, empty, last = (seg_dir / f"seg-{i:05d}.nut" for i in done[:3])
    _cut(half, half.stat().st_size // 2)
    empty.write_bytes(b"")
    with av.open(str(last)) as c:
        *_, final = (p for p in c.demux(c.streams.video[0]) if p.size)
    _cut(last, final.pos + final.size // 2)
    with av.open(str(last)) as c:  # the cut leaves all six packets, the last one short
        assert sum(1 for p in c.demux(c.streams.video[0]) if p.size) == 6
    code, report, err = _run(*cmd[len(VSR) + 1:-1], "--resume")
    print(err)
    assert code == 0, err
    assert _outputs(report["done"]) == [(str(src), str(out / "long.mkv"))]
    warnings = [ln for ln in err.splitlines() if "computing it again" in ln]
    assert [w.split("segment ")[1].split(":")[0] for w in warnings] == [str(i) for i in done[:3]]
    assert "holds 3 of its 6 frames" in warnings[0]
    assert "is empty" in warnings[1]
    assert "bytes where" in warnings[2]
    summary = err.strip().splitlines()[-1]
    assert f"{10 - len(done) + 3} segments computed, {len(done) - 3} reused" in summary
    assert video_pts_seconds(out / "long.mkv") == video_pts_seconds(src)
    assert packets(out / "long.mkv", "audio") == packets(src, "audio")
    assert _partials(out) == []


def _tiny_folder(folder: Path) -> dict[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    make_clip(folder / "a.mp4", frames=3)
    make_clip(folder / "b.mkv", frames=3)
    return {p: p.read_bytes() for p in folder.iterdir()}


def test_input_folder_that_is_or_lies_in_the_output_folder_is_refused(tmp_path):
    inputs = _tiny_folder(tmp_path / "in")
    raw = _tiny_folder(tmp_path / "out" / "raw")
    for folder, out, why in ((tmp_path / "in", tmp_path / "in", "is the output folder"),
                             (tmp_path / "out" / "raw", tmp_path / "out",
                              f"is inside the output folder {tmp_path / 'out'}")):
        code, report, err = _run(str(folder), "-o", str(out), *BICUBIC, "--devices", "cpu")
        line = _one_clean_error(code, err)
        assert line.startswith(f"Error: input folder {folder} {why}"), line
        assert report == {}
    # nothing was written: no job state, no output, every input as it was
    assert {p: p.read_bytes() for p in (tmp_path / "in").iterdir()} == inputs
    assert {p: p.read_bytes() for p in (tmp_path / "out" / "raw").iterdir()} == raw
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["raw"]


def test_files_a_search_finds_in_the_output_folder_are_reported(tmp_path):
    _tiny_folder(tmp_path / "in")
    # a pattern whose every match lies in the output folder: a failure, not "0 done"; the
    # batch's only input, so its one Error: line, and no job state made
    code, report, err = _run(str(tmp_path / "in*"), "-o", str(tmp_path / "in"), *BICUBIC,
                             "--devices", "cpu")
    assert code == 1, err
    assert report == {}
    assert err.splitlines()[-1].startswith(f"Error: {tmp_path / 'in*'}: every media file it "
                                           "names is inside the output folder"), err
    assert not (tmp_path / "in" / ".vsr-batch").exists()
    # the output folder inside a searched folder is left out of the search: its files are
    # this batch's outputs; any other media file there is named in a warning
    out = tmp_path / "in" / "out"
    code, report, err = _run(str(tmp_path / "in"), "-o", str(out), *BICUBIC,
                             "--devices", "cpu")
    assert code == 0, err
    assert sorted(d["output"] for d in report["done"]) == [str(out / "a.mp4"),
                                                           str(out / "b.mkv")]
    assert "inside the output folder" not in err
    make_clip(out / "stray.mp4", frames=3)
    code, report, err = _run(str(tmp_path / "in"), "-o", str(out), *BICUBIC,
                             "--devices", "cpu")
    assert code == 0, err
    assert report["done"] == [] and len(report["skipped"]) == 2
    [warning] = [ln for ln in err.splitlines() if "inside the output folder" in ln]
    assert str(out / "stray.mp4") in warning
    # a named folder without a media file is a failure too, not "0 done"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no video here")
    code, report, err = _run(str(tmp_path / "notes"), "-o", str(tmp_path / "o2"), *BICUBIC,
                             "--devices", "cpu")
    assert code == 1, err
    assert report == {}
    assert err.splitlines() == [f"Error: {tmp_path / 'notes'}: no media files in this folder "
                                "(searched recursively, hidden files and folders left out)"]
    assert not (tmp_path / "o2").exists()


def test_manifest_fields_of_the_wrong_type_fail_their_line(tmp_path):
    """`"crf": "abc"` used to fail with Python's own `'<=' not supported ...` and `"crf": true`
    reached x264 as 'True': each such line now fails, naming the line and the field."""
    src = make_clip(tmp_path / "a.mp4", frames=2)
    manifest = tmp_path / "list.jsonl"
    lines = [{"input": "a.mp4", "output": "crf_text.mp4", "crf": "abc"},
             {"input": "a.mp4", "output": "crf_bool.mp4", "crf": True},
             {"input": "a.mp4", "output": "preset_int.mp4", "preset": 5},
             {"input": "a.mp4", "output": "batch_null.mp4", "batch": None},
             {"input": "a.mp4", "output": "good.mp4", "crf": 30, "preset": None}]
    manifest.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(), manifests=(manifest,), output_dir=out,
                                   options=JobOptions(model="bicubic", scale=2,
                                                      preset="ultrafast"),
                                   devices=("cpu",)))
    assert [d["output"] for d in result.done] == [str(out / "good.mp4")]
    errors = {f["error"].split(": ", 1)[0]: f for f in result.failed}
    assert sorted(errors) == [f"{manifest}:{n}" for n in (1, 2, 3, 4)]
    assert all(f["input"] == str(src) for f in result.failed)
    expect = {1: 'option "crf" must be an integer, not "abc"',
              2: 'option "crf" must be an integer, not true',
              3: 'option "preset" must be a string, not 5',
              4: 'option "batch" must be an integer, not null'}
    for n, text in expect.items():
        assert errors[f"{manifest}:{n}"]["error"] == f"{manifest}:{n}: {text}"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["good.mp4"]


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg program")
def test_edit_list_clip_batch_matches_upscale(tmp_path):
    """`ffmpeg -ss 0.2 -c copy` of a B-frame clip: an MP4 edit list hides 5 pre-roll samples.
    The segment plan counted them, so segment 0 always failed ("decoded 19 frames where the
    file has 24"); now batch writes exactly the frames, times and audio `vsr upscale` does."""
    from vsr.upscale import UpscaleConfig, upscale_file

    src, trimmed = tmp_path / "bf.mp4", tmp_path / "in" / "trim.mp4"
    trimmed.parent.mkdir()
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=3", "-f", "lavfi", "-i", "sine=d=3",
            "-c:v", "libx264", "-preset", "ultrafast", "-bf", "3", "-g", "12", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-shortest", src)
    _ffmpeg("-ss", "0.2", "-i", src, "-c", "copy", trimmed)
    single = tmp_path / "single.mp4"
    r = upscale_file(UpscaleConfig(input=trimmed, output=single, model="bicubic", scale=2))
    assert r.frames_out == 70
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(str(trimmed),), output_dir=out, segment_frames=20,
                                   options=JobOptions(model="bicubic", scale=2,
                                                      preset="ultrafast"),
                                   devices=("cpu",)))
    assert not result.failed and result.segments_computed > 2
    assert video_pts_seconds(out / "trim.mp4") == video_pts_seconds(single)
    assert packets(out / "trim.mp4", "audio") == packets(single, "audio")


def test_mpeg_ts_batch_matches_upscale(tmp_path):
    """FFmpeg's seek in MPEG-TS goes by byte position and landed a GOP or more past a
    segment's first keyframe, so every segmented batch of a .ts failed ("segment 1: decoded 0
    frames where the file has 10"); now it seeks further back until it is at or before it."""
    from vsr.io.sink import EncodeConfig
    from vsr.upscale import UpscaleConfig, upscale_file

    src = tmp_path / "in" / "rec.ts"
    src.parent.mkdir()
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=4", "-f", "lavfi", "-i", "sine=d=4",
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "10", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-f", "mpegts", src)  # B-frames: dts before pts
    single = tmp_path / "single.ts"
    assert upscale_file(UpscaleConfig(input=src, output=single, model="bicubic", scale=2,
                                      encode=EncodeConfig(preset="ultrafast"))).frames_out == 100
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=out, segment_frames=10,
                                   options=JobOptions(model="bicubic", scale=2,
                                                      preset="ultrafast"),
                                   devices=("cpu",)))
    assert not result.failed and result.segments_computed == 10
    assert video_pts_seconds(out / "rec.ts") == video_pts_seconds(single)
    assert packets(out / "rec.ts", "audio") == packets(single, "audio")


def test_cut_off_matroska_fails_in_batch_too(tmp_path):
    """A half-copied Matroska file (no frame count in its header) is refused by `vsr batch`
    as by `vsr upscale`, before any segment is computed; it used to come out half long."""
    full = make_clip(tmp_path / "full.mkv", frames=50, audio_tracks=1, color={"gop_size": 10})
    half = tmp_path / "half.mkv"
    half.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(str(half),), output_dir=out, segment_frames=10,
                                   options=JobOptions(model="bicubic", scale=2,
                                                      preset="ultrafast"),
                                   devices=("cpu",)))
    [failed] = result.failed
    assert "half.mkv is truncated or damaged" in failed["error"]
    assert result.segments_computed == 0 and not (out / "half.mkv").exists()


# --- round 3: per-input warnings, a job store that cannot be used, a file size limit ----------

def _hdr10_clip(path: Path, frames: int = 8) -> Path:
    """64x48 10-bit HEVC with HDR10 side data, a keyframe every 2 frames."""
    master = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx265", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p10le"
        st.codec_context.color_primaries, st.codec_context.color_trc = 9, 16
        st.codec_context.options = {"x265-params": f"log-level=error:master-display={master}:"
                                                   "max-cll=1000,400:keyint=2:min-keyint=1"}
        _mux_flat_frames(out, st, frames, "rgb24")
    return path


def _mux_flat_frames(out, st, frames: int, fmt: str) -> None:
    """``frames`` flat 64x48 frames of rising level, given in ``fmt`` (rgb24 or rgba)."""
    import numpy as np

    for i in range(frames):
        pixels = np.full((48, 64, 4 if fmt == "rgba" else 3), 20 * i, np.uint8)
        frame = av.VideoFrame.from_ndarray(pixels, format=fmt).reformat(format=st.pix_fmt)
        frame.pts = i
        out.mux(st.encode(frame))
    out.mux(st.encode(None))


def test_per_input_warnings_are_said_once_per_file_not_per_segment(tmp_path):
    """Each segment opens the input and an encoder: the HDR10 loss and the alpha channel were
    warned of once per segment (4 times each here), by two workers at once."""
    if "libx265" not in av.codecs_available:
        pytest.skip("no libx265 in this PyAV")
    hdr, alpha = _hdr10_clip(tmp_path / "hdr.mkv"), alpha_clip(tmp_path / "alpha.mkv")
    out = tmp_path / "out"
    code, report, err = _run(str(hdr), str(alpha), "-o", str(out), *BICUBIC, "--codec", "ffv1",
                             "--segment-frames", "2", "--devices", "cpu,cpu")
    assert code == 0 and len(report["done"]) == 2, err
    assert "8 segments computed" in err, err
    lost = [ln for ln in err.splitlines() if "HDR10" in ln]
    assert lost == ["WARNING vsr.io.sink: hdr.mkv: ffv1 cannot carry the input's HDR10 "
                    "mastering display and content light level metadata; the output has none "
                    "(use libx265 or libx264 to keep it)"], err
    # ffv1 keeps the alpha plane (tests/test_alpha.py); libx264 cannot, which is said once
    # for the file
    assert not [ln for ln in err.splitlines() if "alpha channel" in ln], err
    code, report, err = _run(str(alpha), "-o", str(tmp_path / "x264"), *BICUBIC, "--codec",
                             "libx264", "--segment-frames", "2", "--devices", "cpu,cpu")
    assert code == 0 and len(report["done"]) == 1, err
    said = [ln.split(";")[0] for ln in err.splitlines() if "alpha channel" in ln]
    assert said == ["WARNING vsr.io.sink: alpha.mkv has an alpha channel (yuva420p) that "
                    "libx264 video cannot hold: the colour is upscaled, the output has no "
                    "alpha"], err


def _store_after_one_file(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A batch of one tiny clip, done: (the clip, the output folder, its job store)."""
    src = make_clip(tmp_path / "a.mp4", frames=3)
    out = tmp_path / "out"
    code, _, err = _run(str(src), "-o", str(out), *BICUBIC)
    assert code == 0, err
    return src, out, out / ".vsr-batch" / "jobs.sqlite"


def test_a_damaged_job_store_is_one_clean_error(tmp_path):
    """A page of the store overwritten (a bad disk, a copy cut short): SQLite's
    DatabaseError came out as `Error: internal error: DatabaseError: ...`."""
    src, out, db = _store_after_one_file(tmp_path)
    data = bytearray(db.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = b"\xff" * 4096  # the second page
    db.write_bytes(bytes(data))
    code, _, err = _run(str(src), "-o", str(out), *BICUBIC, "--overwrite")
    line = _one_clean_error(code, err)
    assert line.startswith(f"Error: cannot read the job store {db}: "), line
    assert line.endswith(f"(the file is damaged; remove {db.parent} to start the batch's "
                         "record anew)"), line


def test_a_read_only_job_store_is_one_clean_error(tmp_path):
    """The store file alone read-only (its folder writable): the first write of the run
    raised sqlite3.OperationalError, `Error: internal error: ...`."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private read-only mount")
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    probe = tmp_path / "probe"
    probe.write_text("")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(probe), "sh", "-c",
                        '! echo x > "$0"', str(probe)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no private read-only bind mount here: {r.stderr.strip()}")
    src, out, db = _store_after_one_file(tmp_path)
    other = make_clip(tmp_path / "b.mp4", frames=3)  # new work: the store must be written
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(db), *VSR, "batch", str(src),
                        str(other), "-o", str(out), *BICUBIC],
                       env=ENV, capture_output=True, text=True, timeout=120)
    line = _one_clean_error(r.returncode, r.stderr)
    assert line == f"Error: cannot write the job store {db}: attempt to write a readonly database"
    assert not (out / "b.mp4").exists() and _partials(out) == []


def _noise_clip(path: Path, frames: int = 24) -> Path:
    """96x72 random frames (they do not compress), a keyframe every 8."""
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 96, 72, "yuv420p"
        v.codec_context.gop_size = 8
        v.codec_context.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (72, 96, 3), np.uint8),
                                               format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    return path


def _file_size_limit() -> None:
    import resource

    # 3 segments of ~80 kB and the job store's log fit, the joined ~240 kB does not
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))  # Python ignores SIGXFSZ


def test_a_join_past_the_file_size_limit_fails_plainly_and_resumes(tmp_path):
    """Every segment fits under the limit, the joined output does not: the failure read
    `[Errno 27] File too large: 'file:out/.noise.PID.HEX.partial.mp4'`. Now the plain reason,
    nothing partial left, the segments kept for --resume."""
    src = _noise_clip(tmp_path / "noise.mp4")
    out = tmp_path / "out"
    args = [*VSR, "batch", str(src), "-o", str(out), *BICUBIC, "--segment-frames", "8",
            "--preset", "ultrafast", "--json"]
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=120,
                       preexec_fn=_file_size_limit)
    assert r.returncode == 1, r.stderr
    [failed] = json.loads(r.stdout)["failed"]
    assert failed["error"].endswith("failed: the file is too large for the file system"), failed
    assert ".partial" not in failed["error"] and _partials(out) == []
    assert not (out / "noise.mp4").exists()
    r = subprocess.run([*args, "--resume"], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "0 segments computed, 3 reused" in r.stderr, r.stderr
    assert video_pts_seconds(out / "noise.mp4") == video_pts_seconds(src)


def test_a_file_name_with_a_newline_stays_on_its_failure_line(tmp_path):
    """The summary printed each failed input as it is: a name holding a newline split its line
    (and a name like "x\\nError: ..." forged one). Escaped, as log lines are."""
    name = tmp_path / "new\nError: forged.mp4"
    name.write_text("not media")
    code, report, err = _run(str(name), "-o", str(tmp_path / "out"), *BICUBIC)
    assert code == 1 and [f["input"] for f in report["failed"]] == [str(name)]
    lines = err.strip().splitlines()
    assert not any(ln.startswith("Error:") for ln in lines), err
    [failed] = [ln for ln in lines if ln.startswith("failed: ")]
    assert failed.startswith(f"failed: {tmp_path}/new\\nError: forged.mp4: "), err


def test_an_output_the_store_cannot_record_is_removed_so_the_rerun_can_make_it(tmp_path):
    """The join wrote the output, then the store failed to record it (a full disk): an
    unrecorded output would make the rerun refuse ("exists"), so it is removed and the
    batch stops with the store's error."""
    from vsr.jobs.plan import Job
    from vsr.jobs.runner import Tracker, _File
    from vsr.jobs.store import JobStore, StoreError

    output = tmp_path / "out" / "a.png"
    output.parent.mkdir()
    output.write_bytes(b"written by the join")
    with JobStore(tmp_path / "jobs.sqlite") as store:
        file_id, _, _ = store.begin(str(tmp_path / "a.png"), str(output), "fp", [(None, None, 1)],
                                 resume=False)
        tracker = Tracker(store, overwrite=False)
        job = Job(tmp_path / "a.png", output)
        store._db.close()  # the real connection fails from here on, as on a full disk
        with pytest.raises(StoreError, match="job store"):
            tracker.complete(_File(job, file_id, None, [], [], 1))
    assert not output.exists()


def test_every_module_a_task_runs_has_its_warnings_collected():
    """A batch says a task's warnings once per file, and under --ray at all, only for the
    loggers in TASK_LOGGERS: a module that warns and is not there would be said per segment,
    or never under Ray. Modules outside a task's reach (the batch itself, streams, training,
    compression, `vsr bench`) are left out."""
    root = Path(vsr.__file__).parent
    outside = ("jobs", "stream", "train", "compress", "bench.py")
    warns = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        text = path.read_text()
        if rel.parts[0] in outside or "log.warning(" not in text:
            continue
        named = re.search(r"^log = logging\.getLogger\([\"']([\w.]+)[\"']\)", text, re.M)
        name = named.group(1) if named else ".".join(
            ("vsr", *rel.with_suffix("").parts)).removesuffix(".__init__")
        warns.add(name)
    assert warns and warns <= set(TASK_LOGGERS), sorted(warns - set(TASK_LOGGERS))


def test_a_failing_progress_callback_stops_every_worker_before_it_is_raised(tmp_path):
    """A library caller's progress callback that raised escaped run_batch while the workers
    went on: segments and outputs appeared after the call had returned, into a job store it
    had closed. Now the workers stop first, then the callback's exception is raised."""
    inputs = [str(make_clip(tmp_path / f"{k}.mp4", frames=120, color={"gop_size": 10}))
              for k in "abc"]
    out = tmp_path / "out"

    def fail(progress) -> None:
        raise RuntimeError("the caller's callback failed")

    config = BatchConfig(inputs=tuple(inputs), output_dir=out, devices=("cpu", "cpu"),
                         options=JobOptions(model="bicubic", scale=2), segment_frames=10)
    with pytest.raises(RuntimeError, match="callback failed"):
        run_batch(config, progress=fail)
    assert not [t for t in threading.enumerate() if t.name.startswith("vsr-batch")]
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    time.sleep(1.5)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    result = run_batch(dataclasses.replace(config, resume=True))  # and it resumes
    # a file the workers finished before the first progress call is skipped, not redone
    assert len(result.done) + len(result.skipped) == 3 and not result.failed, result
    assert sorted(p.name for p in out.glob("*.mp4")) == ["a.mp4", "b.mp4", "c.mp4"]


def test_the_stop_message_says_what_is_left_to_resume(tmp_path):
    """A stop said "finished segments are kept (rerun with --resume)" whatever it left: also
    when every file was finished and recorded (nothing to resume). It now says what is left:
    the files unfinished and their finished segments, or nothing."""
    from vsr.errors import Interrupted

    first = make_clip(tmp_path / "a.mp4", frames=30, color={"gop_size": 10})
    second = make_clip(tmp_path / "b.mp4", frames=120, size=(160, 120), color={"gop_size": 10})
    out = tmp_path / "out"
    db = out / ".vsr-batch" / "jobs.sqlite"
    config = BatchConfig(inputs=(str(first), str(second)), output_dir=out, devices=("cpu",),
                         options=JobOptions(model="bicubic", scale=2), segment_frames=10)

    def stop_when(ready) -> Callable:
        def progress(p) -> None:
            if ready(p):
                raise KeyboardInterrupt  # as the signal handler raises it
        return progress

    # the first file done, two segments of the second (one worker: in that order)
    with pytest.raises(Interrupted) as stopped:
        run_batch(config, progress=stop_when(
            lambda p: p.files_done == 1 and len(_done_segments(db)) >= 5))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        kept = conn.execute("SELECT count(*) FROM segments JOIN files ON files.id = file_id "
                            "WHERE segments.status = 'done' AND files.input = ?",
                            (str(second),)).fetchone()[0]
    assert 2 <= kept < 12 and (out / "a.mp4").is_file() and not (out / "b.mp4").exists()
    assert str(stopped.value) == (f"interrupted; 1 of 2 files unfinished, {kept} finished "
                                  "segments kept (rerun with --resume to reuse them)")

    # every file finished and recorded when the stop comes: nothing is left
    with pytest.raises(Interrupted) as stopped:
        run_batch(dataclasses.replace(config, resume=True),
                  progress=stop_when(lambda p: p.files_done + p.files_skipped == 2))
    assert str(stopped.value) == "interrupted after every file had ended: nothing left to resume"
    result = run_batch(config)
    assert len(result.skipped) == 2 and not result.done and not result.failed


def _twin_clip(path: Path, monkeypatch) -> Path:
    """_heavy_clip's twin: the same frames, times, keyframes and audio, other pictures (the
    negative): a file replaced by it plans into the same segments."""
    import conftest

    pattern = conftest._pattern
    with monkeypatch.context() as m:
        m.setattr(conftest, "_pattern", lambda i, h, w, d: 255 - pattern(i, h, w, d))
        return _heavy_clip(path)


@pytest.mark.parametrize("how", ["replaced", pytest.param("deleted", marks=pytest.mark.slow)])
def test_an_input_replaced_mid_batch_fails_alone_with_no_output(tmp_path, monkeypatch, how):
    """An input replaced (a twin that plans into the same segments) while its segments were
    computed on two workers: the segments done before and those after were joined into one
    output of two different files, recorded as done (exit 0). Now that file fails with one
    line naming it, the other file finishes, the exit status is 1 and no partial is left;
    as for an input deleted meanwhile."""
    b = _heavy_clip(tmp_path / "b.mkv")  # first in the queue: its segments are taken first
    a = _heavy_clip(tmp_path / "a.mkv")
    twin = _twin_clip(tmp_path / "twin.mkv", monkeypatch)
    out = tmp_path / "out"
    db = out / ".vsr-batch" / "jobs.sqlite"
    cmd = [*VSR, "batch", str(b), str(a), "-o", str(out), *BICUBIC, "--segment-frames", "6",
           "--devices", "cpu,cpu", "--json"]
    proc = _start_until_segments(cmd, db, 1)
    if how == "replaced":
        os.replace(twin, b)
    else:
        b.unlink()
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    report = json.loads(stdout.splitlines()[-1])
    assert _outputs(report["done"]) == [(str(a), str(out / "a.mkv"))]
    assert [f["input"] for f in report["failed"]] == [str(b)]
    assert report["failed"][0]["error"] == (
        f"{b} changed while the batch ran (replaced or rewritten after it was planned); "
        "rerun the batch to upscale it as it is now" if how == "replaced" else
        "input not found")
    assert [ln for ln in err.splitlines() if ln.startswith("failed: ")] == [
        f"failed: {b}: {report['failed'][0]['error']}"]
    assert not (out / "b.mkv").exists() and _partials(out) == []
    assert video_pts_seconds(out / "a.mkv") == video_pts_seconds(a)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT input, status FROM files ORDER BY id").fetchall() == [
            (str(b), "failed"), (str(a), "done")]


def _wait_for_own_partial(proc: subprocess.Popen, folder: Path) -> None:
    """Return once ``proc`` has begun writing the joined output (its hidden partial file)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and any(".partial" in e.name and f".{proc.pid}." in e.name
                                   for e in os.scandir(folder)):
            return
        time.sleep(0.005)
    out, err = proc.communicate()
    pytest.fail(f"the batch ended (rc {proc.returncode}) before its join began: {err}")


# SIGINT takes the same stop path: in the slow suite, to keep the fast one under 15 minutes
@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_a_joined_output_is_recorded_keeps_output_record_and_cleanup_together(
        tmp_path, signum):
    """A --resume whose segments were all finished joins in the batch's own thread. A stop
    that came while the store recorded the joined output (held here by a real SQLite lock
    from this test) left the output done and recorded but its 200 segment files in
    .vsr-batch for good: the rerun skips the file and never removed them (and a stop just
    after the move, before the record, would leave an output the rerun refuses as
    "exists"). The record of what is being moved, the move, the record and the clean-up now
    go together, the stop after."""
    src = make_clip(tmp_path / "long.mkv", frames=200, size=(64, 48), audio_tracks=1,
                    color={"gop_size": 1})
    out = tmp_path / "out"
    db = out / ".vsr-batch" / "jobs.sqlite"
    cmd = [*VSR, "batch", str(src), "-o", str(out), *BICUBIC, "--segment-frames", "1",
           "--devices", "cpu"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for_own_partial(first, out)
    first.kill()  # every segment done, the join cut off: only the join is left
    first.communicate()
    assert len(_done_segments(db)) == 200 and not (out / "long.mkv").exists()

    second = subprocess.Popen([*cmd, "--resume"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _wait_for_own_partial(second, out)
    lock = sqlite3.connect(str(db), isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the batch's records of the output wait for this
        deadline, sizes = time.monotonic() + 120, []
        while second.poll() is None:  # until the output is written: its record waits
            assert time.monotonic() < deadline
            sizes.append(sum(e.stat().st_size for e in os.scandir(out)
                             if ".partial" in e.name))
            if len(sizes) > 100 and sizes[-1] == sizes[-100] > 0:  # 0.5 s without a write
                break
            time.sleep(0.005)
        time.sleep(0.2)  # inside the store's write now
        second.send_signal(signum)
        time.sleep(0.5)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    _, err = second.communicate(timeout=120)
    assert second.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1].startswith("Error: interrupted after every file had "
                                                   "ended: nothing left to resume"), err
    assert video_pts_seconds(out / "long.mkv") == video_pts_seconds(src)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT status FROM files").fetchall() == [("done",)]
    assert [p for p in (out / ".vsr-batch" / "segments").rglob("*") if p.is_file()] == []
    assert _partials(out) == []
    code, report, err = _run(*cmd[len(VSR) + 1:])
    assert code == 0 and _outputs(report["skipped"]) == [(str(src), str(out / "long.mkv"))], err


def test_an_input_copied_over_with_the_same_size_and_time_is_still_a_change(tmp_path):
    """An input replaced mid-batch by a file of the same size and modification time (`cp -p`,
    `rsync -t` of another take) passed the check: segments of two files would be joined."""
    from vsr.errors import InputError
    from vsr.jobs.segments import check_unchanged, input_identity

    src = tmp_path / "in.mkv"
    src.write_bytes(b"a" * 1000)
    planned = input_identity(src)
    check_unchanged(src, planned)
    other = tmp_path / "other.mkv"
    other.write_bytes(b"b" * 1000)
    st = src.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, src)
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(InputError, match="changed while the batch ran"):
        check_unchanged(src, planned)


@pytest.mark.parametrize(("model", "scale", "said"), [
    ("nonexist", 2, "unknown model 'nonexist'"),
    ("drn-t-x4", 2, "model 'drn-t-x4' upscales x4, not x2"),
    ("./no/such.safetensors", None, "no such checkpoint file"),
])
def test_a_model_that_cannot_load_is_one_error_before_anything_is_made(tmp_path, model, scale,
                                                                       said):
    """An unknown --model failed every file on its own (a warning and a 'failed:' line each)
    and left a segment folder per file under -o/.vsr-batch; now one error, nothing made."""
    make_clip(tmp_path / "a.mp4", frames=2)
    make_clip(tmp_path / "b.mp4", frames=2)
    out = tmp_path / "out"
    with pytest.raises(VsrError, match=re.escape(said)):
        run_batch(BatchConfig(inputs=(str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")),
                              output_dir=out, options=JobOptions(model=model, scale=scale),
                              devices=("cpu",)))
    assert not out.exists()


def test_a_batch_none_of_whose_inputs_exists_is_one_error_and_makes_nothing(tmp_path,
                                                                           cli_error):
    """`vsr batch nosuch.mp4 -o out` said 'failed: nosuch.mp4: input not found: nosuch.mp4'
    with no Error: line, and left out/.vsr-batch; with nothing to do but fail, it is one
    error now and nothing is made. A batch of which some input exists keeps its per-file
    lines, the name said once."""
    out = tmp_path / "out"
    missing = tmp_path / "nosuch.mp4"
    assert cli_error("batch", str(missing), "-o", str(out)) == \
        f"Error: {missing}: input not found"
    (tmp_path / "empty").mkdir()
    line = cli_error("batch", str(missing), str(tmp_path / "empty"),
                     str(tmp_path / "nomatch" / "*.mkv"), "-o", str(out))
    assert line == (f"Error: no input of the batch exists: {missing}: input not found; "
                    f"{tmp_path / 'empty'}: no media files in this folder (searched "
                    "recursively, hidden files and folders left out); "
                    f"{tmp_path / 'nomatch' / '*.mkv'}: no file matches this pattern"), line
    assert not out.exists()
    make_clip(tmp_path / "a.mp4", frames=2)
    result = run_batch(BatchConfig(inputs=(str(missing), str(tmp_path / "a.mp4")),
                                   output_dir=out, devices=("cpu",),
                                   options=JobOptions(model="bicubic", scale=2)))
    assert result.failed == ({"input": str(missing), "error": "input not found"},)
    assert [d["output"] for d in result.done] == [str(out / "a.mp4")]


def test_an_output_name_no_format_is_known_by_fails_before_any_segment(tmp_path):
    """--name '{stem}' (no suffix): every segment was computed, then the join failed with
    'Could not determine output format'; it fails at planning now, as `vsr upscale` says it."""
    src = make_clip(tmp_path / "a.mp4", frames=6)
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=out, template="{stem}",
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert [f["error"] for f in result.failed] == [
        f"cannot write {out / 'a'}: Could not determine output format"]
    assert result.segments_computed == 0


def test_animated_gifs_in_a_folder_are_upscaled_not_left_out(tmp_path, caplog):
    """A folder search took no .gif (vsr upscale reads them): they were neither done, failed
    nor said. Written back as .gif with the gif encoder (a GIF holds nothing else; libx264,
    the default, is replaced with a warning), as one task: its frames join as GIF pictures."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=4)
    frames = [Image.new("RGB", (32, 24), (70 * k, 20, 200)) for k in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:],
                   duration=[100, 200, 300], loop=0)
    caplog.set_level(logging.WARNING, logger="vsr")
    out = tmp_path / "out"
    result = run_batch(BatchConfig(inputs=(str(folder),), output_dir=out,
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert not result.failed, result.failed
    assert sorted(Path(d["output"]).name for d in result.done) == ["a.mp4", "anim.gif"]
    with Image.open(out / "anim.gif") as gif:
        assert gif.size == (64, 48) and gif.n_frames == 3
    assert "anim.gif: a GIF holds GIF pictures only: written with the gif encoder, not " \
           "libx264" in caplog.text


def test_every_failure_of_a_manifest_line_names_the_line(tmp_path):
    """Failures found past planning (an input not found, a model that does not load, an
    output that is a folder) did not name their FILE:LINE: several failed lines of one input
    could not be told apart."""
    make_clip(tmp_path / "a.mp4", frames=2)
    out = tmp_path / "out"
    (out / "dir.mp4").mkdir(parents=True)
    manifest = tmp_path / "m.jsonl"
    lines = [{"input": "missing.mp4", "output": "1.mp4"},
             {"input": "a.mp4", "output": "2.mp4", "model": "nonexist"},
             {"input": "a.mp4", "output": "dir.mp4"},
             {"input": "a.mp4", "output": "4.mp4"}]
    manifest.write_text("".join(json.dumps(o) + "\n" for o in lines))
    result = run_batch(BatchConfig(inputs=(), manifests=(manifest,), output_dir=out,
                                   options=JobOptions(model="bicubic", scale=2),
                                   devices=("cpu",)))
    assert [d["output"] for d in result.done] == [str(out / "4.mp4")]
    errors = sorted(f["error"] for f in result.failed)
    assert [e.split(": ", 1)[0] for e in errors] == [f"{manifest}:{n}" for n in (1, 2, 3)]
    assert "input not found" in errors[0] and "unknown model" in errors[1] \
        and "directory" in errors[2], errors


def test_a_resume_after_the_weights_changed_recomputes_every_segment(tmp_path, drn_checkpoint):
    """The fingerprint held the model's name or path, not its weights: a checkpoint
    retrained in place between the stop and --resume gave a video of two models, the kept
    segments from the old weights joined with new ones, exit 0."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = tmp_path / "m.safetensors"
    shutil.copyfile(drn_checkpoint, weights)
    src = make_clip(tmp_path / "a.mp4", frames=40, color={"gop_size": 10})
    out = tmp_path / "out"
    config = BatchConfig(inputs=(str(src),), output_dir=out, devices=("cpu",),
                         options=JobOptions(model=str(weights)), segment_frames=10)

    def stop_after_two_segments(progress) -> None:
        if progress.frames_done >= 20:
            raise KeyboardInterrupt

    def stop() -> None:
        with contextlib.suppress(Interrupted):
            run_batch(dataclasses.replace(config, overwrite=True), progress=stop_after_two_segments)

    def resume() -> int:
        result = run_batch(dataclasses.replace(config, resume=True, overwrite=True))
        assert len(result.done) == 1, result
        return result.segments_reused

    stop()
    assert resume() > 0  # the same weights: what was done is kept
    stop()
    with safe_open(str(weights), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 0.01  # "retrained" in place
    save_file(tensors, str(weights), metadata=meta)
    assert resume() == 0


def test_a_finished_output_cut_short_or_emptied_since_is_not_skipped(tmp_path):
    """The record said 'done' and the file was there: a rerun skipped an output truncated or
    emptied since (exit 0, an unplayable file). The size it was written with is recorded."""
    inputs = tuple(str(make_clip(tmp_path / f"{k}.mp4", frames=6)) for k in "abc")
    out = tmp_path / "out"
    config = BatchConfig(inputs=inputs, output_dir=out, devices=("cpu",),
                         options=JobOptions(model="bicubic", scale=2))
    assert len(run_batch(config).done) == 3
    whole = (out / "a.mp4").read_bytes()
    (out / "a.mp4").write_bytes(whole[:1000])
    (out / "b.mp4").write_bytes(b"")
    result = run_batch(config)
    assert [Path(s["input"]).name for s in result.skipped] == ["c.mp4"]
    assert sorted((Path(f["input"]).name, f["error"]) for f in result.failed) == [
        ("a.mp4", f"{out / 'a.mp4'} is not the output this batch finished (it holds 1,000 "
                  f"bytes where this batch wrote {len(whole):,}): --overwrite makes it again"),
        ("b.mp4", f"{out / 'b.mp4'} is not the output this batch finished (it holds 0 bytes "
                  f"where this batch wrote {len(whole):,}): --overwrite makes it again")]
    assert (out / "b.mp4").read_bytes() == b""  # kept as it is: nothing replaced unasked
    result = run_batch(dataclasses.replace(config, overwrite=True))
    assert len(result.done) == 3 and (out / "a.mp4").stat().st_size == len(whole)


def test_a_damaged_state_folder_stops_the_batch_with_one_line(tmp_path):
    """A file where the segment folder goes failed every file with a raw
    'NotADirectoryError: [Errno 20] Not a directory: ...' line each."""
    inputs = tuple(str(make_clip(tmp_path / f"{k}.mp4", frames=12, color={"gop_size": 4}))
                   for k in "ab")
    out = tmp_path / "out"
    (out / ".vsr-batch").mkdir(parents=True)
    (out / ".vsr-batch" / "segments").write_text("")
    r = subprocess.run([*VSR, "batch", *inputs, "-o", str(out), *BICUBIC, "--segment-frames",
                        "4"], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"Error: cannot make the segment folder {out}/.vsr-batch/segments/000001: Not a "
        f"directory (remove {out}/.vsr-batch to start the batch's record anew)"], r.stderr


def test_a_batch_killed_between_moving_an_output_and_recording_it_takes_it_up(tmp_path):
    """Killed (kill -9, a power cut) after its join moved the output into place and before
    the record said so, a rerun refused that complete output for ever ('output exists (use
    --overwrite)') and kept its segments. The size being moved is recorded first: a rerun
    finds it there and records the file as done."""
    src = make_clip(tmp_path / "a.mp4", frames=12, color={"gop_size": 4})
    out = tmp_path / "out"
    crash = ("import os, signal, sys\n"
             "from vsr.jobs import store, BatchConfig, JobOptions, run_batch\n"
             "store.JobStore.file_done = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
             f"run_batch(BatchConfig(inputs=({str(src)!r},), output_dir={str(out)!r}, "
             "options=JobOptions(model='bicubic', scale=2), devices=('cpu',), "
             "segment_frames=4))\n")
    r = subprocess.run([sys.executable, "-c", crash], env=ENV, capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL and (out / "a.mp4").is_file(), r.stderr
    made = (out / "a.mp4").read_bytes()
    result = run_batch(BatchConfig(inputs=(str(src),), output_dir=out, devices=("cpu",),
                                   options=JobOptions(model="bicubic", scale=2),
                                   segment_frames=4))
    assert [Path(s["output"]).name for s in result.skipped] == ["a.mp4"], result
    assert (out / "a.mp4").read_bytes() == made
    assert not any((out / ".vsr-batch" / "segments").iterdir())  # its segments are gone


def test_file_names_that_are_not_utf8_are_upscaled_failed_and_skipped_as_others(tmp_path):
    """A folder holding a Latin-1 name (café.mkv from an old archive): its path reached SQLite
    as text with surrogates, and the whole batch stopped with a UnicodeEncodeError, the good
    file beside it not done. Now it is upscaled, a damaged one fails alone with its error
    recorded, and a rerun skips what is finished. Found by fuzzing."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "good.mkv", frames=4)
    latin1 = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.mkv")
    shutil.copy(folder / "good.mkv", latin1)
    broken = os.fsdecode(os.fsencode(str(folder)) + b"/d\xe9g\xe2t.mkv")
    Path(broken).write_bytes(b"\x1a\x45\xdf\xa3 not matroska")
    config = BatchConfig(inputs=(str(folder),), output_dir=tmp_path / "out", devices=("cpu",),
                         options=JobOptions(model="bicubic", scale=2))
    first = run_batch(config)
    assert sorted(Path(d["input"]).name for d in first.done) == sorted(
        ["good.mkv", Path(latin1).name])
    [failed] = first.failed
    assert failed["input"] == broken and failed["error"]
    assert (tmp_path / "out" / Path(latin1).name).is_file()
    again = run_batch(config)
    assert len(again.skipped) == 2 and not again.done and len(again.failed) == 1
