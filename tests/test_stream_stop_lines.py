"""`vsr stream`'s last lines: a failure is one `Error:` line (the totals, where frames came
in, without its reason again); a stop under `--drop none` writes every frame read, and the
frames a stop leaves are counted as `left_at_stop`, not as drops of the policy."""

from __future__ import annotations

import json
import time

import av
import pytest
from test_stream import BICUBIC, make_ts

import vsr.stream.run as stream_run
from vsr.stream import StreamConfig, run_stream
from vsr.stream.run import StreamStats


@pytest.fixture
def vsr_cli(monkeypatch, capsys):
    """``vsr_cli(*args)``: run ``vsr ARGS`` through its entry point in this process;
    returns (exit code, stdout lines, stderr lines)."""
    import vsr
    import vsr.cli.main as cli_main

    monkeypatch.setattr(vsr, "configure_runtime", lambda **_: None)

    def run(*args: str) -> tuple[int, list[str], list[str]]:
        monkeypatch.setattr(cli_main, "_startup_stop", None)
        monkeypatch.setattr("sys.argv", ["vsr", *args])
        with pytest.raises(SystemExit) as exc:
            cli_main.main()
        said = capsys.readouterr()
        return exc.value.code, said.out.splitlines(), said.err.splitlines()

    return run


def test_a_source_that_is_not_there_is_one_error_line(tmp_path, vsr_cli):
    """`vsr stream nosuch.ts o.ts` said `total: in 0 ... error: source nosuch.ts: ...` and then
    `Error: source nosuch.ts: ...`: nothing came in, so the Error line alone. --json keeps
    its final record, with the error in it."""
    src, dst = str(tmp_path / "nosuch.ts"), str(tmp_path / "o.ts")
    code, out, err = vsr_cli("stream", src, dst, *BICUBIC)
    assert code == 1 and err == [f"Error: source {src}: no such file or directory"], err
    code, out, err = vsr_cli("stream", src, dst, *BICUBIC, "--json")
    assert code == 1 and err == [f"Error: source {src}: no such file or directory"], err
    final = json.loads(out[-1])
    assert final["final"] and final["frames_in"] == 0
    assert final["error"] == f"source {src}: no such file or directory"


class _FailsAtTheEnd(stream_run.Reader):
    """A source that fails once its frames are read."""

    def run(self) -> None:
        super().run()
        self.error = f"source {self.url}: it broke"


def test_totals_after_frames_do_not_repeat_the_error(tmp_path, vsr_cli, monkeypatch):
    """Frames came in, then the source failed: the totals line stays, without its
    ` error: ...` (the Error line after it says it)."""
    src, dst = str(tmp_path / "in.ts"), str(tmp_path / "o.ts")
    make_ts(src, 10, audio=False)
    monkeypatch.setattr(stream_run, "Reader", _FailsAtTheEnd)
    code, out, err = vsr_cli("stream", src, dst, *BICUBIC, "--drop", "none")
    assert code == 1 and len(err) == 2, err
    assert err[0].startswith("total: in 10 ") and "error" not in err[0] \
        and "broke" not in err[0], err
    assert err[1] == f"Error: source {src}: it broke (the output was closed with 10 frames)"
    code, out, err = vsr_cli("stream", src, dst, *BICUBIC, "--drop", "none", "--json",
                             "--overwrite")
    assert code == 1 and len(err) == 1 and err[0].startswith("Error:"), err
    assert json.loads(out[-1])["error"] == f"source {src}: it broke"


def _stop_with_frames_waiting(tmp_path, drop: str, processor_cut: bool = False
                              ) -> tuple[StreamStats, int, str]:
    """Stream 40 frames of a file, stopped (Ctrl-C, from the stats callback) once two are
    out and the reader has had time to fill the queue. Returns the totals, the frames out at
    the stop and the output file."""
    src, dst = str(tmp_path / "in.ts"), str(tmp_path / "out.ts")
    make_ts(src, 40, audio=False)
    at_stop = []

    def stats(s: StreamStats) -> None:
        if not s.final and s.frames_out >= 2 and not at_stop:
            time.sleep(0.5)  # the reader fills the queue (none: 8 frames; oldest: all)
            at_stop.append(s.frames_out)
            raise KeyboardInterrupt

    config = StreamConfig(src=src, dst=dst, model="bicubic", scale=2, device="cpu",
                          drop=drop, max_latency_ms=100_000, stats_interval_s=0.001,
                          audio=False)
    final = run_stream(config, stats)
    return final, at_stop[0], dst


