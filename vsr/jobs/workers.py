"""Local workers: one thread per device (``cpu,cpu`` or ``cuda:0,cuda:1``) on one shared queue.

Each worker loads its own model handles on its device; the pipeline inside a task has its
own decode and encode threads. The calling thread waits, reports progress, and turns Ctrl-C
into Interrupted (finished segments are recorded and stay for ``--resume``).
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


def run_on_threads(tasks: list[Task], tracker, devices: tuple[str, ...],
                   report: Callable[[], None] | None = None) -> None:
    """Run every task on the device workers; returns when all are done or failed."""
    todo: queue.Queue[Task] = queue.Queue()
    for t in tasks:
        todo.put(t)
    stop = threading.Event()
    workers = [threading.Thread(target=_work, args=(todo, tracker, device, stop),
                                name=f"vsr-batch-{i}-{device}", daemon=True)
               for i, device in enumerate(devices[:max(1, len(tasks))])]
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(timeout=_POLL / len(workers))
            if report is not None:
                report()
    except KeyboardInterrupt as exc:
        stop.set()
        raise Interrupted("interrupted; finished segments are kept (rerun with --resume)") \
            from exc


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
        t0 = time.perf_counter()
        try:
            result = run_task(task, handles, lambda n, t=task: tracker.progress(t, n))
        except Exception as exc:  # isolated per file: reported, the worker goes on
            tracker.task_failed(task, exc)
            continue
        log.info("%s: %d frames in %.2f s on %s (%s)", task.label, result.frames,
                 time.perf_counter() - t0, device, result.backend)
        try:
            tracker.finished(task, result)
        except Exception as exc:
            tracker.task_failed(task, exc)
