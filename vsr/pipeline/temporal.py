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
only (one float frame on the frames' device).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vsr.io.source import Frame
from vsr.pipeline.compute import AfterInference, max_value

__all__ = ["TOLERANCE", "Deflicker", "Deflickered"]

TOLERANCE = 8.0  # 8-bit levels of disagreement at which the previous output's weight is 1/e
_WINDOW = 3  # input pixels (a side) over which the check's difference is averaged


class Deflicker:
    """The filter's state for one stream of frames; see the module docstring.

    ``strength`` in [0, 1): the most the previous output can weigh (0: off, frames pass
    unchanged). ``scale``: the output's size over the input's.
    """

    def __init__(self, strength: float, scale: int, tolerance: float = TOLERANCE) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"strength must be in [0, 1), got {strength}")
        self.strength = strength
        self.scale = scale
        self.tolerance = tolerance
        self._acc: torch.Tensor | None = None  # (3, sH, sW) float32, 0..255 scale

    @torch.inference_mode()
    def __call__(self, lr: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        """Filter one upscaled frame.

        Args:
            lr: (H, W, 3) uint8/uint16, the model's input frame.
            sr: (sH, sW, 3) of lr's dtype, the model's output for it.

        Returns:
            (sH, sW, 3) of sr's dtype and device: the frame to show.
        """
        if self.strength == 0.0:
            return sr
        unit = 255.0 / max_value(sr.dtype)  # work on the 8-bit scale whatever the depth
        cur = sr.permute(2, 0, 1).float().mul_(unit)
        acc = self._acc
        if acc is None or acc.shape != cur.shape:
            self._acc = cur
            return sr
        x = lr.to(sr.device).permute(2, 0, 1).float().mul_(unit)
        d = (F.avg_pool2d(acc[None], self.scale) - x[None]).abs_()  # (1, 3, H, W)
        d = F.avg_pool2d(d, _WINDOW, 1, _WINDOW // 2, count_include_pad=False)
        d = d.amax(dim=1, keepdim=True)  # a change of colour counts as much as one of light
        w = d.div_(self.tolerance).square_().neg_().exp_().mul_(self.strength)
        w = F.interpolate(w, scale_factor=self.scale, mode="nearest")[0]
        acc = torch.lerp(cur, acc, w)  # w * acc + (1 - w) * cur
        self._acc = acc
        out = acc.div(unit).clamp_(0, max_value(sr.dtype)).round_().to(sr.dtype)
        return out.permute(1, 2, 0).contiguous()


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
