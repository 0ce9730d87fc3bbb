"""`vsr upscale` stopped by signals, and the partial files of runs killed outright.

Real processes and real signals: a run is started on a synthetic clip, the signal is sent
once its hidden temporary output exists, and what is left in the output folder is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsr.io.output import (
    HOST_TAG,
    is_stale_partial,
    partial_writer,
    remove_stale_partials,
    temp_path_for,
)
from vsr.jobs.segments import clean_partials

VSR = [sys.executable, "-m", "vsr"]


def _partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if ".partial" in p.name)


def _start(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([*VSR, "upscale", str(src), str(out), "--model", "bicubic",
                             "--scale", "4", "--device", "cpu", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash's stacks


def _wait_for_partial(proc: subprocess.Popen, folder: Path) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = _partials(folder)
        if found:
            return found[0]
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no partial output appeared (exit {proc.wait()}): {proc.stderr.read()!r}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_stop_signal_removes_the_partial_output(clip, tmp_path, sig, code):
    src = clip("long.mp4", frames=200, size=(192, 144), audio_tracks=1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _start(src, out_dir / "o.mp4")
    partial = _wait_for_partial(proc, out_dir)
    assert partial_writer(partial) == proc.pid  # the temp name carries the writer's pid
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == code, text
    assert list(out_dir.iterdir()) == []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert signal.Signals(sig).name in lines[0]


def test_partial_of_a_killed_run_is_removed_by_the_next_run(clip, tmp_path):
    src = clip("long.mp4", frames=200, size=(192, 144))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.mp4"
    proc = _start(src, out)
    dead = _wait_for_partial(proc, out_dir)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait()
    assert dead.exists()
    # A live writer's partial of the same output (its pid is a running process) must stay.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = out_dir / f".o.{sleeper.pid}.{HOST_TAG}0123abcd.partial.mp4"
        live.write_bytes(b"still being written")
        other = out_dir / f".other.{proc.pid}.{HOST_TAG}0123abcd.partial.mp4"  # not o.mp4's
        other.write_bytes(b"not ours to judge here")
        small = clip("small.mp4", frames=3)
        r = subprocess.run([*VSR, "upscale", str(small), str(out), "--model", "bicubic",
                            "--scale", "2"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert out.is_file()
        assert not dead.exists()
        assert live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_partials_are_those_whose_writer_is_gone(tmp_path):
    out = tmp_path / "clip.final.mkv"
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        dead_p = tmp_path / f".clip.final.{gone.pid}.{HOST_TAG}89abcdef.partial.mkv"
        live_p = tmp_path / f".clip.final.{alive.pid}.{HOST_TAG}89abcdef.partial.mkv"
        elsewhere = "0000" if HOST_TAG != "0000" else "ffff"  # another machine's (NFS)
        remote = tmp_path / f".clip.final.{gone.pid}.{elsewhere}89abcdef.partial.mkv"
        mine = temp_path_for(out)
        old_style = tmp_path / ".clip.final.89abcdef.partial.mkv"  # no pid: left alone
        kept = (live_p, remote, mine, old_style)
        for p in (dead_p, *kept):
            p.write_bytes(b"x")
        assert partial_writer(mine) == os.getpid()
        assert is_stale_partial(dead_p)
        assert not any(is_stale_partial(p) for p in kept)
        assert remove_stale_partials(out) == [dead_p]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
        # a batch segment folder is cleaned by the same rule: the live writer's file stays
        seg = tmp_path / "seg"
        seg.mkdir()
        for p in (dead_p, live_p):
            (seg / p.name).write_bytes(b"x")
        clean_partials(seg)
        assert [p.name for p in seg.iterdir()] == [live_p.name]
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("stem", ["a" * 251, "é" * 125 + "a", "x.y" * 83 + "z"])
def test_every_legal_output_name_has_a_legal_temp_name(tmp_path, stem):
    out = tmp_path / f"{stem}.mp4"
    assert len(os.fsencode(out.name)) <= 255
    temps = {temp_path_for(out) for _ in range(3)}
    assert len(temps) == 3  # unique per call
    for temp in temps:
        assert len(os.fsencode(temp.name)) <= 255 and temp.suffix == ".mp4"
        temp.write_bytes(b"x")  # the file system takes the name
        assert partial_writer(temp) == os.getpid()
    assert remove_stale_partials(out) == []  # all ours, and we are alive


_INSIDE_AN_IMPORT = """
import signal, sys, time, traceback
sys.path.insert(0, sys.argv[1])
from vsr.cli.main import stop_signals_interrupt
with stop_signals_interrupt():
    try:
        import sends_a_signal  # it signals this process while it is imported
        time.sleep(5)
        print("not stopped")
    except KeyboardInterrupt as exc:  # Stopped for SIGTERM
        where = "".join(traceback.format_tb(exc.__traceback__))
        print("inside the import" if "sends_a_signal" in where else "after the import",
              sys.modules["sends_a_signal"].done if "sends_a_signal" in sys.modules else None)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_inside_an_import_stops_the_run_after_it(tmp_path: Path, sig) -> None:
    """A stop raised inside an import can be lost: torch's C code imports numpy and clears the
    error numpy's import raises, so SIGTERM or Ctrl-C during `vsr upscale`'s start-up was
    ignored (the run went on, exit 0) or broke numpy ('cannot load module more than once').
    A signal that lands in an import is now sent again until it lands outside one."""
    (tmp_path / "sends_a_signal.py").write_text(
        f"import os, time\nos.kill(os.getpid(), {int(sig)})\ntime.sleep(0.2)\ndone = True\n")
    run = subprocess.run([sys.executable, "-c", _INSIDE_AN_IMPORT, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "after the import True", (run.stdout, run.stderr)


_TAKING_LOCKS = """
import logging, os, queue, random, signal, sys, threading, time
from vsr.cli.main import stop_signals_interrupt

q, event = queue.Queue(maxsize=2), threading.Event()
handler = logging.Handler()  # handle() takes its lock; emit() does nothing here
handler.emit = lambda record: None
log = logging.getLogger("locks")
log.addHandler(handler)
log.propagate = False
done = threading.Event()

def send():
    while not done.is_set():
        time.sleep(random.random() * 0.002)
        os.kill(os.getpid(), signal.SIGINT)

def held():
    return q.mutex.locked() or event._cond._lock.locked() or handler.lock._is_owned()

interrupts = leaks = 0
with stop_signals_interrupt():
    threading.Thread(target=send, daemon=True).start()
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        try:
            while True:
                q.put(1, timeout=0.1)
                q.get(timeout=0.1)
                event.set()
                event.wait(0)
                event.clear()
                log.warning("x")
        except KeyboardInterrupt:
            interrupts += 1
            if held():
                leaks += 1
                break  # a queue left locked blocks the next put for good
        with q.mutex:
            q.queue.clear()
    done.set()
    end = time.monotonic() + 0.5  # signals sent again after a lock was taken
    while time.monotonic() < end:
        try:
            time.sleep(0.01)
        except KeyboardInterrupt:
            pass
print(interrupts, leaks)
"""


def test_ctrl_c_never_leaves_a_lock_held(tmp_path: Path) -> None:
    """A KeyboardInterrupt raised in the standard library's Condition.__enter__ (a queue's
    put or get, an Event) or a logging handler's acquire, just after the lock was taken,
    escapes before the caller's `with`: the lock stays held for good. The pipeline's main
    thread hands every frame through such queues, so a Ctrl-C landing there would leave the
    decode or encode thread blocked (a stop that waited 30 s for it). Signals that land
    there are sent again after it; thousands of Ctrl-Cs leave no lock held."""
    run = subprocess.run([sys.executable, "-c", _TAKING_LOCKS, "2"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    interrupts, leaks = map(int, run.stdout.split())
    assert interrupts > 100 and leaks == 0, (interrupts, leaks)


_PROBE_COMMAND = """
import os, signal, time
import click
from vsr.errors import CheckpointError

@click.command()
def probe():
    try:  # as safetensors' native loader does: the stop comes out as its own error
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except KeyboardInterrupt:
        raise CheckpointError("could not deserialize header") from None
"""

_RUN_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import vsr.cli.main as main_module
main_module.COMMANDS["probe"] = "probe_cmd:probe"
main_module.STOPPABLE = main_module.STOPPABLE | {"probe"}
sys.argv = ["vsr", "probe"]
main_module.main()
"""


def test_a_stop_that_native_code_turns_into_its_error_is_reported_as_the_stop(
        tmp_path: Path) -> None:
    """SIGTERM during `vsr export`'s checkpoint load came out as 'Error: ...: unreadable
    checkpoint (could not deserialize ...)', exit 1: an error after a stop is reported
    as the stop, with its message."""
    (tmp_path / "probe_cmd.py").write_text(_PROBE_COMMAND)
    run = subprocess.run([sys.executable, "-c", _RUN_PROBE, str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 143, run.stderr
    assert run.stderr.strip() == ("Error: interrupted; could not deserialize header "
                                  "(SIGTERM)"), run.stderr


_IMPORTING_COMMAND = """
import sys, time, traceback
import click

@click.command()
def probe():
    try:
        import sends_a_signal  # it sends Ctrl-C to this process while it is imported
        time.sleep(5)
        print("not stopped")
    except KeyboardInterrupt as exc:
        where = "".join(traceback.format_tb(exc.__traceback__))
        print("inside the import" if "sends_a_signal" in where else "after the import")
        raise
"""


def test_ctrl_c_inside_an_import_of_any_command_stops_it_after_the_import(tmp_path: Path):
    """The import-safe handling covered the stoppable commands only: Ctrl-C during the
    start-up of `vsr train`, `vsr eval` or `vsr models` (torch's import) could be lost. Every
    command now takes Ctrl-C outside imports; SIGTERM keeps its default for those commands."""
    (tmp_path / "probe_cmd.py").write_text(_IMPORTING_COMMAND)
    (tmp_path / "sends_a_signal.py").write_text(
        f"import os, time\nos.kill(os.getpid(), {int(signal.SIGINT)})\ntime.sleep(0.2)\n")
    run = subprocess.run([sys.executable, "-c", _RUN_PROBE.replace(
        'main_module.STOPPABLE = main_module.STOPPABLE | {"probe"}\n', ""), str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout.strip(), run.stderr.strip().splitlines()[-1]) == (
        130, "after the import", "Error: interrupted"), run.stderr


def _stop_in(monkeypatch, owner, name: str) -> None:
    """``owner.name`` raises KeyboardInterrupt the first time it is called (a stop landing
    just there), then works as before."""
    real = getattr(owner, name)
    calls = []

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, stop)


@pytest.mark.parametrize("kind", ["pyav", "ffmpeg"])
def test_a_stop_as_a_sink_finishes_leaves_nothing(clip, tmp_path, monkeypatch, kind):
    """A stop while a sink finished its file: the PyAV sink left its partial when the stop
    came just before the move into place; the ffmpeg sink, stopped while ffmpeg finished
    (seconds for a slow codec), left ffmpeg running on, to write its partial after the
    run had ended."""
    import numpy as np

    from vsr.io import ffmpeg_sink, sink
    from vsr.io.source import PyAVSource

    if kind == "ffmpeg" and not ffmpeg_sink.ffmpeg_available():
        pytest.skip("no ffmpeg program")
    src = clip("a.mkv", frames=2)
    with PyAVSource(src) as source:
        info = source.info
    out = tmp_path / "o.mkv"
    opened = (sink.PyAVSink if kind == "pyav" else ffmpeg_sink.FfmpegSink)(out, info, 128, 96)
    for i in range(12):
        opened.write(np.full((96, 128, 3), 20 * i, np.uint8), i)
    if kind == "pyav":
        _stop_in(monkeypatch, sink, "finish")
    else:
        proc = opened._proc
        _stop_in(monkeypatch, proc, "wait")  # the stop comes while ffmpeg finishes
    with pytest.raises(KeyboardInterrupt), opened:
        pass
    if kind == "ffmpeg":
        assert proc.wait(timeout=30) is not None  # an ffmpeg left running ends first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv"]


def test_a_stop_as_a_stored_file_is_moved_leaves_nothing(tmp_path, monkeypatch):
    from vsr.io import output

    _stop_in(monkeypatch, output, "finish")
    with pytest.raises(KeyboardInterrupt):
        output.store_file(tmp_path / "card.json", b"{}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["pyav", "ffmpeg"])
def test_a_sink_lost_before_its_with_removes_its_file(clip, tmp_path, kind):
    """The PyAV sink's file exists once its constructor returns: a stop landing there, before
    the caller's `with` (CI: `vsr bench --output` stopped as its output appeared), left the
    partial for good. A sink lost that way removes it (and stops its ffmpeg) when collected."""
    import gc

    from vsr.io import ffmpeg_sink, sink
    from vsr.io.source import PyAVSource

    if kind == "ffmpeg" and not ffmpeg_sink.ffmpeg_available():
        pytest.skip("no ffmpeg program")
    src = clip("a.mkv", frames=2)
    with PyAVSource(src) as source:
        info = source.info
    lost = (sink.PyAVSink if kind == "pyav" else ffmpeg_sink.FfmpegSink)(
        tmp_path / "o.mkv", info, 128, 96)
    proc = getattr(lost, "_proc", None)
    if kind == "pyav":
        assert len(_partials(tmp_path)) == 1
    del lost
    gc.collect()
    if proc is not None:
        assert proc.poll() is not None  # no ffmpeg left to write a file after the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv"]
