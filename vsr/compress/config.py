"""The typed configuration of one compression run (`vsr compress`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vsr.errors import ConfigError
from vsr.options import (
    COMPRESS_METHODS,
    COMPRESS_REFITS,
    COMPRESS_STAGES,
    Config,
    as_path,
    as_paths,
    check_at_least,
    check_device,
    check_number,
)
from vsr.train.data import MAX_SEED

STAGES, METHODS, REFITS = COMPRESS_STAGES, COMPRESS_METHODS, COMPRESS_REFITS


@dataclass(frozen=True)
class CompressConfig(Config):
    """Compress the DRN in ``checkpoint`` by pruning ratio ``ratio`` into ``out``.

    Stages (each reads the previous stage's file in ``out`` and writes its own, so any stage
    can be rerun alone; replacing files already there needs ``overwrite``): search ->
    ``search.json`` (widths), prune -> ``pruned.safetensors``,
    finetune -> ``compressed.safetensors`` (an ordinary checkpoint, best by validation PSNR).
    ``method`` "l1" is the baseline: the widths of ``widths_from`` (a search.json) or the
    uniform width round4(c*(1-r)), channels kept by L1 norm, the same fine-tuning.
    ``patch`` is the LR patch side. ``duals``: a file holding ``dual.*`` tensors (e.g. the
    training state of the run that made ``checkpoint``; a sharded state by its index file,
    ``train_state.index.json``); without one, fresh dual models are
    fitted to the frozen network for ``dual_warmup`` steps.
    """

    checkpoint: str
    ratio: float
    data: tuple[str, ...]
    out: str
    stage: str = "all"
    method: str = "drc"
    val_data: str | None = None
    duals: str | None = None
    widths_from: str | None = None
    batch_size: int = 16
    patch: int = 32
    seed: int = 0
    # search (4a)
    search_steps: int = 300
    search_val_every: int = 100
    alpha_lr: float = 3e-4
    search_lr: float = 1e-4
    holdout: int = 10  # every holdout-th training image forms the search validation split
    # pruning (4b)
    prune_batches: int = 2
    prune_batch_size: int = 8
    prune_refit: str = "lstsq"  # per-selection fine-tuning: "lstsq" (closed form) or "sgd"
    prune_lr: float = 5e-5  # SGD-Nesterov lr of the "sgd" refit
    # fine-tuning (4c)
    finetune_steps: int = 2000
    finetune_lr: float = 1e-3  # the base network's training lr: best for drn-t (README)
    finetune_lr_min: float = 1e-6
    distill: float = 0.0  # weight of channel-averaged feature distillation from the original
    val_every: int = 250
    dual_lambda: float = 0.1
    dual_warmup: int = 200
    device: str = "cpu"
    overwrite: bool = False  # replace the files of an earlier run in ``out``

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device(self.device)
        object.__setattr__(self, "data", tuple(map(str, as_paths("data", self.data))))
        for name in ("checkpoint", "out"):
            object.__setattr__(self, name, str(as_path(name, getattr(self, name))))
        for name in ("val_data", "duals", "widths_from"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(as_path(name, getattr(self, name))))
        if not self.data:
            raise ConfigError("give at least one training folder (--data)")
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.prune_refit not in REFITS:
            raise ConfigError(f"prune refit must be one of {', '.join(REFITS)}, "
                              f"got {self.prune_refit!r}")
        check_number("ratio", self.ratio)
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"ratio must be in (0, 1), got {self.ratio}")
        for name in ("batch_size", "patch", "search_steps", "search_val_every", "holdout",
                     "prune_batches", "prune_batch_size", "finetune_steps", "val_every"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be at most {MAX_SEED} (2**31 - 1), got {self.seed}")
        if self.holdout < 2:
            raise ConfigError("holdout must be >= 2 (every n-th image is held out)")
        # NaN passes a plain ``<= 0`` check and trains to NaN weights: finite first
        for name in ("alpha_lr", "search_lr", "prune_lr", "finetune_lr"):
            check_number(name, getattr(self, name), above=0)
        for name in ("finetune_lr_min", "distill", "dual_lambda"):
            check_number(name, getattr(self, name), at_least=0)
        if self.finetune_lr_min > self.finetune_lr:
            raise ConfigError("need 0 <= finetune_lr_min <= finetune_lr")
        check_at_least("dual_warmup", self.dual_warmup, 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)
