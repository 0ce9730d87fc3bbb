"""Batches for compression: training patches, a held-out split, validation PSNR."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from vsr.models.handle import NetworkUpscaler
from vsr.train.data import PatchSampler, lr_pyramid, step_generator


def split_sampler(sampler: PatchSampler, holdout: int) -> tuple[PatchSampler, PatchSampler]:
    """(train, validation) samplers over disjoint images: every ``holdout``-th image is held
    out (at least one image on each side)."""
    images = sampler.images
    val_idx = set(range(0, len(images), holdout)) if len(images) > 1 else set()
    train = copy.copy(sampler)
    val = copy.copy(sampler)
    train.images = [im for i, im in enumerate(images) if i not in val_idx] or list(images)
    val.images = [images[i] for i in sorted(val_idx)] or list(images)
    return train, val


class Batches:
    """The LR pyramid batch of step t as a pure function of (seed, stream, t)."""

    def __init__(self, sampler: PatchSampler, batch_size: int, scale: int, seed: int,
                 stream: int, device: torch.device) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.scale = scale
        self.seed = seed
        self.stream = stream
        self.device = device

    def __call__(self, step: int) -> list[torch.Tensor]:
        """[LR_S, ..., HR] float (N, 3, ., .) in [0, 1] on ``device``."""
        hr = self.sampler.sample(self.batch_size, step_generator(self.seed, step, self.stream))
        return lr_pyramid(hr.to(self.device), self.scale)


def validation_psnr(model: nn.Module, folder: str | Path, scale: int) -> tuple[float, float]:
    """Mean (PSNR, SSIM) of ``model`` (with whatever hooks it carries) on a benchmark folder;
    the model is left in training mode on its device."""
    from vsr.evaluate import evaluate_dataset

    device = next(model.parameters()).device
    handle = NetworkUpscaler("candidate", model, device=device)
    try:
        res = evaluate_dataset(handle, folder, scale)
    finally:
        model.train()
    return res.psnr, res.ssim