def _frames(path: str) -> list[int]:
    with av.open(path) as c:
        return [f.pts for f in c.decode(video=0)]


def test_a_stop_under_drop_none_writes_every_frame_read(tmp_path):
    """--drop none, Ctrl-C with frames waiting for the model: they were counted as dropped
    (`dropped 10` after a stop); every frame read is now computed and written first."""
    final, out_at_stop, dst = _stop_with_frames_waiting(tmp_path, "none")
    assert final.frames_in >= out_at_stop + 8 and final.frames_in < 40, final
    assert (final.frames_out, final.dropped) == (final.frames_in, 0), final
    assert final.left_at_stop == 0
    pts = _frames(dst)
    assert len(pts) == final.frames_in and pts == sorted(set(pts))


class _CutInTheModel:
    """The run's processor, whose third frame a stop cuts short in the model: taken in, its
    output never given back (the processor's bookkeeping then counts it in flight)."""

    made = 0

    def __init__(self, inner) -> None:
        self._inner, self._n = inner, 0
        type(self).made += 1
        self._cut = type(self).made == 1  # the fresh one made after the stop is not

    def submit(self, frame):
        self._n += 1
        done = self._inner.submit(frame)
        if self._cut and self._n == 3:
            time.sleep(0.5)  # the reader fills the queue meanwhile
            raise KeyboardInterrupt
        return done

    def drain(self):
        return self._inner.drain()


def test_a_stop_in_the_model_under_drop_none_writes_every_frame_read(tmp_path, monkeypatch):
    """A Ctrl-C lands in the model most of the time: the frame it cut short and those
    waiting come out too, in order, once each."""
    from vsr.engine import Prepared

    made = Prepared.processor
    monkeypatch.setattr(Prepared, "processor", lambda self, *a, **k: _CutInTheModel(
        made(self, *a, **k)))
    src, dst = str(tmp_path / "in.ts"), str(tmp_path / "out.ts")
    make_ts(src, 40, audio=False)
    final = run_stream(StreamConfig(src=src, dst=dst, model="bicubic", scale=2,
                                    device="cpu", drop="none", audio=False))
    assert 11 <= final.frames_in < 40, final
    assert (final.frames_out, final.dropped) == (final.frames_in, 0), final
    assert final.left_at_stop == 0
    pts = _frames(dst)
    assert len(pts) == final.frames_in and pts == sorted(set(pts))


def test_frames_a_stop_leaves_are_counted_apart_from_drops(tmp_path):
    """--drop oldest, Ctrl-C with frames waiting (none old enough to drop): they are left at
    the stop, counted as such (they were counted as dropped); in = out + dropped + left."""
    final, _, _ = _stop_with_frames_waiting(tmp_path, "oldest")
    assert final.dropped == 0 and final.left_at_stop > 0, final
    assert final.frames_in == final.frames_out + final.left_at_stop
    assert final.to_json()["left_at_stop"] == final.left_at_stop


def test_the_totals_line_says_what_a_stop_left(capsys):
    from vsr.cli.stream import _render

    _render(False, True)(StreamStats(
        elapsed_s=3.0, frames_in=34, frames_out=24, dropped=0, fps_in=8.9, fps_out=6.3,
        latency_ms=None, latency_max_ms=None, reconnects=0, final=True, left_at_stop=10))
    assert capsys.readouterr().err == ("total: in 34 (8.9 fps) out 24 (6.3 fps) dropped 0 "
                                       "left at stop 10 latency - reconnects 0 audio 0/0\n")
