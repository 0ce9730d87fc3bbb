"""The dual regression objective (docs/method.md, "Dual regression loss and training"), shared
by training and compression."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DualLoss:
    """Loss terms of one batch; ``total`` = primal + lambda * dual (+ adapt weight * adapt)."""

    total: torch.Tensor
    primal: torch.Tensor
    dual: torch.Tensor
    adapt: torch.Tensor | None = None


def primal_loss(outs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k L1(out_k, target_k): the HR output against HR, each lower output against its LR."""
    return sum(F.l1_loss(o, t) for o, t in zip(outs, targets, strict=True))


def dual_loss(duals: Sequence[nn.Module], outs: Sequence[torch.Tensor],
              targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i L1(D_i(out_{i+1}), LR at scale 2^i/S): each output mapped back one step."""
    return sum(F.l1_loss(d(outs[i + 1]), targets[i]) for i, d in enumerate(duals))


def cycle_loss(duals: Sequence[nn.Module], outs: Sequence[torch.Tensor],
               lr: torch.Tensor) -> torch.Tensor:
    """Unpaired adaptation: every output, brought down by the dual chain, must give back lr.

    sum_k L1(D_0(D_1(...D_{k-1}(out_k))), lr) for k = 1..phase; no HR is needed.
    """
    total = lr.new_zeros(())
    for k in range(1, len(outs)):
        y = outs[k]
        for i in reversed(range(k)):
            y = duals[i](y)
        total = total + F.l1_loss(y, lr)
    return total


def degradation_loss(degrade: nn.Module, outs: Sequence[torch.Tensor],
                     lr: torch.Tensor) -> torch.Tensor:
    """Unpaired adaptation through a known degradation: L1(degrade(HR output), lr)."""
    return F.l1_loss(degrade(outs[-1]), lr)


def consistency_loss(out: torch.Tensor, out_prev: torch.Tensor, shifts: torch.Tensor,
                     scale: int, margin: int) -> torch.Tensor:
    """Temporal consistency: mean L1 between the HR outputs of two observations of the same
    crops (:meth:`vsr.degradations.DegradationChain.apply_image_pairs`), aligned.

    ``out_prev[i, :, Y + dy*scale, X + dx*scale]`` is compared with ``out[i, :, Y, X]`` for
    ``(dy, dx) = shifts[i]`` (LR pixels), on the interior ``margin`` LR pixels in from every
    border (>= the largest shift: the moved frame's repeated edges stay out).
    """
    n, _, h, w = out.shape
    m = margin * scale
    if 2 * m >= min(h, w):
        raise ValueError(f"margin {margin} leaves nothing of a {h}x{w} output")
    total = out.new_zeros(())
    for i, (dy, dx) in enumerate(shifts.tolist()):
        if max(abs(dy), abs(dx)) > margin:
            raise ValueError(f"shift {(dy, dx)} is larger than the margin {margin}")
        oy, ox = m + dy * scale, m + dx * scale
        total = total + F.l1_loss(out[i, :, m:h - m, m:w - m],
                                  out_prev[i, :, oy:oy + h - 2 * m, ox:ox + w - 2 * m])
    return total / n


def dual_regression_loss(primal: nn.Module, duals: Sequence[nn.Module],
                         pyramid: Sequence[torch.Tensor], dual_lambda: float) -> DualLoss:
    """Forward the primal on pyramid[0] and score it against pyramid = [LR_S, ..., HR]."""
    outs = primal(pyramid[0])
    lp = primal_loss(outs, pyramid)
    ld = dual_loss(duals, outs, pyramid)
    return DualLoss(total=lp + dual_lambda * ld, primal=lp, dual=ld)
