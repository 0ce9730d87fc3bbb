"""The inference stage: uint8/uint16 RGB frames in, upscaled RGB frames out.

A processor takes frames with ``submit`` and yields finished ``(frame, image)`` pairs in
submission order (now or on a later call); ``drain`` yields the rest. Precision guard: a
reduced-precision result that is non-finite, or black where the input is not, is recomputed
in fp32 and the run stays in fp32 to its end (logged, and counted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from vsr.errors import PipelineError
from vsr.io.source import Frame
from vsr.tiling import tiled_infer

log = logging.getLogger(__name__)

# An output whose brightest value is below this while the input's is above _LIT is "black".
_BLACK = 1.0 / 512
_LIT = 0.05


@dataclass
class ComputeReport:
    """What the inference stage had to do beyond the plan (read after the run)."""

    fallback_frames: int = 0  # frames recomputed in fp32 by the guard
    fell_back_to_fp32: bool = False
    tile: int | None = None  # tile size in use at the end (set by --tile or by OOM)
    oom_retries: int = 0
    reused_frames: int = 0  # repeats of the frame before, given its output (pipeline.repeats)
    notes: list[str] = field(default_factory=list)


def max_value(dtype: np.dtype | torch.dtype) -> float:
    return 255.0 if dtype in (np.uint8, torch.uint8) else 65535.0


def to_model_input(img: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(H, W, 3) uint8/uint16 on any device -> (1, 3, H, W) ``dtype`` in [0, 1]."""
    return img.permute(2, 0, 1).unsqueeze(0).to(dtype).div_(max_value(img.dtype))


