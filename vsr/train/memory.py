"""The memory a training step needs, checked before the first one: a batch far too large for
the machine was killed by the kernel mid-step (exit 137, no error line, config.json left)."""

from __future__ import annotations

import os

import torch
from torch import nn

from vsr.device import available_bytes, leaf_output_bytes
from vsr.errors import ConfigError


def activation_bytes(primal: nn.Module, duals: nn.Module, patch: int, device: torch.device,
                     value_bytes: int = 4) -> int:
    """Bytes of activations one sample's step keeps for its backward pass, a lower bound:
    the outputs of every leaf module of the primal network on one ``patch`` x ``patch`` LR
    input and of the dual networks on its outputs, at ``value_bytes`` a value. Measured with
    one forward pass of a single sample (no gradients)."""

    def step() -> None:
        outs = primal(torch.zeros(1, 3, patch, patch, device=device))
        for i, dual in enumerate(duals):
            dual(outs[i + 1])

    return leaf_output_bytes((primal, duals), step, value_bytes)


def check_step_memory(primal: nn.Module, duals: nn.Module, *, patch: int, batch: int,
                      device: torch.device, value_bytes: int = 4) -> None:
    """Raise ConfigError if the activations of ``batch`` samples (this process's share; on
    the CPU, with the other local ranks' shares) and their gradients, as large, which the
    backward pass makes, cannot fit in the memory available. A lower bound still: drn-t
    steps on the CPU took 2.6 times the activations (measured at patch 8 and 32)."""
    have = available_bytes(device)
    if have is None:
        return
    per_sample = activation_bytes(primal, duals, patch, device, value_bytes)
    ranks = 1 if device.type == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE",
                                                              os.environ.get("WORLD_SIZE", 1)))
    need = 2 * per_sample * batch * ranks
    if need > have:
        raise ConfigError(f"a batch of {batch * ranks} patches of {patch}x{patch} needs at "
                          f"least {need / 2**30:.1f} GiB for its activations and their "
                          f"gradients ({2 * per_sample / 2**20:.2f} MiB a sample), more than the "
                          f"{have / 2**30:.1f} GiB available on {device}: lower --batch-size "
                          f"or --patch")
