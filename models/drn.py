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

from vsr.errors import ConfigError
from vsr.limits import env_limit

RGB_MEAN = (0.4488, 0.4371, 0.4040)

# Bounds checked before a single layer is built, so hyper-parameters from an untrusted
# checkpoint cannot make the constructor allocate terabytes or build modules for minutes.
# The largest paper model (DRN-L x8) has about 10 M parameters and 40 blocks per stage.
MAX_SCALE = 16
MAX_BLOCKS = 1024  # residual blocks over all stages
DEFAULT_MAX_PARAMS = 200_000_000  # 800 MB of fp32 weights
MAX_PARAMS_ENV = "VSR_MAX_MODEL_PARAMS"


def max_params() -> int:
    """The parameter limit: ``$VSR_MAX_MODEL_PARAMS`` if set (a positive integer), else 200 M."""
    return env_limit(MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS)


def check_size(params: int, what: str) -> None:
    """Raise ConfigError if a network of ``params`` parameters is over the limit."""
    limit = max_params()
    if params > limit:
        raise ConfigError(f"{what} would have {params:,} parameters, over the limit of "
                          f"{limit:,} ({params * 4 / 2**30:.1f} GiB as fp32); set "
                          f"{MAX_PARAMS_ENV} to raise the limit if the model is meant to be "
                          "this large")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; ConfigError for bools, floats, strings, others."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, not {value!r:.40}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _int_list(name: str, value: Any, length: int, low: int) -> list[int]:
    if not _is_list(value):
        raise ConfigError(f"{name} must be a list of integers, not {value!r:.40}")
    if len(value) != length:
        raise ConfigError(f"{name} must have one entry per stage ({length}), got {len(value)}")
    return [check_int(f"{name}[{i}]", v, low) for i, v in enumerate(value)]


