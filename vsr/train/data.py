"""Training data: HR patches with their LR pyramid, sampled deterministically per step.

The batch of step ``t`` is a pure function of (seed, t): a resumed run, or a run split over
several ranks, sees exactly the same samples as one uninterrupted process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from vsr.errors import InputError
from vsr.imageio import list_images, read_image
from vsr.resize import imresize

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one step (and one independent stream, e.g. adaptation data)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] floats to the 8-bit grid, as real LR frames are."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def lr_pyramid(hr: torch.Tensor, scale: int) -> list[torch.Tensor]:
    """[LR_S, ..., LR_2, HR]: MATLAB bicubic of ``hr`` by 1/S, 2/S, ... (quantised), then HR.

    hr: float (N, 3, H, W) in [0, 1] with H, W multiples of ``scale``; any device.
    """
    phase = int(math.log2(scale))
    levels = [quantize(imresize(hr, 2**k / scale)) for k in range(phase)]
    return levels + [hr]


class PatchSampler:
    """HR images held in memory (uint8), random crops with flips and transpose."""

    def __init__(self, folders: Sequence[str | Path], hr_patch: int) -> None:
        self.hr_patch = hr_patch
        self.images: list[torch.Tensor] = []
        skipped = 0
        for folder in folders:
            paths = list_images(folder)
            if not paths:
                raise InputError(f"{folder}: no training images found")
            for path in paths:
                img = read_image(path)
                if min(img.shape[-2:]) < hr_patch:
                    skipped += 1
                    continue
                self.images.append(img)
        if not self.images:
            raise InputError(f"no training image is at least {hr_patch}x{hr_patch} pixels")
        if skipped:
            log.info("skipped %d images smaller than the %d px HR patch", skipped, hr_patch)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n HR patches, float (n, 3, P, P) in [0, 1], on the CPU."""
        p = self.hr_patch
        idx = torch.randint(len(self.images), (n,), generator=gen).tolist()
        rnd = torch.rand(n, 5, generator=gen).tolist()
        out = torch.empty(n, 3, p, p, dtype=torch.uint8)
        for i, (k, r) in enumerate(zip(idx, rnd, strict=True)):
            img = self.images[k]
            h, w = img.shape[-2:]
            y = int(r[0] * (h - p + 1))
            x = int(r[1] * (w - p + 1))
            crop = img[:, y:y + p, x:x + p]
            if r[2] < 0.5:
                crop = crop.flip(-1)
            if r[3] < 0.5:
                crop = crop.flip(-2)
            if r[4] < 0.5:
                crop = crop.transpose(-1, -2)
            out[i] = crop
        return out.float() / 255.0


_VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".m4v", ".flv"}


def read_video_frames(path: str | Path, count: int) -> list[torch.Tensor]:
    """``count`` frames spread evenly over a video, through decord's random access.

    Returns uint8 (3, H, W) tensors. Raises InputError for an unreadable video.
    """
    try:
        import decord
    except ImportError as exc:  # pragma: no cover - decord is a declared dependency
        raise InputError(f"reading {path} for adaptation needs decord ({exc})") from None
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        total = len(reader)
        if total == 0:
            raise InputError(f"{path}: video has no frames")
        n = min(count, total)
        indices = [round(i * (total - 1) / max(1, n - 1)) for i in range(n)]
        frames = reader.get_batch(indices).asnumpy()
    except decord.DECORDError as exc:
        raise InputError(f"{path}: cannot read video ({' '.join(str(exc).split())[:200]})") \
            from None
    return [torch.from_numpy(f).permute(2, 0, 1).contiguous() for f in frames]


class LRSampler:
    """Unpaired real low-resolution frames (videos or image folders) for adaptation."""

    def __init__(self, sources: Sequence[str | Path], patch: int, frames_per_video: int) -> None:
        self.patch = patch
        self.frames: list[torch.Tensor] = []
        for src in sources:
            path = Path(src)
            if path.is_dir():
                self.frames += [read_image(p) for p in list_images(path)]
            elif path.suffix.lower() in _VIDEO_SUFFIXES:
                self.frames += read_video_frames(path, frames_per_video)
            elif path.is_file():
                self.frames.append(read_image(path))
            else:
                raise InputError(f"{src}: no such adaptation video or folder")
        self.frames = [f for f in self.frames if min(f.shape[-2:]) >= patch]
        if not self.frames:
            raise InputError(f"no adaptation frame is at least {patch}x{patch} pixels")

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n LR patches, float (n, 3, patch, patch) in [0, 1] (no flips: real content)."""
        p = self.patch
        idx = torch.randint(len(self.frames), (n,), generator=gen).tolist()
        pos = torch.rand(n, 2, generator=gen).tolist()
        out = torch.empty(n, 3, p, p, dtype=torch.uint8)
        for i, (k, (ry, rx)) in enumerate(zip(idx, pos, strict=True)):
            f = self.frames[k]
            y = int(ry * (f.shape[-2] - p + 1))
            x = int(rx * (f.shape[-1] - p + 1))
            out[i] = f[:, y:y + p, x:x + p]
        return out.float() / 255.0
