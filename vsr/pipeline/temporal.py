"""Deflicker: a motion-adaptive temporal filter on the upscaled frames, checked against the input.

A single-frame model upscales each frame on its own, so detail it invents, and the codec noise
it sharpens, change from frame to frame even where the scene stands still: the output flickers
more than a bicubic upscale of the same frames (benchmarks/VIDEO_EVAL.md). The filter keeps a
running output ``A`` and, per output pixel, blends the new upscaled frame ``S_t`` into it:

    A_t = w * A_{t-1} + (1 - w) * S_t,    w = strength * exp(-(d / tolerance)^2)

``d`` is the dual-regression check of the paper turned to time: ``A_{t-1}`` downscaled (box
filter, to the input's size) against the new input frame, as the mean absolute difference in
8-bit levels over a 3x3 window of input pixels, of the colour channel that differs most. Where
the previous output still explains the new input (a static scene, codec noise below
``tolerance``), the output is averaged over time; where it does not (motion, a cut, a fade)
``w`` falls to zero and the new frame passes as the model made it, so moving content does not
ghost. The first frame, and the first after a change of frame size, pass unchanged; so does a
frame after a reconnect of a live source, unless the previous output still explains it.

It is meant for compressed input, whose codec noise hides slow, fine changes anyway; on clean
input it also averages real sub-``tolerance`` motion and costs detail (benchmarks/VIDEO_EVAL.md,
"Deflicker").

Frames must arrive in display order, one stream at a time; the state is the running output
and two scratch frames (float, on the frames' device).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vsr.errors import PipelineError
from vsr.io.source import Frame
from vsr.options import check_deflicker
from vsr.pipeline.compute import AfterInference, max_value

__all__ = ["TOLERANCE", "Deflicker", "Deflickered"]

TOLERANCE = 8.0  # 8-bit levels of disagreement at which the previous output's weight is 1/e
_WINDOW = 3  # input pixels (a side) over which the check's difference is averaged


class Deflicker:
    """The filter's state for one stream of frames; see the module docstring.

    ``strength`` in [0, 1): the most the previous output can weigh (0: off, frames pass
    unchanged; else ConfigError). ``scale``: the output's size over the input's.
    """

    def __init__(self, strength: float, scale: int, tolerance: float = TOLERANCE) -> None:
        check_deflicker(strength)
        self.strength = strength
        self.scale = scale
        self.tolerance = tolerance
        self._acc: torch.Tensor | None = None  # (sH, sW, 3) float32, 0..255 scale
        # the buffers of the frame before: reused, so a frame allocates nothing full-size but
        # its output (the host took ~300 ms per 1440p frame, half of it in allocation and
        # transposes; benchmarks/VIDEO_EVAL.md, "Deflicker")
        self._spare: torch.Tensor | None = None
        self._rounded: torch.Tensor | None = None

    @torch.inference_mode()
    def __call__(self, lr: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        """Filter one upscaled frame.

        Args:
            lr: (H, W, 3) uint8/uint16, the model's input frame.
            sr: (sH, sW, 3) of lr's dtype, the model's output for it.

        Returns:
            (sH, sW, 3) of sr's dtype and device: the frame to show.

        Raises:
            PipelineError: ``sr`` is not ``scale`` times the size of ``lr``.
        """
        if self.strength == 0.0:
            return sr
        top = max_value(sr.dtype)
        unit = 255.0 / top  # work on the 8-bit scale whatever the depth
        h, w, s = lr.shape[0], lr.shape[1], self.scale
        if tuple(sr.shape) != (h * s, w * s, 3):
            raise PipelineError(f"output {tuple(sr.shape)} is not x{s} the input "
                                f"{tuple(lr.shape)}")
        cur, self._spare = self._spare, None
        if cur is None or cur.shape != sr.shape or cur.device != sr.device:
            cur = torch.empty(sr.shape, dtype=torch.float32, device=sr.device)
        cur.copy_(sr)
        if unit != 1.0:
            cur.mul_(unit)
        acc = self._acc
        if acc is None or acc.shape != cur.shape:
            self._acc, self._rounded = cur, None
            return sr
        blocks = (h, s, w, s, 3)  # output pixels grouped by the input pixel they came from
        x = lr.to(device=sr.device, dtype=torch.float32)
        if unit != 1.0:
            x.mul_(unit)
        d = _box_down(acc, h, w, s).sub_(x).abs_()  # (H, W, 3)
        d = F.avg_pool2d(d.permute(2, 0, 1)[None], _WINDOW, 1, _WINDOW // 2,
                         count_include_pad=False)
        d = d.amax(dim=1)[0]  # a change of colour counts as much as one of light
        weight = d.div_(self.tolerance).square_().neg_().exp_().mul_(self.strength)
        cur.view(blocks).lerp_(acc.view(blocks), weight.view(h, 1, w, 1, 1))  # w*acc + (1-w)*cur
        self._acc, self._spare = cur, acc
        rounded = self._rounded
        if rounded is None or rounded.shape != cur.shape:
            rounded = self._rounded = torch.empty_like(cur)
        torch.div(cur, unit, out=rounded).clamp_(0, top).round_()
        return rounded.to(sr.dtype)


def _box_down(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    """(h*s, w*s, 3) float -> (h, w, 3): the mean of each s x s block, summed by whole rows
    and then pixel pairs (contiguous adds: ~2x faster than a mean over a strided view)."""
    rows = x.view(h, s, w * s * 3)
    acc = rows[:, 0].clone()
    for i in range(1, s):
        acc.add_(rows[:, i])
    cols = acc.view(h, w, s, 3)
    out = cols[:, :, 0].clone()
    for i in range(1, s):
        out.add_(cols[:, :, i])
    return out.div_(s * s)


class Deflickered(AfterInference):
    """A processor (:class:`vsr.pipeline.run.Processor`) whose finished frames pass through
    a :class:`Deflicker`, in order, on ``device``: on the model's GPU 8-bit frames are copied
    there and back and filtered there, because the host takes ~150 ms for a 1440p frame on two
    cores (benchmarks/VIDEO_EVAL.md; the GPU's time is not measured yet); 16-bit frames are
    filtered on the host."""

    def __init__(self, inner, deflicker: Deflicker, device: torch.device | str = "cpu") -> None:
        super().__init__(inner)
        self._filter = deflicker
        self._device = torch.device(device)

    def finish(self, frame: Frame, image: np.ndarray) -> np.ndarray:
        lr, sr = torch.from_numpy(frame.image), torch.from_numpy(image)
        if self._device.type != "cpu" and sr.dtype == torch.uint8:
            lr, sr = lr.to(self._device), sr.to(self._device)
        return self._filter(lr, sr).cpu().numpy()
