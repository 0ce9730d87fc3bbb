"""The typed configuration of one training run; saved in the run folder, it reproduces it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vsr.errors import ConfigError
from vsr.train.degrade import DegradationSpec


@dataclass(frozen=True)
class TrainConfig:
    """Dual regression training of a registry architecture on HR image folders.

    ``patch`` is the LR patch side; HR patches are ``patch * scale``. ``batch_size`` is the
    global batch (split evenly over distributed ranks). ``lr`` decays along a cosine to
    ``lr_min`` over ``iterations``. ``dual_lambda`` 0 turns dual regression off (ablation).
    """

    arch: str
    data: tuple[str, ...]
    out: str
    iterations: int = 10_000
    batch_size: int = 16
    patch: int = 32
    lr: float = 1e-4
    lr_min: float = 1e-7
    dual_lambda: float = 0.1
    dual_width: int | None = None  # default: the primal's n_feats
    seed: int = 0
    val_data: str | None = None
    val_every: int = 1000
    save_every: int = 1000
    log_every: int = 50
    device: str = "auto"
    amp: str = "auto"  # auto | none | bf16 | fp16 (auto: bf16 on CUDA, none on CPU)
    threads: int | None = None
    adapt: tuple[str, ...] = ()
    adapt_weight: float = 1.0
    adapt_batch: int = 4
    adapt_frames: int = 64  # frames sampled per adaptation video
    adapt_degradation: str = "auto"  # auto | dual | gaussian:SIGMA (see vsr.train.degrade)
    init: str | None = None  # start from a checkpoint's weights (not a resume)
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        object.__setattr__(self, "adapt", tuple(str(d) for d in self.adapt))
        if not self.data:
            raise ConfigError("give at least one training folder (--data)")
        for name in ("iterations", "batch_size", "patch", "val_every", "save_every",
                     "log_every", "adapt_batch", "adapt_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ConfigError(f"need 0 <= lr_min <= lr and lr > 0 (lr {self.lr}, "
                              f"lr_min {self.lr_min})")
        if self.dual_lambda < 0 or self.adapt_weight < 0:
            raise ConfigError("dual_lambda and adapt_weight must be >= 0")
        DegradationSpec.parse(self.adapt_degradation)
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise ConfigError(f"amp must be auto, none, bf16 or fp16, got {self.amp!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        raw["data"] = tuple(raw.get("data", ()))
        raw["adapt"] = tuple(raw.get("adapt", ()))
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read training config ({exc})") from None
