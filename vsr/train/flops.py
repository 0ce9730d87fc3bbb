"""Model FLOPs of training and the peaks they are measured against (model FLOP utilisation)."""

from __future__ import annotations

import torch
from torch import nn

from vsr.models import DualNetworks
from vsr.models.complexity import count_macs

# dense bf16 tensor-core peaks (TFLOP/s, datasheets), matched in order against the device name
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The peak to measure model FLOP utilisation against: ``given``, else the table's entry
    for a known GPU, else None (unknown, e.g. a CPU)."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def train_flops_per_sample(primal: nn.Module, duals: DualNetworks, patch: int, *,
                           primal_passes: int = 1) -> int:
    """Model FLOPs of one training sample: 2 x the mult-adds of the primal on a patch x patch
    LR input (``primal_passes`` times: 2 with ``--consistency``) and of each dual on its input,
    x 3 for forward + backward."""
    macs = primal_passes * count_macs(primal, patch, patch)
    for i, dual in enumerate(duals):
        side = patch * 2 ** (i + 1)
        macs += count_macs(dual, side, side)
    return 6 * macs
