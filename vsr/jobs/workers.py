"""Local workers: one thread per device (``cpu,cpu`` or ``cuda:0,cuda:1``) on one shared queue.

The workers share one :class:`vsr.engine.ModelCache`: each model loads once per device and
precision, and workers on one device compute with that copy; the pipeline inside a task has
its own decode and encode threads. The calling thread waits and reports progress. On Ctrl-C (a
KeyboardInterrupt in the calling thread) every worker stops at its next frame, its task's
partial file is removed by the sink, and the calling thread waits for all of them before it
raises Interrupted: finished segments are recorded and stay for ``--resume``.

Waiting matters: a worker still inside torch or FFmpeg when the interpreter exits is torn
down by CPython's finalizer (``pthread_exit`` unwinding through C++ frames), which ends the
process with "terminate called without an active exception" (SIGABRT). The workers are
:class:`vsr.threads.Worker`s, waited for on the events they set, never on ``Thread.join``
(see that module for why).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial

from vsr.engine import ModelCache
from vsr.errors import Interrupted
from vsr.jobs.segments import HandleCache, Task, run_task
from vsr.jobs.store import StoreError
from vsr.threads import Worker, start_all, stop_and_wait

log = logging.getLogger(__name__)

_POLL = 0.25
INTERRUPTED = "interrupted"  # run_batch says what is left, from its record


class _Cancelled(BaseException):
    """Internal: raised in a worker at its next progress report once the batch is stopping.

    A BaseException (like KeyboardInterrupt) so no ``except Exception`` on the way swallows it;
    the sink and pipeline on the way clean up as for Ctrl-C.
    """


def run_on_threads(tasks: list[Task], tracker, devices: tuple[str, ...],
                   report: Callable[[], None] | None = None) -> None:
    """Run every task on the device workers; returns when all are done or failed.

    Raises Interrupted after a KeyboardInterrupt, once every worker has stopped (a second
    Ctrl-C does not cut that wait short: a worker stops after its current frame, and leaving
    earlier would abort the process). A worker's own failure outside a task stops the others
    and is raised; so is an exception from ``report``, once every worker has stopped.
    """
    todo: queue.Queue[Task] = queue.Queue()
    for t in tasks:
        todo.put(t)
    stop = threading.Event()
    models = ModelCache()
    workers = [Worker(f"vsr-batch-{i}-{device}",
                      partial(_work, todo, tracker, device, models, stop), stop)
               for i, device in enumerate(devices[:max(1, len(tasks))])]
    try:
        start_all(workers)
        while not all(w.ended.is_set() for w in workers):
            for w in workers:
                w.ended.wait(timeout=_POLL / len(workers))
            if report is not None:
                report()
    except BaseException as exc:  # Ctrl-C, or the caller's progress callback failing
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C, raised after the wait
            stop_and_wait(workers, stop, timeout=None)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(INTERRUPTED) from exc
        raise  # with every worker stopped: none writes on into the closed job store
    for w in workers:
        if w.error is not None:
            raise w.error


def _work(todo: queue.Queue, tracker, device: str, models: ModelCache,
          stop: threading.Event) -> None:
    try:
        handles = HandleCache(device, models)
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
        except StoreError:  # the batch's record cannot be written: every worker stops
            raise
        except Exception as exc:
            tracker.task_failed(task, exc)
