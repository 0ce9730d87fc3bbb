"""Fine-tuning of the slim network with the dual regression loss (docs/method.md, "Fine-tuning").

Optionally with feature distillation from a teacher (the unpruned network): the MSE of the
channel-averaged features entering the last tail, as in the released recipe.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.errors import TrainingDiverged
from vsr.models.drn import DRN
from vsr.train.losses import dual_regression_loss
from vsr.train.trainer import cosine_lr

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    model: DRN  # the best (by validation PSNR) or the last network
    duals: nn.Module
    best_psnr: float | None
    best_step: int
    history: list[dict[str, Any]] = field(default_factory=list)


def finetune(model: DRN, duals: nn.Module, batches: Callable[[int], list[torch.Tensor]], *,
             steps: int, lr: float, lr_min: float, dual_lambda: float = 0.1,
             teacher: DRN | None = None, distill: float = 0.0,
             score: Callable[[nn.Module], float] | None = None, val_every: int = 250,
             progress: Callable[[int, int, str], None] | None = None) -> FinetuneResult:
    """Train ``model`` (and its ``duals``) for ``steps`` Adam steps on ``batches(step)``
    with a cosine learning rate. ``score(model)`` (validation PSNR) picks the best state,
    checked every ``val_every`` steps and at the end; step 0 is the pruned network itself.
    The arguments are not modified; copies are returned. Raises TrainingDiverged when the
    loss becomes non-finite (too high an ``lr``).
    """
    model = copy.deepcopy(model).train()
    duals = copy.deepcopy(duals).train()
    for p in [*model.parameters(), *duals.parameters()]:
        p.requires_grad_(True)
    if teacher is not None:
        teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    opt_p = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam(duals.parameters(), lr=lr, betas=(0.9, 0.999))
    history: list[dict[str, Any]] = []
    best_psnr = score(model) if score is not None else None
    best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(duals.state_dict()))
    best_step = 0
    if best_psnr is not None:
        history.append({"step": 0, "val_psnr": round(best_psnr, 4)})
    for step in range(steps):
        cur = cosine_lr(step, steps, lr, lr_min)
        for opt in (opt_p, opt_d):
            for group in opt.param_groups:
                group["lr"] = cur
            opt.zero_grad(set_to_none=True)
        pyramid = batches(step)
        terms = dual_regression_loss(model, duals, pyramid, dual_lambda)
        loss = terms.total
        if teacher is not None and distill > 0:
            with torch.no_grad():
                target = teacher.features(pyramid[0]).mean(dim=1)
            loss = loss + distill * F.mse_loss(model.features(pyramid[0]).mean(dim=1), target)
        loss.backward()
        opt_p.step()
        opt_d.step()
        done = step + 1
        value = float(loss.detach())  # the progress line waits for it anyway
        if not math.isfinite(value):
            raise TrainingDiverged(f"fine-tuning diverged at step {done} of {steps}: the loss "
                                   f"became {value} (lr {lr:g}: try a lower --lr); nothing "
                                   f"was written")
        if score is not None and (done % val_every == 0 or done == steps):
            psnr = score(model)
            history.append({"step": done, "loss": round(value, 6), "val_psnr": round(psnr, 4)})
            log.info("finetune step %d: loss %.5f val %.4f dB", done, value, psnr)
            if best_psnr is None or psnr > best_psnr:
                best_psnr, best_step = psnr, done
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(duals.state_dict()))
        if progress is not None:
            progress(done, steps, f"loss {value:.4f}")
    if score is None:
        best_step = steps
    else:
        model.load_state_dict(best_state[0])
        duals.load_state_dict(best_state[1])
    return FinetuneResult(model.eval(), duals.eval(), best_psnr, best_step, history)
