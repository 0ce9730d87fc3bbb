"""decord as an alternative frame reader with the same interface as the PyAV source.

Stream information (and the timestamps' time base) come from a PyAV probe, so the sink and
the stream copy see the same description whichever decoder reads the frames. decord hands
out 8-bit RGB only; deeper input is read at 8 bits and alpha is not read (both logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from vsr.errors import InputError
from vsr.io.info import Frame, StreamInfo
from vsr.io.paths import file_url

log = logging.getLogger(__name__)


class DecordSource:
    """Sequential decord reading of the video stream PyAV would pick."""

    def __init__(self, path: str | os.PathLike, info: StreamInfo,
                 presented: list[int] | None = None, *, threads: int = 0) -> None:
        """``info``: the PyAV probe of ``path``; ``presented``: the times of the frames PyAV
        shows (vsr.io.source.presented_pts; None: not known, decord's own times are taken).
        ``vsr.io.source.open_source`` makes both."""
        try:
            import decord
        except ImportError as exc:  # pragma: no cover - decord is a declared dependency
            raise InputError("the decord decoder is not installed") from exc
        try:
            self._reader = decord.VideoReader(file_url(path), ctx=decord.cpu(0),
                                              num_threads=threads)
        except (decord.DECORDError, RuntimeError) as exc:
            raise InputError(f"decord cannot read {path}: {exc}") from exc
        n = len(self._reader)
        if n == 0:
            raise InputError(f"no video frames in {path}")
        if presented is not None and len(presented) != n:
            # decord ignores an MP4 edit list: the frames a trim (-ss with -c copy) keeps
            # hidden came out first, every later picture shifted against its time and audio
            raise InputError(f"decord reads {n} frames of {os.path.basename(path)} where it "
                             f"shows {len(presented)} (an edit list trims it, which decord "
                             "ignores); use --decoder pyav")
        self._presented = presented
        if info.bit_depth > 8:
            log.warning("decord reads %d-bit video as 8-bit; use --decoder pyav to keep depth",
                        info.bit_depth)
        # decord hands out RGB only: no alpha plane (vsr.engine.run_source says so)
        self.info = replace(info, frames=n, alpha=False)
        self._taken = False

    def frames(self) -> Iterator[Frame]:
        if self._taken:
            raise InputError("a source can be iterated only once")
        self._taken = True
        n = len(self._reader)
        if self._presented is not None:
            times = self._presented
        else:  # decord's times count from the stream's start: PyAV's count from the file's
            tb, start = self.info.time_base, self.info.start_pts or 0
            times = [start + int(round(float(t) / float(tb)))
                     for t in self._reader.get_frame_timestamp(np.arange(n))[:, 0]]
        for i in range(n):
            try:
                image = self._reader.next().asnumpy()
            except StopIteration:
                raise InputError(f"decord stopped after {i} of {n} frames") from None
            yield Frame(index=i, pts=times[i], image=np.ascontiguousarray(image))

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> DecordSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
