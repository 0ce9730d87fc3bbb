"""Workers a stop in the calling thread cannot leave running: vsr.threads and its users.

Before these, a SIGTERM that landed just after the pipeline started its decode thread (and
before the ``try`` that stops it) left that thread decoding from a container the caller then
closed: `vsr upscale` printed its error line and died with SIGSEGV, in CI and in 12 of 30
local runs of a stop sent the moment the partial output appeared.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time

import numpy as np
import pytest

from vsr.io.source import Frame
from vsr.models import load_model
from vsr.pipeline import CpuProcessor, run_pipeline
from vsr.threads import Worker, start_all, stop_and_wait


def _alive(prefix: str = "vsr-") -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_a_worker_that_begins_after_the_stop_runs_nothing():
    stop = threading.Event()
    ran = []
    w = Worker("vsr-test-late", lambda: ran.append(1), stop)
    stop.set()
    w.start()
    assert w.ended.wait(5)
    assert w.began.is_set() and ran == [] and w.error is None
    w.join(5)  # Thread's own machinery still works (Thread has a _stop method of its own)
    assert not w.is_alive()


def test_a_failure_is_kept_and_stops_the_others_but_quiet_ones_are_not():
    stop = threading.Event()

    def fail() -> None:
        raise OSError("disk full")

    def wait_for_stop() -> None:
        assert stop.wait(5)

    failing, waiting = Worker("vsr-test-fail", fail, stop), Worker("vsr-test-wait", wait_for_stop,
                                                                     stop)
    start_all([waiting, failing])
    assert stop_and_wait([waiting, failing], stop, timeout=5) == []
    assert isinstance(failing.error, OSError) and waiting.error is None
    stop2 = threading.Event()
    quiet = Worker("vsr-test-quiet", fail, stop2, quiet=(OSError,))
    start_all([quiet])
    assert quiet.ended.wait(5)
    assert quiet.error is None and not stop2.is_set()


def test_a_second_interrupt_does_not_cut_the_wait_short():
    """A real signal in the calling thread while it waits: the wait goes on until the worker
    has ended, then the KeyboardInterrupt is raised."""
    stop = threading.Event()
    finished = threading.Event()

    def slow_to_stop() -> None:
        stop.wait()
        time.sleep(0.6)  # "its current frame"
        finished.set()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        w = Worker("vsr-test-slow", slow_to_stop, stop)
        start_all([w])
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            stop_and_wait([w], stop, timeout=None)
        assert finished.is_set() and time.monotonic() - t0 >= 0.55
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_an_interrupt_right_after_a_thread_starts_still_stops_it(monkeypatch):
    """The pipeline's window: a KeyboardInterrupt raised just as Thread.start returns (as a
    signal handler raises it) must still stop and wait for the thread that now runs."""
    returned = threading.Event()
    read_after_return: list[int] = []

    def frames():
        for i in range(2000):
            if returned.is_set():
                read_after_return.append(i)
            time.sleep(0.002)
            yield Frame(index=i, pts=i, image=np.zeros((8, 8, 3), np.uint8))

    real_start = Worker.start

    def start_then_interrupt(self):
        real_start(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Worker, "start", start_then_interrupt)

    class Sink:
        def write(self, image, pts, duration=None):
            pass

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(frames(), CpuProcessor(load_model("bicubic", scale=2)), Sink())
    returned.set()
    assert _alive() == []
    time.sleep(0.1)
    assert read_after_return == []


def test_a_worker_runs_in_the_context_of_the_thread_that_made_it():
    """A batch task collects its warnings through a context variable
    (vsr.jobs.segments.TASK_LOGGERS); its decode and encode workers must see it too."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    token = var.set("task")
    try:
        worker = Worker("w", lambda: seen.append(var.get()), threading.Event())
    finally:
        var.reset(token)
    start_all([worker])
    assert worker.ended.wait(5) and seen == ["task"]
