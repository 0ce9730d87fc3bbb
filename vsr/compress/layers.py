"""The compressible layers of a DRN (docs/method.md, "Dual regression compression (DRC)") and
the widths that describe them.

A compressible layer is a group of channels produced by one convolution and consumed by the
next: the inner channels of each DownBlock (conv1 -> conv2), of each RCAB (conv1 -> conv2) and
the channels after each Upsampler (upconv -> PixelShuffle -> 1x1 proj). Pruning a layer keeps a
subset of those channels; the trunk, stem, tails and channel attention never change. Layers are
listed from input to output, which is also the order pruning walks them in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vsr.errors import ConfigError
from vsr.models.drn import DRN

SEARCH_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # fractions s of the capped width c*(1-r)
_MULTIPLE = 4


@dataclass(frozen=True)
class PrunableLayer:
    """One compressible channel group: ``producer`` makes it, ``consumer`` reads it.

    ``group`` is how many producer output channels make one consumer input channel (4 after
    an x2 PixelShuffle, else 1). ``kind`` is "down", "rcab" or "up"; ``stage``/``block`` locate
    it in the DRN constructor arguments (``block`` is None except for RCABs).
    """

    name: str
    kind: str
    stage: int
    block: int | None
    producer: nn.Conv2d
    consumer: nn.Conv2d
    group: int

    @property
    def width(self) -> int:
        return self.consumer.in_channels


def prunable_layers(model: DRN) -> list[PrunableLayer]:
    """The compressible layers of ``model`` in input-to-output order (64 at x4 DRN-S)."""
    if not isinstance(model, DRN):
        raise ConfigError(f"compression supports DRN networks, got {type(model).__name__}")
    layers = []
    for p, down in enumerate(model.down):
        layers.append(PrunableLayer(f"down.{p}", "down", p, None, down.conv1, down.conv2, 1))
    for i, stage in enumerate(model.up):
        for b, rcab in enumerate(stage.blocks):
            layers.append(PrunableLayer(f"up.{i}.blocks.{b}", "rcab", i, b, rcab.conv1,
                                        rcab.conv2, 1))
        layers.append(PrunableLayer(f"up.{i}.upsampler", "up", i, None, stage.upconv,
                                    stage.proj, 4))
    return layers


def layer_widths(model: DRN) -> list[int]:
    """The current width of every compressible layer, in :func:`prunable_layers` order."""
    return [layer.width for layer in prunable_layers(model)]


def hparams_with_widths(hparams: dict[str, Any], widths: Sequence[int]) -> dict[str, Any]:
    """DRN constructor arguments with the compressible widths replaced by ``widths``.

    ``widths`` follows :func:`prunable_layers` order: down blocks, then per stage its RCABs
    and its upsampler.
    """
    hp = copy.deepcopy(dict(hparams))
    phase = len(hp["down_widths"])
    n_blocks = [len(ws) for ws in hp["rcab_widths"]]
    expected = phase + sum(n_blocks) + phase
    if len(widths) != expected:
        raise ConfigError(f"need {expected} widths for this network, got {len(widths)}")
    it = iter(int(w) for w in widths)
    hp["down_widths"] = [next(it) for _ in range(phase)]
    rcab, up = [], []
    for n in n_blocks:
        rcab.append([next(it) for _ in range(n)])
        up.append(next(it))
    hp["rcab_widths"], hp["up_widths"] = rcab, up
    return hp


def round_width(channels: float, max_channels: int, multiple: int = _MULTIPLE) -> int:
    """Truncate to an integer, round to the nearest multiple (ties down), clamp to
    [multiple, max_channels]: 22 -> 20, 26 -> 24, 31 -> 32 for multiple 4."""
    n = int(channels)
    rem = n % multiple
    n = n + multiple - rem if 2 * rem > multiple else n - rem
    return min(max(n, multiple), max_channels)


def candidate_widths(channels: int, ratio: float) -> list[int]:
    """Candidate widths of a layer with ``channels`` channels under pruning ratio r.

    round4(c * (1 - r) * s) for s in 0.5 .. 1.0, clamped to [4, c]; one entry per s (values
    may repeat, which keeps one alpha per s as in the paper). c=64, r=0.3 gives
    {20, 24, 32, 36, 40, 44}.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in [0, 1), got {ratio}")
    return [round_width(channels * (1.0 - ratio) * s, channels) for s in SEARCH_STEPS]


def l1_rank(layer: PrunableLayer) -> torch.Tensor:
    """Consumer input channels sorted by the L1 norm of their weights, largest first (int64)."""
    w = layer.consumer.weight.detach()
    return torch.argsort(w.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)


def producer_l1_rank(layer: PrunableLayer) -> torch.Tensor:
    """Channels sorted by the L1 norm of the filters that produce them (Li et al.'s criterion)."""
    w = layer.producer.weight.detach().abs().sum(dim=(1, 2, 3))
    w = w.view(-1, layer.group).sum(dim=1)
    return torch.argsort(w, descending=True, stable=True)
