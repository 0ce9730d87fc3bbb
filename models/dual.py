"""Dual network D (HR -> LR), docs/method.md, "Dual networks": one learned x2 downsampler per
stage."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.drn import MAX_SCALE, check_int, check_size


class DualDownsampler(nn.Module):
    """conv3x3 stride 2 (3 -> width, no bias) -> LeakyReLU(0.2) -> conv3x3 (width -> 3, no bias).

    Maps (N, 3, 2h, 2w) to (N, 3, h, w) in the same value range (a learned downsampling kernel).
    """

    def __init__(self, *, width: int = 16) -> None:
        super().__init__()
        check_size(54 * check_int("width", width, 1), f"a dual downsampler {width} wide")
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(width, 3, 3, padding=1, bias=False)
        self.hparams: dict[str, Any] = {"width": width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class DualNetworks(nn.ModuleList):
    """The dual models of one primal network: ``duals[i]`` maps out_{i+1} to out_i's scale."""

    def __init__(self, *, phase: int, width: int = 16) -> None:
        # checked before any layer is built: the arguments may come from a checkpoint
        check_int("phase", phase, 1, MAX_SCALE.bit_length() - 1)
        check_size(54 * phase * check_int("width", width, 1), f"{phase} dual downsamplers")
        super().__init__(DualDownsampler(width=width) for _ in range(phase))
        self.hparams: dict[str, Any] = {"phase": phase, "width": width}
