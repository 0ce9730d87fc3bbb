"""Carrying the input's alpha plane: the model upscales the colour, the alpha is resized.

The model is trained on RGB pictures; transparency is a mask, not a picture, and inventing
detail in it would fringe every edge. The alpha plane is resized with MATLAB's bicubic
(:func:`vsr.resize.imresize`, the kernel the model's training data was made with), clamped
and rounded: flat areas stay exactly opaque (the maximum) or transparent (0), edges stay as
soft as they were, on the same pixel grid as the model's output.
"""

from __future__ import annotations

import numpy as np
import torch

from vsr.io.info import Frame
from vsr.pipeline.compute import AfterInference
from vsr.resize import imresize

__all__ = ["AlphaCarried", "upscale_alpha"]


@torch.inference_mode()
def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """An alpha plane resized ``scale`` times.

    Args:
        alpha: (H, W) uint8 or uint16, 0 transparent .. the dtype's maximum opaque.

    Returns:
        (scale * H, scale * W) of ``alpha``'s dtype: bicubic, clamped, rounded.
    """
    top = float(np.iinfo(alpha.dtype).max)
    y = imresize(torch.from_numpy(alpha).to(torch.float32), scale).clamp_(0.0, top).round_()
    return y.numpy().astype(alpha.dtype)  # whole numbers in range: exact


class AlphaCarried(AfterInference):
    """A processor (:class:`vsr.pipeline.run.Processor`) whose finished frames carry their
    alpha plane, upscaled ``scale`` times, as a fourth channel: (sH, sW, 4) RGBA of the colour's
    dtype for a frame with ``alpha``, the colour as it came for one without. The colour is the
    inner processor's, untouched; the resize runs on the CPU in the inference thread."""

    def __init__(self, inner, scale: int) -> None:
        super().__init__(inner)
        self._scale = scale

    def finish(self, frame: Frame, image: np.ndarray) -> np.ndarray:
        if frame.alpha is None:
            return image
        h, w = image.shape[:2]
        rgba = np.empty((h, w, 4), image.dtype)
        rgba[..., :3] = image
        rgba[..., 3] = upscale_alpha(frame.alpha, self._scale)
        return rgba