def to_image(y: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(1, 3, H, W) float -> (H, W, 3) ``out_dtype``: clamped, scaled, rounded, packed."""
    y = y[0].float().clamp_(0, 1).mul_(max_value(out_dtype)).round_()
    return y.to(out_dtype).permute(1, 2, 0).contiguous()


def guard_flags(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Two floats on y's device: [all finite, is black while input is lit]; no host sync."""
    lo, hi = torch.aminmax(y)  # one pass; NaN and +-inf propagate into lo/hi
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    black = (hi < _BLACK) & (x.amax() > _LIT)
    return torch.stack([finite, black]).float()


def flags_bad(flags: torch.Tensor | np.ndarray) -> bool:
    f = np.asarray(flags)
    return bool(f[0] < 0.5 or f[1] > 0.5)


class Forward:
    """handle.infer with optional tiling; shared by the CPU and CUDA processors."""

    def __init__(self, handle, tile: int | None, overlap: int, report: ComputeReport,
                 runner=None) -> None:
        self.handle = handle
        self.tile = tile
        self.overlap = overlap
        self.report = report
        # a vsr.backends Runner: handle.infer through a compiled engine for one input shape
        # and dtype, eager for any other (so tiles and the fp32 fallback stay correct)
        self.infer = runner if runner is not None else handle.infer
        report.tile = tile

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.tile:
            return tiled_infer(self.handle.infer, x, self.handle.scale, self.tile, self.overlap)
        return self.infer(x)

    def fall_back(self, index: int, why: str) -> None:
        """Switch to fp32 after a bad reduced-precision frame: ``handle.to(dtype=float32)``
        (a cached handle that runs share gives the run an fp32 one instead of converting
        itself: vsr.engine._RunHandle), and eager inference, as a backend built for the
        reduced precision would run fp32 frames."""
        r = self.report
        r.fallback_frames += 1
        if self.handle.dtype != torch.float32:
            msg = (f"frame {index}: {why} in {str(self.handle.dtype).removeprefix('torch.')}; "
                   "recomputing in fp32 and staying in fp32")
            log.warning(msg)
            r.notes.append(msg)
            r.fell_back_to_fp32 = True
            self.handle.to(dtype=torch.float32)
            self.infer = self.handle.infer


class CpuProcessor:
    """Synchronous inference (the threads around it overlap I/O): one frame at a time, or
    ``batch`` frames stacked into one (N, 3, H, W) call. Frames of another size than the
    pending ones start a new batch; a short last batch is padded with its last frame where a
    fixed-shape backend built for the batch runs it (only there). Also the batched path on
    CUDA."""

    def __init__(self, handle, *, tile: int | None = None, overlap: int = 16,
                 guard: bool = True, runner=None, batch: int = 1) -> None:
        self.report = ComputeReport()
        self._fwd = Forward(handle, tile, overlap, self.report, runner)
        self._guard = guard
        self._batch = batch
        self._pending: list[Frame] = []

    def _run(self, imgs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._fwd.handle
        x = torch.cat([to_model_input(i.to(h.device), h.dtype) for i in imgs])
        return x, self._fwd(x)

    def submit(self, frame: Frame) -> Iterator[tuple[Frame, np.ndarray]]:
        if self._batch == 1:
            yield frame, self._process([frame])[0]
            return
        if self._pending and self._pending[0].image.shape != frame.image.shape:
            yield from self.drain()
        self._pending.append(frame)
        if len(self._pending) == self._batch:
            yield from self.drain()

    def _fixed_shape_applies(self, img: torch.Tensor) -> bool:
        """Whether a short batch of frames like ``img`` (H, W, 3) is worth padding: only a
        backend built for the full batch of this size runs it (else it runs eagerly, and
        padding 2 frames to --batch 16 computed 16)."""
        runner = self._fwd.infer
        shape = getattr(runner, "shape", None)
        return (getattr(runner, "fn", None) is not None and not self._fwd.tile
                and shape is not None and tuple(shape[-2:]) == tuple(img.shape[:2])
                and getattr(runner, "dtype", None) == self._fwd.handle.dtype)

    def _bad(self, x: torch.Tensor, y: torch.Tensor, n: int) -> bool:
        return any(flags_bad(guard_flags(x[i:i + 1], y[i:i + 1])) for i in range(n))

    @torch.inference_mode()
    def _process(self, frames: list[Frame]) -> list[np.ndarray]:
        imgs = [torch.from_numpy(f.image) for f in frames]
        if self._fixed_shape_applies(imgs[0]):
            imgs += imgs[-1:] * (self._batch - len(imgs))
        x, y = self._run(imgs)
        if self._guard and self._bad(x, y, len(frames)):
            if self._fwd.handle.dtype == torch.float32:
                raise PipelineError(f"frame {frames[0].index}: the model produced non-finite "
                                    "or black output in fp32")
            self._fwd.fall_back(frames[0].index, "non-finite or black output")
            x, y = self._run(imgs)
            if self._bad(x, y, len(frames)):  # as the CUDA stage: never written as it came
                raise PipelineError(f"frame {frames[0].index}: non-finite or black output "
                                    "even in fp32")
        return [to_image(y[i:i + 1], imgs[i].dtype).cpu().numpy() for i in range(len(frames))]

    def drain(self) -> Iterator[tuple[Frame, np.ndarray]]:
        frames, self._pending = self._pending, []
        if not frames:
            return iter(())
        return zip(frames, self._process(frames), strict=True)


class AfterInference:
    """A processor whose inner processor's finished frames pass, in order, through
    :meth:`finish`: a stage after inference (the deflicker filter, the alpha plane)."""

    def __init__(self, inner) -> None:
        self._inner = inner

    @property
    def report(self) -> ComputeReport:
        return self._inner.report

    def finish(self, frame: Frame, image: np.ndarray) -> np.ndarray:
        """The image to hand on for ``frame``, whose inference gave ``image``."""
        raise NotImplementedError

    def _each(self, done: Iterator[tuple[Frame, np.ndarray]]
              ) -> Iterator[tuple[Frame, np.ndarray]]:
        for frame, image in done:
            yield frame, self.finish(frame, image)

    def submit(self, frame: Frame) -> Iterator[tuple[Frame, np.ndarray]]:
        return self._each(self._inner.submit(frame))

    def drain(self) -> Iterator[tuple[Frame, np.ndarray]]:
        return self._each(self._inner.drain())
