"""CUDA inference stage: pinned host buffers, upload / compute / download streams, events.

Two slots (double buffering): while slot A's frame computes, slot B's frame uploads or its
result downloads; the host waits only on the event of the oldest frame when it needs that
slot again, never on a device-wide synchronize. Working tensors live in the slots or are
locals of one launch, so a second frame in flight cannot overwrite them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vsr.errors import PipelineError
from vsr.io.source import Frame
from vsr.options import MIN_TILE
from vsr.pipeline.compute import (
    ComputeReport,
    Forward,
    flags_bad,
    guard_flags,
    to_image,
    to_model_input,
)

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    host_in: torch.Tensor
    dev_in: torch.Tensor
    dev_out: torch.Tensor
    host_out: torch.Tensor
    dev_flags: torch.Tensor
    host_flags: torch.Tensor
    uploaded: torch.cuda.Event
    computed: torch.cuda.Event
    downloaded: torch.cuda.Event
    frame: Frame | None = None


class CudaProcessor:
    """Double-buffered inference on ``handle.device`` (a CUDA device)."""

    def __init__(self, handle, *, tile: int | None = None, overlap: int = 16,
                 guard: bool = True, depth: int = 2, runner=None) -> None:
        self.report = ComputeReport()
        self._fwd = Forward(handle, tile, overlap, self.report, runner)
        self._guard = guard
        self._dev = handle.device
        self._up = torch.cuda.Stream(self._dev)
        self._compute = torch.cuda.Stream(self._dev)
        self._down = torch.cuda.Stream(self._dev)
        self._depth = depth
        self._slots: list[_Slot] = []
        self._shape: tuple | None = None
        self._inflight: deque[_Slot] = deque()
        self._count = 0

    def _alloc(self, image: np.ndarray) -> None:
        h, w, _ = image.shape
        s = self._fwd.handle.scale
        dt = torch.from_numpy(image[:1, :1]).dtype
        self._slots = [
            _Slot(
                host_in=torch.empty((h, w, 3), dtype=dt, pin_memory=True),
                dev_in=torch.empty((h, w, 3), dtype=dt, device=self._dev),
                dev_out=torch.empty((h * s, w * s, 3), dtype=dt, device=self._dev),
                host_out=torch.empty((h * s, w * s, 3), dtype=dt, pin_memory=True),
                dev_flags=torch.zeros(2, device=self._dev),
                host_flags=torch.zeros(2, pin_memory=True),
                uploaded=torch.cuda.Event(), computed=torch.cuda.Event(),
                downloaded=torch.cuda.Event(),
            )
            for _ in range(self._depth)
        ]
        self._shape = image.shape

    def submit(self, frame: Frame) -> Iterator[tuple[Frame, np.ndarray]]:
        if self._shape != frame.image.shape:
            yield from self.drain()  # a size change: finish what is in flight, then realloc
            self._alloc(frame.image)
        if len(self._inflight) == self._depth:
            yield self._finish(self._inflight.popleft())
        slot = self._slots[self._count % self._depth]
        self._count += 1
        slot.frame = frame
        slot.host_in.numpy()[...] = frame.image  # slot is free: its last download was awaited
        with torch.cuda.stream(self._up):
            slot.dev_in.copy_(slot.host_in, non_blocking=True)
            slot.uploaded.record(self._up)
        self._launch(slot)
        self._inflight.append(slot)

    @torch.inference_mode()
    def _launch(self, slot: _Slot) -> None:
        """Queue compute and download for the frame in ``slot``; OOM switches to tiles."""
        while True:
            try:
                with torch.cuda.stream(self._compute):
                    self._compute.wait_event(slot.uploaded)
                    x = to_model_input(slot.dev_in, self._fwd.handle.dtype)
                    y = self._fwd(x)
                    slot.dev_out.copy_(to_image(y, slot.dev_out.dtype))
                    if self._guard:
                        slot.dev_flags.copy_(guard_flags(x, y))
                    slot.computed.record(self._compute)
                break
            except torch.cuda.OutOfMemoryError:
                self._shrink_tile(slot)
        with torch.cuda.stream(self._down):
            self._down.wait_event(slot.computed)
            slot.host_out.copy_(slot.dev_out, non_blocking=True)
            slot.host_flags.copy_(slot.dev_flags, non_blocking=True)
            slot.downloaded.record(self._down)

    def _shrink_tile(self, slot: _Slot) -> None:
        self._compute.synchronize()  # the failed launch's tensors must be idle before reuse
        torch.cuda.empty_cache()
        h, w = slot.dev_in.shape[:2]
        cur = self._fwd.tile or max(h, w)
        new = max(MIN_TILE, (cur // 2) // 16 * 16)
        if self._fwd.tile is not None and new >= self._fwd.tile:
            raise PipelineError(f"out of GPU memory even with {self._fwd.tile} px tiles")
        self._fwd.tile = new
        self.report.tile = new
        self.report.oom_retries += 1
        msg = f"out of GPU memory at frame {slot.frame.index}; retrying with {new} px tiles"
        log.warning(msg)
        self.report.notes.append(msg)

    def _finish(self, slot: _Slot) -> tuple[Frame, np.ndarray]:
        slot.downloaded.synchronize()
        if self._guard and flags_bad(slot.host_flags.numpy()):
            if self._fwd.handle.dtype == torch.float32 and not self.report.fell_back_to_fp32:
                raise PipelineError(f"frame {slot.frame.index}: the model produced non-finite "
                                    "or black output in fp32")
            if self._fwd.handle.dtype != torch.float32:
                self._compute.synchronize()  # in-flight kernels still read the old weights
                self._fwd.fall_back(slot.frame.index, "non-finite or black output")
            else:
                self.report.fallback_frames += 1
            self._launch(slot)  # dev_in still holds this frame: the slot was not reused yet
            slot.downloaded.synchronize()
            if flags_bad(slot.host_flags.numpy()):
                raise PipelineError(f"frame {slot.frame.index}: non-finite or black output "
                                    "even in fp32")
        frame, slot.frame = slot.frame, None
        return frame, slot.host_out.numpy().copy()

    def drain(self) -> Iterator[tuple[Frame, np.ndarray]]:
        while self._inflight:
            yield self._finish(self._inflight.popleft())