def _conv(cin: int, cout: int, k: int = 3, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 C->C/r -> ReLU -> 1x1 -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel gates (N, C, 1, 1) of ``x``."""
        w = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(w))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class RCAB(nn.Module):
    """Residual channel attention block; `width` is the prunable inner width (trunk stays C)."""

    def __init__(self, channels: int, width: int | None = None, reduction: int = 16) -> None:
        super().__init__()
        width = channels if width is None else width
        self.conv1 = _conv(channels, width)
        self.conv2 = _conv(width, channels)
        self.ca = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        # x + y * gates in one pass over memory: the gate multiply and residual add were 17% of
        # drn-t-x2-drc50's CPU time on a 720p frame; one addcmul takes 0.92x the time per frame
        # (torch profiler, benchmarks/ENGINE.md)
        return torch.addcmul(x, y, self.ca.weights(y))


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


def drn_params(*, scale: int, n_feats: int, down_widths: Sequence[int],
               rcab_widths: Sequence[Sequence[int]], up_widths: Sequence[int],
               reduction: int) -> int:
    """The exact parameter count of the DRN these (checked) arguments build, by arithmetic."""
    phase = _phase(scale)
    nf = n_feats
    chans = stage_channels(scale, nf)
    total = 3 * nf * 9 + nf  # head
    for p in range(phase):  # DownBlock convs have no bias
        total += nf * 2**p * down_widths[p] * 9 + down_widths[p] * nf * 2 ** (p + 1) * 9
    for i, cout in enumerate(up_out_channels(scale, nf)):
        c, w_up = chans[i], up_widths[i]
        hidden = max(1, c // reduction)
        for w in rcab_widths[i]:
            total += c * w * 9 + w + w * c * 9 + c + c * hidden + hidden + hidden * c + c
        total += c * 4 * w_up * 9 + 4 * w_up + w_up * cout + cout
    tail_in = [nf * 2**phase] + [nf * 2 ** (phase - i) for i in range(phase)]
    return total + sum(c * 3 * 9 + 3 for c in tail_in)


def stage_channels(scale: int, n_feats: int) -> list[int]:
    """Trunk width C of each up stage: nf*2^phase first, then nf*2^(phase-i+1)."""
    phase = _phase(scale)
    return [n_feats * 2**phase] + [n_feats * 2 ** (phase - i + 1) for i in range(1, phase)]


def up_out_channels(scale: int, n_feats: int) -> list[int]:
    """Output channels of each up stage's 1x1 projection: nf*2^(phase-1-i), which the skip
    of the same resolution (as wide) is concatenated to."""
    phase = _phase(scale)
    return [n_feats * 2 ** (phase - 1 - i) for i in range(phase)]


def _phase(scale: int) -> int:
    phase = int(round(math.log2(scale))) if scale > 1 else 0
    if scale < 2 or 2**phase != scale:
        raise ConfigError(f"DRN scale must be a power of two >= 2, got {scale}")
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
        # Every argument is checked, and the size computed, before any layer exists.
        phase = _phase(check_int("scale", scale, 2, MAX_SCALE))
        nf = check_int("n_feats", n_feats, 1)
        reduction = check_int("reduction", reduction, 1)
        if isinstance(rgb_range, bool) or not isinstance(rgb_range, (int, float)) \
                or not 0 < rgb_range < math.inf:
            raise ConfigError(f"rgb_range must be a positive number, not {rgb_range!r:.40}")
        chans = stage_channels(scale, nf)
        if isinstance(n_blocks, int) and not isinstance(n_blocks, bool):
            blocks = [check_int("n_blocks", n_blocks, 0)] * phase
        else:
            blocks = _int_list("n_blocks", n_blocks, phase, 0)
        down_widths = ([nf * 2**p for p in range(phase)] if down_widths is None
                       else _int_list("down_widths", down_widths, phase, 1))
        if rcab_widths is None:
            if sum(blocks) > MAX_BLOCKS:
                raise ConfigError(f"{sum(blocks)} residual blocks, over the limit of "
                                  f"{MAX_BLOCKS}")
            rcab_widths = [[chans[i]] * blocks[i] for i in range(phase)]
        else:
            if not _is_list(rcab_widths) or len(rcab_widths) != phase \
                    or not all(_is_list(ws) for ws in rcab_widths):
                raise ConfigError(f"rcab_widths must be one list of integers per stage ({phase})")
            if sum(len(ws) for ws in rcab_widths) > MAX_BLOCKS:
                raise ConfigError(f"{sum(len(ws) for ws in rcab_widths)} residual blocks, over "
                                  f"the limit of {MAX_BLOCKS}")
            rcab_widths = [_int_list(f"rcab_widths[{i}]", ws, len(ws), 1)
                           for i, ws in enumerate(rcab_widths)]
        up_widths = (list(chans) if up_widths is None
                     else _int_list("up_widths", up_widths, phase, 1))
        check_size(drn_params(scale=scale, n_feats=nf, down_widths=down_widths,
                              rcab_widths=rcab_widths, up_widths=up_widths,
                              reduction=reduction), f"DRN x{scale} with n_feats {nf}")
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
            UpStage(chans[i], rcab_widths[i], up_widths[i], cout, reduction)
            for i, cout in enumerate(up_out_channels(scale, nf)))
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
            up, skip = stage(x), skips[self.phase - 1 - i]
            if not return_all and i == self.phase - 1:
                return self._last_tail(up, skip)
            x = torch.cat((up, skip), dim=1)
            if return_all:
                outs.append(self.tails[i + 1](x) + self.rgb_mean)
        return outs

    def _last_tail(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The last tail on cat(up, skip) without building the concatenation: a convolution is
        linear in its input channels, so it is the sum of two convolutions over the halves of
        its weight, with the RGB mean folded into the bias (the full-resolution copy of the cat
        was 5.5% of drn-t-x2-drc50's CPU time; without it 0.92x the time per frame,
        benchmarks/ENGINE.md)."""
        tail = self.tails[-1]
        c = up.shape[1]
        bias = tail.bias + self.rgb_mean.view(-1)
        y = F.conv2d(up, tail.weight[:, :c], bias, padding=tail.padding)
        return y + F.conv2d(skip, tail.weight[:, c:], None, padding=tail.padding)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features entering the last tail (N, 2nf, S*h, S*w): used for distillation."""
        x, skips = self._encode(x)
        for i, stage in enumerate(self.up):
            x = torch.cat((stage(x), skips[self.phase - 1 - i]), dim=1)
        return x
