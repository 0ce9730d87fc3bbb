"""Channel masks on a DRN, and the surgery that turns kept channels into a slimmer network.

Masks act on the *consumer* of a compressible layer: multiplying its input channel j by m_j is
the same as multiplying column j of its weights by m_j (docs/method.md, "Channel-number
search"), and a 0/1 mask is the same network as one built without the zero channels
(:func:`slim_network`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vsr.compress.layers import PrunableLayer, hparams_with_widths, prunable_layers
from vsr.models.drn import DRN


def soft_mask(alpha: torch.Tensor, candidates: Sequence[int], rank: torch.Tensor) -> torch.Tensor:
    """m_j = sum_k softmax(alpha)_k * [rank(j) < candidates_k], shape (C,), differentiable
    in ``alpha``. ``rank`` lists the channels best first (:func:`~vsr.compress.layers.l1_rank`).
    """
    c = rank.numel()
    position = torch.empty_like(rank)
    position[rank] = torch.arange(c, device=rank.device)
    widths = torch.as_tensor(list(candidates), device=rank.device).view(-1, 1)
    indicator = (position.view(1, -1) < widths).to(alpha.dtype)  # (K, C)
    return torch.softmax(alpha, dim=0) @ indicator


def hard_mask(width: int, rank: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1 for the ``width`` best-ranked channels, 0 for the rest, shape (C,)."""
    mask = torch.zeros(rank.numel(), dtype=dtype, device=rank.device)
    mask[rank[:width]] = 1.0
    return mask


class ChannelMasks:
    """Forward pre-hooks that scale each consumer's input channels by ``masks[i]`` (C_i,).

    Set ``masks[i]`` (or leave it None for no mask) before each forward; call :meth:`remove`
    (or use as a context manager) to restore the plain network.
    """

    def __init__(self, layers: Sequence[PrunableLayer]) -> None:
        self.layers = list(layers)
        self.masks: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [layer.consumer.register_forward_pre_hook(self._hook(i))
                         for i, layer in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(_mod: nn.Module, args: tuple) -> tuple | None:
            mask = self.masks[i]
            if mask is None:
                return None
            return (args[0] * mask.to(args[0].dtype).view(1, -1, 1, 1), *args[1:])
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> ChannelMasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _expand(idx: torch.Tensor, group: int) -> torch.Tensor:
    """Producer output channels behind consumer channels ``idx`` (PixelShuffle groups)."""
    if group == 1:
        return idx
    offsets = torch.arange(group, device=idx.device).view(1, -1)
    return (idx.view(-1, 1) * group + offsets).flatten()


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def slim_network(model: DRN, kept: Sequence[torch.Tensor | Sequence[int]]) -> DRN:
    """A new DRN, built by the same constructor with len(kept[i]) channels in layer i, holding
    ``model``'s weights for the kept channels (in the order given). Same device and dtype.

    ``kept`` follows :func:`~vsr.compress.layers.prunable_layers` order. The result computes
    what ``model`` computes when every other channel's consumer weights are zero.
    """
    layers = prunable_layers(model)
    if len(kept) != len(layers):
        raise ValueError(f"need kept channels for {len(layers)} layers, got {len(kept)}")
    kept = [torch.as_tensor(k, dtype=torch.long).cpu() for k in kept]
    for layer, k in zip(layers, kept, strict=True):
        if k.numel() < 1 or len(set(k.tolist())) != k.numel() or int(k.max()) >= layer.width \
                or int(k.min()) < 0:
            raise ValueError(f"{layer.name}: invalid kept channels {k.tolist()[:8]}...")
    hp = hparams_with_widths(model.hparams, [k.numel() for k in kept])
    ref = next(model.parameters())
    slim = DRN(**hp).to(device=ref.device, dtype=ref.dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = _module_names(model)
    for layer, k in zip(layers, kept, strict=True):
        k = k.to(ref.device)
        prod, cons = names[id(layer.producer)], names[id(layer.consumer)]
        rows = _expand(k, layer.group)
        state[f"{prod}.weight"] = state[f"{prod}.weight"][rows]
        if f"{prod}.bias" in state:
            state[f"{prod}.bias"] = state[f"{prod}.bias"][rows]
        state[f"{cons}.weight"] = state[f"{cons}.weight"][:, k]
    slim.load_state_dict(state, strict=True)
    return slim
