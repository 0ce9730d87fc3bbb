"""Differentiable channel-number search (docs/method.md, "Channel-number search"), first-order
DARTS.

Each compressible layer gets one architecture weight alpha_k per candidate width; its
channels, ranked by the L1 norm of the consumer's weights, are scaled by
m_j = sum_k softmax(alpha)_k [rank(j) < width_k]. Alternating steps update alpha on a held-out
validation split and the network weights on the training split, both against the dual
regression loss. The argmax readout is scored on the validation benchmark by PSNR (hard masks on
the current search weights) and the best readout is kept.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vsr.compress.layers import candidate_widths, l1_rank, prunable_layers
from vsr.compress.masks import ChannelMasks, hard_mask, soft_mask
from vsr.models.drn import DRN
from vsr.train.losses import dual_regression_loss

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """The kept channel configuration and how it was found."""

    widths: list[int]
    candidates: list[list[int]]
    original: list[int]
    val_psnr: float | None
    alphas: list[list[float]]  # softmax(alpha) per layer at the end of the search
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"widths": self.widths, "original_widths": self.original,
                "candidates": self.candidates, "val_psnr": self.val_psnr,
                "alphas": self.alphas, "history": self.history}


class ChannelSearch:
    """Search state over a private copy of ``model`` and ``duals`` (the originals are kept)."""

    def __init__(self, model: DRN, duals: nn.Module, ratio: float, *, alpha_lr: float = 3e-4,
                 weight_lr: float = 1e-4, dual_lambda: float = 0.1, seed: int = 0) -> None:
        self.model = copy.deepcopy(model).train()
        self.duals = copy.deepcopy(duals).train()
        self.layers = prunable_layers(self.model)
        self.candidates = [candidate_widths(layer.width, ratio) for layer in self.layers]
        gen = torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        self.alphas = [(1e-3 * torch.randn(len(c), generator=gen)).to(device).requires_grad_()
                       for c in self.candidates]
        self.dual_lambda = dual_lambda
        self.masks = ChannelMasks(self.layers)
        self.alpha_opt = torch.optim.Adam(self.alphas, lr=alpha_lr, betas=(0.5, 0.999))
        weights = [*self.model.parameters(), *self.duals.parameters()]
        self.weight_opt = torch.optim.Adam(weights, lr=weight_lr, betas=(0.9, 0.999))

    def set_soft(self, *, alpha_grad: bool) -> None:
        for i, layer in enumerate(self.layers):
            a = self.alphas[i] if alpha_grad else self.alphas[i].detach()
            self.masks.masks[i] = soft_mask(a, self.candidates[i], l1_rank(layer))

    def set_hard(self, widths: Sequence[int]) -> None:
        for i, layer in enumerate(self.layers):
            self.masks.masks[i] = hard_mask(int(widths[i]), l1_rank(layer))

    def step(self, train: list[torch.Tensor], val: list[torch.Tensor]) -> tuple[float, float]:
        """One alpha step on ``val`` then one weight step on ``train`` (LR pyramids);
        returns the two losses."""
        self.set_soft(alpha_grad=True)
        loss_v = dual_regression_loss(self.model, self.duals, val, self.dual_lambda).total
        grads = torch.autograd.grad(loss_v, self.alphas)
        self.alpha_opt.zero_grad(set_to_none=True)
        for a, g in zip(self.alphas, grads, strict=True):
            a.grad = g
        self.alpha_opt.step()
        self.set_soft(alpha_grad=False)
        loss_t = dual_regression_loss(self.model, self.duals, train, self.dual_lambda).total
        self.weight_opt.zero_grad(set_to_none=True)
        loss_t.backward()
        self.weight_opt.step()
        return float(loss_v.detach()), float(loss_t.detach())

    def readout(self) -> list[int]:
        """argmax alpha per layer -> a width per layer."""
        return [c[int(torch.argmax(a))] for c, a in zip(self.candidates, self.alphas, strict=True)]

    def probabilities(self) -> list[list[float]]:
        return [[round(v, 5) for v in torch.softmax(a.detach(), 0).tolist()] for a in self.alphas]

    def close(self) -> None:
        self.masks.remove()


def run_search(model: DRN, duals: nn.Module, ratio: float, *, steps: int,
               train_batch: Callable[[int], list[torch.Tensor]],
               val_batch: Callable[[int], list[torch.Tensor]],
               score: Callable[[nn.Module], float] | None, val_every: int,
               alpha_lr: float = 3e-4, weight_lr: float = 1e-4, dual_lambda: float = 0.1,
               seed: int = 0, progress: Callable[[int, int, str], None] | None = None
               ) -> SearchResult:
    """Search widths for ``model`` at ``ratio``. ``score(masked_model)`` gives the validation
    PSNR of a readout (None: keep the final readout)."""
    search = ChannelSearch(model, duals, ratio, alpha_lr=alpha_lr, weight_lr=weight_lr,
                           dual_lambda=dual_lambda, seed=seed)
    best: tuple[float, list[int]] | None = None
    history: list[dict[str, Any]] = []
    try:
        for step in range(steps):
            lv, lt = search.step(train_batch(step), val_batch(step))
            done = step + 1
            if done % val_every == 0 or done == steps:
                widths = search.readout()
                row: dict[str, Any] = {"step": done, "val_loss": round(lv, 6),
                                       "train_loss": round(lt, 6), "widths": widths}
                if score is not None:
                    search.set_hard(widths)
                    psnr = score(search.model)
                    row["val_psnr"] = round(psnr, 4)
                    if best is None or psnr > best[0]:
                        best = (psnr, widths)
                history.append(row)
                log.info("search step %d: %s", done, row)
            if progress is not None:
                progress(done, steps, f"loss {lt:.4f}")
        final = search.readout()
        return SearchResult(
            widths=best[1] if best else final, candidates=search.candidates,
            original=[layer.width for layer in search.layers],
            val_psnr=best[0] if best else None, alphas=search.probabilities(), history=history)
    finally:
        search.close()
