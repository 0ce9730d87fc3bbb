"""Worker threads that a Ctrl-C in the calling thread cannot leave running behind its back.

A stop signal (Ctrl-C, or SIGTERM/SIGHUP as the CLI raises them) lands in the main thread at
any bytecode: inside ``Thread.start`` after the thread exists, between a start and the ``try``
that would stop it, or inside ``Thread.join``, which on Python 3.11 then marks the thread
finished while it still runs (CPython gh-90882). A worker left running that way decodes from a
container the caller has already closed, and the process dies with SIGSEGV. So a
:class:`Worker` says itself when it began and when it ended, it runs nothing once the stop is
set before it begins, and :func:`stop_and_wait` waits on those events, never on ``join``:

    stop = threading.Event()
    workers = [Worker("vsr-decode", decode, stop), ...]
    try:
        start_all(workers)
        ...
    finally:
        stop_and_wait(workers, stop, timeout=30)
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_POLL = 0.1


class Worker(threading.Thread):
    """A daemon thread that runs ``target()`` unless ``stop`` is set by the time it begins.

    An exception from ``target`` is kept in :attr:`error` and sets ``stop``, so the other
    workers and the caller see the failure; ``quiet`` exceptions end the worker without one.
    ``target`` runs in a copy of the creating thread's context (its context variables: a
    batch task's warnings are collected from its workers too).
    """

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event, *,
                 quiet: tuple[type[BaseException], ...] = ()) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self._context = contextvars.copy_context()
        self._stop_event = stop
        self._quiet = quiet
        self.began = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        self.began.set()  # before the stop check: a caller that saw no start need not wait
        try:
            if not self._stop_event.is_set():
                self._context.run(self._work)
        except BaseException as exc:
            if not isinstance(exc, self._quiet):
                self.error = exc
                self._stop_event.set()
        finally:
            self.ended.set()


def start_all(workers: Iterable[Worker]) -> None:
    """Start ``workers`` in order; call it inside the ``try`` whose clean-up stops them."""
    for w in workers:
        w.start()


def stop_and_wait(workers: Iterable[Worker], stop: threading.Event,
                  timeout: float | None) -> list[Worker]:
    """Set ``stop`` and wait until every worker that began has ended, at most ``timeout``
    seconds in all (None: no limit); returns those still running. A KeyboardInterrupt during
    the wait (a second Ctrl-C) is logged and does not cut it short: it is raised after."""
    stop.set()
    deadline = None if timeout is None else time.monotonic() + timeout
    interrupted: KeyboardInterrupt | None = None
    # began is set before a worker looks at stop: one that had not begun by now runs nothing
    running = [w for w in workers if w.began.is_set()]
    while True:
        try:
            for w in running:
                while not w.ended.wait(_POLL):
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            break
        except KeyboardInterrupt as exc:
            interrupted = interrupted or exc
            log.warning("still stopping %s (each stops at its next frame)",
                        ", ".join(w.name for w in running if not w.ended.is_set()) or "workers")
    left = [w for w in running if not w.ended.is_set()]
    if interrupted is not None:
        raise interrupted
    return left


def where(worker: threading.Thread) -> str:
    """Where ``worker`` is now, as ``file:line in function``: its innermost frame outside
    Python's own library (a wait in threading.py says less than the call that waits), for a
    message about a worker that did not stop; "" once it has ended."""
    frame = sys._current_frames().get(worker.ident) if worker.ident is not None else None
    if frame is None:
        return ""
    while frame.f_back is not None and _in_stdlib(frame.f_code.co_filename):
        frame = frame.f_back
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_name}"


def _in_stdlib(filename: str) -> bool:
    """Whether ``filename`` is a module of Python's own library (installed packages, vsr
    among them when it is not an editable install, live below it too but are not)."""
    return (filename.startswith(_STDLIB)
            and not filename.startswith(_STDLIB + "site-packages" + os.sep)
            and not filename.startswith(_STDLIB + "dist-packages" + os.sep))


_STDLIB = os.path.dirname(threading.__file__) + os.sep
