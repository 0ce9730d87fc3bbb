"""The model registry: names -> frozen ModelSpec, filled explicitly in one place."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from vsr.errors import ModelError
from vsr.models.drn import DRN
from vsr.models.dual import DualNetworks

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Architecture name (as written in checkpoints) -> constructor. Checkpoints can only name these.
ARCHITECTURES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({
    "drn": DRN,
    "drn-dual": DualNetworks,
})


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and describe one registry model."""

    name: str
    arch: str
    kwargs: Mapping[str, Any]
    scale: int
    description: str
    weights: str | None = None  # file name under models/weights/
    sha256: str | None = None
    input_contract: str = "RGB, float in [0, 1] (uint8 through the handle), any size"
    size_multiple: int = 1
    license: str = "Apache-2.0 (code); weights trained by vsr train on the data in the card"
    provenance: str = "architecture of Guo et al., arXiv 2207.07929 (DRN)"
    card: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None  # registry name a compressed model was pruned from
    ratio: float | None = None  # DRC pruning ratio r

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"{self.name}: unknown architecture {self.arch!r}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "card", MappingProxyType(dict(self.card)))

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.weights if self.weights else None

    @property
    def pretrained(self) -> bool:
        path = self.weights_path
        return path is not None and path.is_file()

    def build(self, **overrides: Any) -> nn.Module:
        """A fresh (untrained) network; ``overrides`` left as None are dropped."""
        kwargs = dict(self.kwargs)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return ARCHITECTURES[self.arch](**kwargs)

    def verify_weights(self) -> Path:
        """The weights path, after checking it exists and (when recorded) its sha256."""
        path = self.weights_path
        if path is None or not path.is_file():
            raise ModelError(f"model {self.name!r} has no shipped weights; train one with "
                             f"`vsr train --arch {self.name}` and pass the checkpoint path")
        if self.sha256 is not None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != self.sha256:
                raise ModelError(f"weights of {self.name!r} are corrupt (sha256 {digest[:12]}... "
                                 f"!= {self.sha256[:12]}...)")
        return path


class Registry:
    """Name -> ModelSpec. Duplicate names raise; unknown names list the known ones."""

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self.default: str | None = None

    def register(self, spec: ModelSpec, *, default: bool = False) -> ModelSpec:
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        if default:
            self.default = spec.name
        return spec

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs)
            raise ModelError(f"unknown model {name!r}; known models: {known}, bicubic") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)


def _paper(name: str, scale: int, n_feats: int, n_blocks: int, size: str) -> ModelSpec:
    return ModelSpec(
        name=name, arch="drn", scale=scale,
        kwargs={"scale": scale, "n_feats": n_feats, "n_blocks": n_blocks},
        description=f"DRN-{size} x{scale} (nf {n_feats}, {n_blocks} RCABs per stage)",
    )


REGISTRY = Registry()
REGISTRY.register(_paper("drn-s-x2", 2, 32, 30, "S"))
REGISTRY.register(_paper("drn-s-x4", 4, 16, 30, "S"))
REGISTRY.register(_paper("drn-s-x8", 8, 8, 30, "S"))
REGISTRY.register(_paper("drn-l-x2", 2, 40, 40, "L"))
REGISTRY.register(_paper("drn-l-x4", 4, 20, 40, "L"))
REGISTRY.register(_paper("drn-l-x8", 8, 10, 36, "L"))
# Light variants for video on modest hardware: same architecture, fewer and narrower blocks.
REGISTRY.register(ModelSpec(
    name="drn-t-x2", arch="drn", scale=2,
    kwargs={"scale": 2, "n_feats": 16, "n_blocks": [6]},
    description="DRN-T x2: video variant (nf 16, 6 RCABs)",
    weights="drn-t-x2.safetensors",
    sha256="9426ad43c25e8d0e2f71cee35e1163decdb956fa885d637db7119876b0e28fb9",
    card={
        "trained_by": "vsr train (dual regression, lambda 0.1)",
        "data": "T91 + BSD200 + SunHays80 + DebianPhotos (shared/data/train), bicubic LR",
        "iterations": 6000, "batch_size": 16, "lr_patch": 32,
        "schedule": "Adam lr 1e-3 cosine to 1e-6",
        "hardware": "CPU, 1 thread of a shared 2-core VM (no GPU)",
        "wall_time_min": 38,
        "weights": "final iteration (no checkpoint selection on test sets), fp16",
        "eval": {"Set5": {"psnr": 36.95, "ssim": 0.9555},
                 "Set14": {"psnr": 32.65, "ssim": 0.9078},
                 "B100": {"psnr": 31.48, "ssim": 0.8892}},
    },
))
REGISTRY.register(ModelSpec(
    name="drn-t-x4", arch="drn", scale=4,
    kwargs={"scale": 4, "n_feats": 8, "n_blocks": [8, 0]},
    description="DRN-T x4: video variant (nf 8, 8 RCABs at LR, none at x2)",
    weights="drn-t-x4.safetensors",
    sha256="5f2c944e805a61f93b9e393f3a76635cdd4207e54e4ce94501a45f0968c8d0ba",
    card={
        "trained_by": "vsr train (dual regression, lambda 0.1), two runs",
        "data": "T91 + BSD200 + SunHays80 + DebianPhotos (shared/data/train), bicubic LR",
        "iterations": 8500,
        "schedule": "3500 it: Adam 1e-3 cosine to 1e-6, LR patch 24; then 5000 it from those "
                    "weights (--init): Adam 5e-4 cosine to 1e-6, LR patch 32; batch 16",
        "hardware": "CPU, 1 thread of a shared 2-core VM (no GPU)",
        "wall_time_min": 103,
        "weights": "final iteration (no checkpoint selection on test sets), fp16",
        "eval": {"Set5": {"psnr": 30.91, "ssim": 0.8732},
                 "Set14": {"psnr": 27.81, "ssim": 0.7615},
                 "B100": {"psnr": 27.08, "ssim": 0.7183}},
    },
))

# The default: drn-t-x2 compressed by DRC (vsr compress, r=0.5). It scores as drn-t-x2 does on
# Set5 and B100 (36.97 / 31.47 dB against 36.95 / 31.48) in 63-68% of its CPU time per frame
# (README, "Compression").
REGISTRY.register(ModelSpec(
    name="drn-t-x2-drc50", arch="drn", scale=2,
    kwargs={"scale": 2, "n_feats": 16, "n_blocks": [6], "down_widths": [8],
            "rcab_widths": [[12, 16, 16, 16, 16, 16]], "up_widths": [16]},
    description="DRN-T x2 compressed by DRC, r=0.5 (half the mult-adds of drn-t-x2)",
    weights="drn-t-x2-drc50.safetensors",
    sha256="3e3a8d4228f0b93471026744246177a8f52dccdb5f51a24593811e56e5e00134",
    base="drn-t-x2", ratio=0.5,
    card={
        "compressed_by": "vsr compress --method drc (search 200 steps, dual regression pruning "
                         "on 2 batches of 8 with the least-squares refit, 3000 fine-tune "
                         "steps, lr 1e-3), CPU, 1 thread",
        "weights": "best-by-Set5 fine-tune step (3000, also the last), fp16",
        "eval": {"Set5": {"psnr": 36.97, "ssim": 0.9556},
                 "Set14": {"psnr": 32.64, "ssim": 0.9081},
                 "B100": {"psnr": 31.47, "ssim": 0.8893}},
    },
), default=True)

DEFAULT_MODEL: str = REGISTRY.default or "drn-t-x2-drc50"
