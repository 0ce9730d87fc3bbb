"""DRN primal network (LR -> HR, multi-scale outputs), docs/method.md, "Primal network (DRN)".

Every compressible width is a constructor argument (DownBlock inner channels, RCAB inner
channels, channels after each upsampler), so a pruned network is just another constructor
call with smaller tuples. The network works on RGB in [0, rgb_range].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _conv(cin: int, cout: int, k: int = 3, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 C->C/r -> ReLU -> 1x1 -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return x * w


class RCAB(nn.Module):
    """Residual channel attention block; `width` is the prunable inner width (trunk stays C)."""

    def __init__(self, channels: int, width: int | None = None, reduction: int = 16) -> None:
        super().__init__()
        width = channels if width is None else width
        self.conv1 = _conv(channels, width)
        self.conv2 = _conv(width, channels)
        self.ca = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ca(self.conv2(F.relu(self.conv1(x))))


class DownBlock(nn.Module):
    """conv3x3 stride 2 (cin -> width) -> LeakyReLU(0.2) -> conv3x3 (width -> cout), no bias."""

    def __init__(self, cin: int, width: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, width, stride=2, bias=False)
        self.conv2 = _conv(width, cout, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class UpStage(nn.Module):
    """B x RCAB(C) -> conv3x3 C -> 4w -> PixelShuffle(2) -> conv1x1 w -> C_out."""

    def __init__(self, channels: int, rcab_widths: Sequence[int], up_width: int, cout: int,
                 reduction: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(RCAB(channels, w, reduction) for w in rcab_widths))
        self.upconv = _conv(channels, 4 * up_width)
        self.proj = _conv(up_width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.pixel_shuffle(self.upconv(self.blocks(x)), 2))


def stage_channels(scale: int, n_feats: int) -> list[int]:
    """Trunk width C of each up stage: nf*2^phase first, then nf*2^(phase-i+1)."""
    phase = _phase(scale)
    return [n_feats * 2**phase] + [n_feats * 2 ** (phase - i + 1) for i in range(1, phase)]


def _phase(scale: int) -> int:
    phase = int(round(math.log2(scale))) if scale > 1 else 0
    if scale < 2 or 2**phase != scale:
        raise ValueError(f"DRN scale must be a power of two >= 2, got {scale}")
    return phase


class DRN(nn.Module):
    """Dual regression network, primal part.

    Input: float (N, 3, h, w), RGB in [0, rgb_range]. Output of forward: a list of phase+1
    tensors [x1 (h, w), x2, ..., xS (S*h, S*w)], each (N, 3, ., .) in the same range, not
    clamped; with ``return_all=False`` only the last (xS) tensor.
    """

    def __init__(
        self,
        *,
        scale: int = 4,
        n_feats: int = 16,
        n_blocks: int | Sequence[int] = 30,
        down_widths: Sequence[int] | None = None,
        rcab_widths: Sequence[Sequence[int]] | None = None,
        up_widths: Sequence[int] | None = None,
        reduction: int = 16,
        rgb_range: float = 1.0,
    ) -> None:
        super().__init__()
        phase = _phase(scale)
        nf = n_feats
        chans = stage_channels(scale, nf)
        blocks = [n_blocks] * phase if isinstance(n_blocks, int) else list(n_blocks)
        if len(blocks) != phase:
            raise ValueError(f"n_blocks must have one entry per stage ({phase}), got {blocks}")
        down_widths = [nf * 2**p for p in range(phase)] if down_widths is None else down_widths
        if rcab_widths is None:
            rcab_widths = [[chans[i]] * blocks[i] for i in range(phase)]
        up_widths = list(chans) if up_widths is None else up_widths
        if not (len(down_widths) == len(rcab_widths) == len(up_widths) == phase):
            raise ValueError(f"width lists must have one entry per stage ({phase})")
        if min([*down_widths, *up_widths, *(w for ws in rcab_widths for w in ws)],
               default=1) < 1:
            raise ValueError("every width must be >= 1")
        self.scale = scale
        self.phase = phase
        self.rgb_range = float(rgb_range)
        self.hparams: dict[str, Any] = {
            "scale": scale,
            "n_feats": nf,
            "n_blocks": [len(w) for w in rcab_widths],
            "down_widths": [int(w) for w in down_widths],
            "rcab_widths": [[int(w) for w in ws] for ws in rcab_widths],
            "up_widths": [int(w) for w in up_widths],
            "reduction": reduction,
            "rgb_range": self.rgb_range,
        }
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) * self.rgb_range
        self.register_buffer("rgb_mean", mean, persistent=False)
        self.head = _conv(3, nf)
        self.down = nn.ModuleList(
            DownBlock(nf * 2**p, down_widths[p], nf * 2 ** (p + 1)) for p in range(phase))
        self.up = nn.ModuleList(
            UpStage(chans[i], rcab_widths[i], up_widths[i], nf * 2 ** (phase - 1 - i), reduction)
            for i in range(phase))
        tail_in = [nf * 2**phase] + [nf * 2 ** (phase - i) for i in range(phase)]
        self.tails = nn.ModuleList(_conv(c, 3) for c in tail_in)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pre-upsample, head and down path: LR-size features and the skip copies."""
        x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = self.head(x - self.rgb_mean)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        return x, skips

    def forward(self, x: torch.Tensor, return_all: bool = True):
        x, skips = self._encode(x)
        outs = [self.tails[0](x) + self.rgb_mean] if return_all else []
        for i, stage in enumerate(self.up):
            x = torch.cat((stage(x), skips[self.phase - 1 - i]), dim=1)
            if return_all or i == self.phase - 1:
                outs.append(self.tails[i + 1](x) + self.rgb_mean)
        return outs if return_all else outs[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features entering the last tail (N, 2nf, S*h, S*w): used for distillation."""
        x, skips = self._encode(x)
        for i, stage in enumerate(self.up):
            x = torch.cat((stage(x), skips[self.phase - 1 - i]), dim=1)
        return x
