"""decode thread -> bounded queue -> inference (calling thread) -> bounded queue -> encode thread.

Every decoded frame reaches the sink, in order, with its own pts, or the run raises: a
failure in any stage stops the others and is re-raised in the calling thread. Ctrl-C in the
calling thread stops the workers the same way (the caller removes the partial output).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vsr.errors import PipelineError, VsrError
from vsr.io.source import Frame
from vsr.threads import Worker, start_all, stop_and_wait, where

log = logging.getLogger(__name__)

_END = object()
_POLL = 0.1
# how long a stopped run waits for its decode and encode threads, each at its next frame
STOP_TIMEOUT_S = 30.0


def eta_seconds(done: int, total: int | None, fps: float) -> float | None:
    """Seconds until ``total`` frames at ``fps``; None while the total or the rate is unknown."""
    if not total or fps <= 0:
        return None
    return max(0.0, (total - done) / fps)


@dataclass(frozen=True)
class Progress:
    """Reported to the progress callback, always from the thread that called the run."""

    frames_done: int
    frames_total: int | None
    elapsed: float

    @property
    def fps(self) -> float:
        return self.frames_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return eta_seconds(self.frames_done, self.frames_total, self.fps)


@dataclass(frozen=True)
class RunStats:
    frames_in: int
    frames_out: int
    seconds: float


class Processor(Protocol):
    def submit(self, frame: Frame) -> Iterator[tuple[Frame, np.ndarray]]: ...

    def drain(self) -> Iterator[tuple[Frame, np.ndarray]]: ...


class Writer(Protocol):
    def write(self, image: np.ndarray, pts: int, duration: int | None = None) -> None: ...


class _Stop(Exception):
    """Internal: another stage failed or the run was interrupted."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=_POLL)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            continue


def run_pipeline(frames: Iterator[Frame], processor: Processor, sink: Writer, *,
                 depth: int = 2, frames_total: int | None = None,
                 progress: Callable[[Progress], None] | None = None,
                 progress_interval: float = 0.25) -> RunStats:
    """Run the three stages concurrently until ``frames`` is exhausted.

    Raises the first stage's error (VsrError subclasses unchanged, others as PipelineError),
    KeyboardInterrupt if interrupted, PipelineError if a frame went missing.
    """
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=depth)
    q_out: queue.Queue = queue.Queue(maxsize=depth)
    counts = {"in": 0, "out": 0}

    def decode() -> None:
        for frame in frames:
            _put(q_in, frame, stop)
            counts["in"] += 1
        _put(q_in, _END, stop)

    def encode() -> None:
        while (item := _get(q_out, stop)) is not _END:
            frame, image = item
            if frame.index != counts["out"]:
                raise PipelineError(f"frame {counts['out']} expected, got {frame.index}")
            sink.write(image, frame.pts, frame.duration)
            counts["out"] += 1

    start = time.perf_counter()
    workers = [Worker("vsr-decode", decode, stop, quiet=(_Stop,)),
               Worker("vsr-encode", encode, stop, quiet=(_Stop,))]
    last_report = 0.0
    try:
        try:
            start_all(workers)
            while (frame := _get(q_in, stop)) is not _END:
                for done in processor.submit(frame):
                    _put(q_out, done, stop)
                now = time.perf_counter()
                if progress is not None and now - last_report >= progress_interval:
                    last_report = now
                    progress(Progress(counts["out"], frames_total, now - start))
            for done in processor.drain():
                _put(q_out, done, stop)
            _put(q_out, _END, stop)
            workers[1].ended.wait()  # the encoder finishes the queue; errors surface below
        except _Stop:
            pass
    finally:
        for w in stop_and_wait(workers, stop, timeout=STOP_TIMEOUT_S):
            log.error("%s did not stop within %g s (at %s)", w.name, STOP_TIMEOUT_S,
                      where(w) or "its end")
    for w in workers:
        if w.error is not None:
            if isinstance(w.error, VsrError | KeyboardInterrupt):
                raise w.error
            raise PipelineError(f"{w.name.removeprefix('vsr-')} failed: "
                                f"{type(w.error).__name__}: {w.error}") from w.error
    seconds = time.perf_counter() - start
    if counts["out"] != counts["in"]:
        raise PipelineError(f"{counts['in']} frames decoded but {counts['out']} written")
    if progress is not None:
        progress(Progress(counts["out"], frames_total, seconds))
    return RunStats(counts["in"], counts["out"], seconds)
