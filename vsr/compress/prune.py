"""Dual regression channel pruning (docs/method.md, "Dual regression channel pruning") and the
uniform L1-norm baseline.

DR pruning walks the compressible layers from input to output. For each it starts from no
input channel of the consumer selected (the consumer's weight columns zeroed), and until the
searched count is reached: accumulates the gradient of

    L = MSE(consumer output of the pruned net, that of the original)
        + primal loss + 0.1 x dual loss

with respect to the consumer's (masked) weights over the pruning batches, picks the unselected
channel whose gradient slice has the largest summed Frobenius norm, copies its original
weights in, and fine-tunes the selected columns. The original network and the dual models
stay frozen. The kept channels are then removed physically
(:func:`~vsr.compress.masks.slim_network`).

The per-selection fine-tuning is one of two ``refit`` rules:

- ``"sgd"``: the paper's one pass of SGD-Nesterov (momentum 0.9, lr 5e-5) on L;
- ``"lstsq"`` (default): the selected columns are set to the ridge least-squares fit of the
  original consumer output from the selected input channels on the pruning batches, i.e. the
  minimiser of L's feature-reconstruction term, in closed form.

At the loss scale of these networks the SGD passes leave the weights where they were copied
(on drn-t-x2 at r=0.5 the kept weights of a layer moved by 1e-5 to 4e-4 of their norm), so the
greedy walk is matching pursuit with the original coefficients; the closed-form fit makes it
orthogonal matching pursuit, whose pruned network fine-tuned 0.59 dB better in a 400-step test
there (benchmarks/COMPRESS_RESULTS.md).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vsr.compress.config import REFITS
from vsr.compress.layers import PrunableLayer, producer_l1_rank, prunable_layers
from vsr.compress.masks import slim_network
from vsr.models.drn import DRN
from vsr.train.losses import dual_loss, primal_loss

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def _capture(layer: PrunableLayer, store: list[torch.Tensor]):
    def hook(_mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        store.append(out)
    return layer.consumer.register_forward_hook(hook)


@torch.no_grad()
def _teacher_features(original: DRN, batches: Sequence[list[torch.Tensor]]
                      ) -> list[list[torch.Tensor]]:
    """features[b][l]: the original consumer output of layer l on batch b."""
    layers = prunable_layers(original)
    feats: list[list[torch.Tensor]] = []
    for pyramid in batches:
        stores: list[list[torch.Tensor]] = [[] for _ in layers]
        handles = [_capture(layer, s) for layer, s in zip(layers, stores, strict=True)]
        try:
            original(pyramid[0])
        finally:
            for h in handles:
                h.remove()
        feats.append([s[0] for s in stores])
    return feats


def _layer_loss(model: DRN, layer: PrunableLayer, duals: nn.Module, pyramid: list[torch.Tensor],
                target: torch.Tensor, dual_lambda: float) -> torch.Tensor:
    store: list[torch.Tensor] = []
    handle = _capture(layer, store)
    try:
        outs = model(pyramid[0])
    finally:
        handle.remove()
    return (F.mse_loss(store[0], target) + primal_loss(outs, pyramid)
            + dual_lambda * dual_loss(duals, outs, pyramid))


@torch.no_grad()
def _normal_equations(model: DRN, layer: PrunableLayer, batches: Sequence[list[torch.Tensor]],
                      targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(gram, cross), float64, of reconstructing ``targets`` (the original consumer outputs,
    one per batch, minus the bias) from all of the consumer's input channels; rows in unfold
    order (channel-major, then kernel position).

    The consumer's input depends only on the layers before it, so one pass serves every
    selection in the layer. Accumulated per sample: memory stays at one unfolded sample.
    """
    cons = layer.consumer
    n = cons.in_channels * cons.kernel_size[0] * cons.kernel_size[1]
    gram = torch.zeros(n, n, dtype=torch.float64, device=cons.weight.device)
    cross = torch.zeros(n, cons.out_channels, dtype=torch.float64, device=cons.weight.device)
    inputs: list[torch.Tensor] = []
    handle = cons.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    try:
        for pyramid, target in zip(batches, targets, strict=True):
            inputs.clear()
            model(pyramid[0])
            if cons.bias is not None:
                target = target - cons.bias.view(1, -1, 1, 1)
            for i in range(target.shape[0]):
                u = F.unfold(inputs[0][i:i + 1], cons.kernel_size, dilation=cons.dilation,
                             padding=cons.padding, stride=cons.stride)[0].double()
                gram += u @ u.T
                cross += u @ target[i].flatten(1).double().T
    finally:
        handle.remove()
    return gram, cross


