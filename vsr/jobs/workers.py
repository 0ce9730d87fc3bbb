"""Local workers: one thread per device (``cpu,cpu`` or ``cuda:0,cuda:1``) on one shared queue.

Each worker loads its own model handles on its device; the pipeline inside a task has its
own decode and encode threads. The calling thread waits and reports progress. On Ctrl-C (a
KeyboardInterrupt in the calling thread) every worker stops at its next frame, its task's
partial file is removed by the sink, and the calling thread waits for all of them before it
raises Interrupted: finished segments are recorded and stay for ``--resume``.

Waiting matters: a worker still inside torch or FFmpeg when the interpreter exits is torn
down by CPython's finalizer (``pthread_exit`` unwinding through C++ frames), which ends the
process with "terminate called without an active exception" (SIGABRT). The wait is on an
event each worker sets as it ends, not on ``Thread.join``/``is_alive``: on Python 3.11 a
KeyboardInterrupt that lands inside ``join`` marks the thread stopped while it still runs
(CPython gh-90882), after which both report it finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from vsr.errors import Interrupted
from vsr.jobs.segments import HandleCache, Task, run_task

log = logging.getLogger(__name__)

_POLL = 0.25
INTERRUPTED = "interrupted; finished segments are kept (rerun with --resume)"


class _Cancelled(BaseException):
    """Internal: raised in a worker at its next progress report once the batch is stopping.

    A BaseException (like KeyboardInterrupt) so no ``except Exception`` on the way swallows it;
    the sink and pipeline on the way clean up as for Ctrl-C.
    """


def run_on_threads(tasks: list[Task], tracker, devices: tuple[str, ...],
                   report: Callable[[], None] | None = None) -> None:
    """Run every task on the device workers; returns when all are done or failed.

    Raises Interrupted after a KeyboardInterrupt, once every worker has stopped.
    """
    todo: queue.Queue[Task] = queue.Queue()
    for t in tasks:
        todo.put(t)
    stop = threading.Event()
    ended: list[threading.Event] = []
    try:
        for i, device in enumerate(devices[:max(1, len(tasks))]):
            end = threading.Event()
            worker = threading.Thread(target=_worker, args=(todo, tracker, device, stop, end),
                                      name=f"vsr-batch-{i}-{device}", daemon=True)
            try:
                worker.start()
            finally:  # a Ctrl-C right after start must still wait for this one
                if worker.ident is not None:
                    ended.append(end)
        while not all(e.is_set() for e in ended):
            for e in ended:
                e.wait(timeout=_POLL / len(ended))
            if report is not None:
                report()
    except KeyboardInterrupt as exc:
        stop.set()
        _wait_all(ended)
        raise Interrupted(INTERRUPTED) from exc


def _wait_all(ended: list[threading.Event]) -> None:
    """Wait until every started worker has ended; a second Ctrl-C does not cut the wait short
    (a worker stops after its current frame, and leaving earlier would abort the process)."""
    while True:
        try:
            for e in ended:
                e.wait()
            return
        except KeyboardInterrupt:
            log.warning("still stopping the workers (each stops after its current frame)")


def _worker(todo: queue.Queue, tracker, device: str, stop: threading.Event,
            end: threading.Event) -> None:
    try:
        _work(todo, tracker, device, stop)
    finally:
        end.set()


def _work(todo: queue.Queue, tracker, device: str, stop: threading.Event) -> None:
    try:
        handles = HandleCache(device)
    except Exception as exc:  # a device that cannot be used fails the tasks it would take
        handles, error = None, exc
    while not stop.is_set():
        try:
            task = todo.get_nowait()
        except queue.Empty:
            return
        if handles is None:
            tracker.task_failed(task, error)
            continue
        if not tracker.claim(task):
            continue

        def progress(frames: int, t: Task = task) -> None:
            if stop.is_set():
                raise _Cancelled
            tracker.progress(t, frames)

        t0 = time.perf_counter()
        try:
            result = run_task(task, handles, progress)
        except _Cancelled:
            tracker.cancelled(task)
            return
        except Exception as exc:  # isolated per file: reported, the worker goes on
            if stop.is_set():  # stopped from inside (e.g. wrapped by the pipeline): not a failure
                tracker.cancelled(task)
                return
            tracker.task_failed(task, exc)
            continue
        log.info("%s: %d frames in %.2f s on %s (%s)", task.label, result.frames,
                 time.perf_counter() - t0, device, result.backend)
        try:
            tracker.finished(task, result)
        except Exception as exc:
            tracker.task_failed(task, exc)
