"""Parameter and multiply-add counts, as the paper reports them."""

from __future__ import annotations

import copy

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, lr_height: int, lr_width: int) -> int:
    """Multiply-adds of one forward pass on a (1, 3, lr_height, lr_width) input.

    Convolutions count out_elements x (C_in/groups x k x k), plus one add per output element
    where they have a bias (the paper's convention: "bias adds included"). Elementwise work
    (activations, attention scaling, pre-upsampling) is not counted, as in the paper.
    """
    total = 0

    def hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total += out.numel() * (k + (1 if mod.bias is not None else 0))

    # Shapes are all that matter: run on the meta device, so no arithmetic is done (a module
    # with weights is copied there; one built there already is run as it is, hooks removed).
    on_meta = all(t.is_meta for t in (*module.parameters(), *module.buffers()))
    probe = module if on_meta else copy.deepcopy(module).to("meta")
    hooks = [m.register_forward_hook(hook) for m in probe.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            probe(torch.zeros(1, 3, lr_height, lr_width, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total


def macs_96(module: nn.Module) -> int:
    """Multiply-adds for a 96x96 LR input (the paper's Madds column)."""
    return count_macs(module, 96, 96)


def macs_720p(module: nn.Module, scale: int) -> int:
    """Multiply-adds to produce one 1280x720 output frame (the lightweight-SR convention)."""
    return count_macs(module, 720 // scale, 1280 // scale)
