"""Repeated frames are computed once: a frame identical to the one before it gets a copy of
that frame's output.

Stills, slideshows, animation drawn on twos or threes and paused screen recordings repeat
frames exactly; the model would give the same output for each (the same input), so its work
is saved, not changed. The check is one comparison of the decoded frame with the last one the
model got, negligible beside the model.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np

from vsr.io.info import Frame
from vsr.pipeline.compute import ComputeReport


class RepeatsReused:
    """A processor (:class:`vsr.pipeline.run.Processor`) around ``inner`` that hands ``inner``
    only frames that differ from the one before; a repeat comes out right after its original,
    in its place in the order, with a copy of its output. Counted in the report's
    ``reused_frames``."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._last: np.ndarray | None = None  # the last frame handed to inner
        self._last_out: np.ndarray | None = None  # its output, once out (None: in flight)
        self._repeats: collections.deque[list[Frame]] = collections.deque()  # per frame in
        # flight in inner, in order: the repeats that follow it

    @property
    def report(self) -> ComputeReport:
        return self._inner.report

    def _repeat(self, frame: Frame) -> bool:
        last, image = self._last, frame.image
        if last is None or last.shape != image.shape or last.dtype != image.dtype:
            return False
        # a sample first: a frame that differs almost always differs there, at 1/64 the cost
        return np.array_equal(last[::8, ::8], image[::8, ::8]) and np.array_equal(last, image)

    def _out(self, done: Iterator[tuple[Frame, np.ndarray]]
             ) -> Iterator[tuple[Frame, np.ndarray]]:
        for frame, image in done:
            repeats = self._repeats.popleft()
            if not self._repeats:  # the last frame handed in is out: its output is known
                self._last_out = image
            yield frame, image
            for r in repeats:
                yield r, image.copy()

    def submit(self, frame: Frame) -> Iterator[tuple[Frame, np.ndarray]]:
        if self._repeat(frame):
            self.report.reused_frames += 1
            if self._repeats:  # its original is still in flight: it follows it out
                self._repeats[-1].append(frame)
                return iter(())
            return iter([(frame, self._last_out.copy())])
        self._last, self._last_out = frame.image, None
        self._repeats.append([])
        return self._out(self._inner.submit(frame))

    def drain(self) -> Iterator[tuple[Frame, np.ndarray]]:
        return self._out(self._inner.drain())
