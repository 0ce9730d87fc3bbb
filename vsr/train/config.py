"""The typed configuration of one training run; saved in the run folder, it reproduces it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vsr.errors import ConfigError
from vsr.options import (
    Config,
    as_path,
    as_paths,
    check_at_least,
    check_device,
    check_number,
    check_type,
)
from vsr.train.data import MAX_SEED
from vsr.train.degrade import DegradationSpec
from vsr.train.state import MOMENTS

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # in the run folder
# fields naming files or folders the run reads (config.json stores them absolute)
_INPUT_PATHS = ("data", "val_data", "adapt", "init")

# fields a resumed run may change: they decide how it runs, not what it computes
RUNTIME_FIELDS = ("device", "threads", "time_limit", "compile", "peak_tflops", "log_every",
                  "save_every", "val_every", "state_moments", "state_shard_mib", "amp",
                  "degrade_workers")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Dual regression training of a registry architecture on HR image folders.

    Paths are made absolute (resolved) on construction, so the saved config.json names the
    same files whatever folder a resumed run is started from.

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
    lr: float = 1e-3  # the shipped models' recipe (their cards); `vsr train --lr` the same
    lr_min: float = 1e-6
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
    # how a run uses its machine: these may change between the slots of one run (--resume)
    time_limit: float | None = None  # minutes of this process (from start-up); then stop, resumable
    compile: bool = False  # torch.compile the forward (and so the backward) of the train step
    peak_tflops: float | None = None  # the device's dense bf16 peak, for model FLOP utilisation
    state_moments: str = "fp32"  # fp32 | bf16 | none: optimizer moments in the saved state
    state_shard_mib: float | None = None  # split the saved state into files of at most this
    degrade_workers: int | None = None  # threads coding the --degrade crops (None: CPU count, <= 8)
    # the LR the primal sees: a vsr.degradations chain (None: MATLAB bicubic only)
    degrade: str | None = None
    # weight of the temporal consistency loss on two codings of each crop (needs a video codec
    # stage in ``degrade``; see vsr.train.losses.consistency_loss)
    consistency: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device(self.device)  # the spelling; availability is checked when it runs
        check_type("arch", self.arch, str)
        for name in ("data", "adapt"):
            object.__setattr__(self, name, tuple(str(p.resolve())
                                                 for p in as_paths(name, getattr(self, name))))
        object.__setattr__(self, "out", str(as_path("out", self.out).resolve()))
        for name in ("val_data", "init"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name,
                                   str(as_path(name, getattr(self, name)).resolve()))
        if not self.data:
            raise ConfigError("give at least one training folder (--data)")
        for name in ("iterations", "batch_size", "patch", "val_every", "save_every",
                     "log_every", "adapt_batch", "adapt_frames"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be at most {MAX_SEED} (2**31 - 1), got {self.seed}")
        for name in ("dual_width", "threads", "degrade_workers"):
            check_at_least(name, getattr(self, name), 1, optional=True)
        check_type("model_overrides", self.model_overrides, dict)
        check_type("adapt_degradation", self.adapt_degradation, str)
        check_type("degrade", self.degrade, str, optional=True)
        # every float first: NaN passes any comparison below, infinity trains to NaN weights
        check_number("lr", self.lr, above=0)
        check_number("lr_min", self.lr_min, at_least=0)
        for name in ("dual_lambda", "adapt_weight", "consistency"):
            check_number(name, getattr(self, name), at_least=0)
        for name in ("time_limit", "peak_tflops", "state_shard_mib"):
            check_number(name, getattr(self, name), above=0, optional=True)
        if self.lr_min > self.lr:
            raise ConfigError(f"need 0 <= lr_min <= lr and lr > 0 (lr {self.lr}, "
                              f"lr_min {self.lr_min})")
        DegradationSpec.parse(self.adapt_degradation)
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise ConfigError(f"amp must be auto, none, bf16 or fp16, got {self.amp!r}")
        if self.state_shard_mib is not None and self.state_shard_mib < 2:
            raise ConfigError(f"state_shard_mib must be >= 2 (1 MiB of each shard is kept for "
                              f"its header), got {self.state_shard_mib}")
        if self.state_moments not in MOMENTS:
            raise ConfigError(f"state_moments must be one of {', '.join(MOMENTS)}, "
                              f"got {self.state_moments!r}")
        chain = None
        if self.degrade is not None:
            from vsr.degradations import DegradationChain  # lazy: it needs PyAV

            chain = DegradationChain.parse(self.degrade)
        if self.consistency > 0:
            if chain is None or not chain.codes_video:
                raise ConfigError("consistency needs a video codec stage in degrade "
                                  "(e.g. --degrade 'bicubic,x264:crf=18~36'): it compares two "
                                  "frames of each crop's coded clip")
            margin = consistency_margin(self)
            if self.patch <= 2 * margin:
                raise ConfigError(f"consistency needs a patch over {2 * margin} LR pixels (its "
                                  f"loss leaves {margin} out at every border), got {self.patch}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Relative paths in ``text`` are taken from the current folder (see
        :func:`resume_config` for a run's own config.json)."""
        return cls._from_dict(json.loads(text))

    @classmethod
    def _from_dict(cls, raw: Any) -> TrainConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"a training config is a JSON object, not {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        raw["data"] = tuple(raw.get("data", ()))
        raw["adapt"] = tuple(raw.get("adapt", ()))
        try:
            return cls(**raw)
        except TypeError as exc:  # no key at all ({}): the dataclass, not Config, says so
            raise ConfigError(str(exc)) from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read training config ({exc})") from None


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``run_dir``, to continue it there: its config.json with
    ``out`` the folder as it is now, and ``overrides`` (runtime fields) applied.

    A run folder may be moved or copied: a path config.json names inside the folder the run
    was made in is taken inside ``run_dir``. Relative paths (config.json of a vsr before
    paths were stored absolute) were relative to the folder the run was started from: that
    folder is known while the run folder's path still ends with the ``out`` it was given.

    Raises:
        ConfigError: config.json unreadable; a training, validation or adaptation path that
            no longer exists, or a relative one whose folder cannot be told (each named, with
            how to give it again).
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from None
    new = Path(run_dir).resolve()
    old = Path(os.path.normpath(str(raw.get("out") or new)))
    anchor = None  # the folder the run was started from, for relative paths
    if not old.is_absolute() and ".." not in old.parts and new.parts[-len(old.parts):] == \
            old.parts:
        anchor = Path(*new.parts[:-len(old.parts)])

    def place(key: str, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must hold paths, not {value!r}")
        p = Path(os.path.normpath(value))
        if p.is_relative_to(old):  # inside the run folder: it moved with it
            return str(new / p.relative_to(old))
        if p.is_absolute():
            return str(p)
        if anchor is None:
            raise ConfigError(f"{path}: {key} {value!r} is relative to the folder the run was "
                              f"started from, which cannot be told now that the run folder "
                              f"has moved; write its absolute path into {path}")
        log.info("%s: %s %r taken as %s", path, key, value, anchor / p)
        return str(anchor / p)

    for key in _INPUT_PATHS:
        value = raw.get(key)
        if isinstance(value, list):
            raw[key] = [place(key, v) for v in value]
        elif value is not None:
            raw[key] = place(key, value)
    raw["out"] = str(new)
    try:
        config = replace(TrainConfig._from_dict(raw), **overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from None
    # --init is not read on resume (the state holds the weights): it may be gone
    for key in ("data", "val_data", "adapt"):
        value = getattr(config, key)
        for p in (value if isinstance(value, tuple) else (value,) if value else ()):
            if not Path(p).exists():
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"{p} ({flag} of the run in {run_dir}) no longer exists: "
                                  f"put it back there, or write its new place into "
                                  f"\"{key}\" in {path}")
    return config



def consistency_margin(config: TrainConfig) -> int:
    """LR pixels the consistency loss leaves out at every border (0 without it): twice the
    largest shift between a crop's two frames, for the moved frame's repeated edge and what
    the network's receptive field carries of it."""
    if config.consistency <= 0:
        return 0
    from vsr.codecs import CROP_MAX_SHIFT  # lazy: it needs PyAV

    return 2 * CROP_MAX_SHIFT