@torch.no_grad()
def _lstsq_refit(layer: PrunableLayer, gram: torch.Tensor, cross: torch.Tensor,
                 selected: Sequence[int], ridge: float) -> None:
    """Set the consumer's columns ``selected`` to the ridge least-squares solution of the
    layer's normal equations (:func:`_normal_equations`) restricted to those inputs;
    ``ridge`` is relative to the mean diagonal of that block."""
    cons = layer.consumer
    k2 = cons.kernel_size[0] * cons.kernel_size[1]
    cols = torch.as_tensor(sorted(selected), device=gram.device)
    rows = (cols.view(-1, 1) * k2 + torch.arange(k2, device=gram.device)).flatten()
    block = gram[rows][:, rows]
    block.diagonal().add_(ridge * float(block.diagonal().mean()) + 1e-12)
    sol = torch.linalg.solve(block, cross[rows])  # (cols * k2, out)
    cons.weight[:, cols] = sol.T.reshape(cons.out_channels, cols.numel(),
                                         *cons.kernel_size).to(cons.weight.dtype)


def dr_prune(original: DRN, duals: nn.Module, widths: Sequence[int],
             batches: Sequence[list[torch.Tensor]], *, refit: str = "lstsq",
             lr: float = 5e-5, ridge: float = 1e-3, dual_lambda: float = 0.1,
             progress: Progress | None = None) -> tuple[DRN, list[list[int]]]:
    """Prune ``original`` to ``widths`` (one per compressible layer) by dual regression channel
    selection on ``batches`` (LR pyramids). Returns (slim network, kept channels per layer).
    ``refit`` is the per-selection fine-tuning ("lstsq" with ``ridge``, or "sgd" with ``lr``;
    see the module text). ``original`` and ``duals`` are not modified. A layer kept at full
    width keeps its original weights untouched.
    """
    if refit not in REFITS:
        raise ValueError(f"refit must be one of {', '.join(REFITS)}, got {refit!r}")
    original = original.eval()
    pruned = copy.deepcopy(original).train()
    duals = copy.deepcopy(duals).eval()
    for p in [*pruned.parameters(), *duals.parameters()]:
        p.requires_grad_(False)
    layers = prunable_layers(pruned)
    if len(widths) != len(layers):
        raise ValueError(f"need {len(layers)} widths, got {len(widths)}")
    targets = _teacher_features(original, batches)
    total = sum(int(w) for w, layer in zip(widths, layers, strict=True) if w < layer.width)
    done = 0
    kept: list[list[int]] = []
    for li, (layer, width) in enumerate(zip(layers, widths, strict=True)):
        c = layer.width
        width = int(width)
        if not 1 <= width <= c:
            raise ValueError(f"{layer.name}: width {width} outside [1, {c}]")
        if width == c:
            kept.append(list(range(c)))
            continue
        weight = layer.consumer.weight
        w_orig = weight.detach().clone()
        weight.data.zero_()
        weight.requires_grad_(True)
        mask = torch.zeros(c, device=weight.device, dtype=weight.dtype)
        opt = torch.optim.SGD([weight], lr=lr, momentum=0.9, nesterov=True)
        if refit == "lstsq":
            gram, cross = _normal_equations(pruned, layer, batches, [t[li] for t in targets])
        selected: list[int] = []
        while len(selected) < width:
            scores = torch.zeros(c, device=weight.device, dtype=torch.float64)
            for b, pyramid in enumerate(batches):
                loss = _layer_loss(pruned, layer, duals, pyramid, targets[b][li], dual_lambda)
                (grad,) = torch.autograd.grad(loss, weight)
                scores += grad.double().pow(2).sum(dim=(0, 2, 3)).sqrt()
            scores[selected] = -1.0
            j = int(torch.argmax(scores))
            selected.append(j)
            mask[j] = 1.0
            with torch.no_grad():
                weight[:, j] = w_orig[:, j]
            if refit == "lstsq":
                _lstsq_refit(layer, gram, cross, selected, ridge)
            else:
                for b, pyramid in enumerate(batches):  # one pass over the selected columns
                    opt.zero_grad(set_to_none=True)
                    loss = _layer_loss(pruned, layer, duals, pyramid, targets[b][li],
                                       dual_lambda)
                    loss.backward()
                    weight.grad.mul_(mask.view(1, -1, 1, 1))
                    opt.step()
            done += 1
            if progress is not None:
                progress(done, total, f"{layer.name} {len(selected)}/{width}")
        weight.requires_grad_(False)
        kept.append(sorted(selected))
        log.info("pruned %s: %d -> %d channels", layer.name, c, width)
    return slim_network(pruned, kept).eval(), kept


def l1_prune(original: DRN, widths: Sequence[int]) -> tuple[DRN, list[list[int]]]:
    """The baseline: keep, in every layer, the channels whose producing filters have the
    largest L1 norm (Li et al., "Pruning Filters for Efficient ConvNets")."""
    layers = prunable_layers(original)
    if len(widths) != len(layers):
        raise ValueError(f"need {len(layers)} widths, got {len(widths)}")
    kept = [sorted(producer_l1_rank(layer)[:int(w)].tolist())
            for layer, w in zip(layers, widths, strict=True)]
    return slim_network(original, kept).eval(), kept
