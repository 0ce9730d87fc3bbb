"""The options every job shares, declared once, with the choice lists the CLI offers.

:class:`ModelOptions` is what runs the model (which model, scale, precision, tiles, backend,
frames per call); :class:`RunOptions` adds the device for jobs that run on one device. The
job configs (upscale, batch, stream, bench) derive from them, so a bad value fails the same
way, at construction, with ConfigError, whichever config it is given to. The fields are
keyword-only, so a derived config keeps its own positional fields first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vsr.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # dtypes: vsr.loading.DTYPES
# torch's names, as every --json row gives the precision it ran (vsr.loading.dtype_name): taken
# wherever a precision is, so that a JSON value can be fed back, and held as the short name
PRECISION_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
DECODERS = ("pyav", "decord")  # vsr.io.source.open_source
ENCODERS = ("pyav", "ffmpeg")  # vsr.io.sink.PyAVSink, vsr.io.ffmpeg_sink.FfmpegSink
# vsr.backends.BACKENDS has an implementation of each but auto (tests/test_options.py checks);
# named here, below the backends, so that validating an option never imports them
BACKEND_CHOICES = ("auto", "eager", "compile", "tensorrt", "onnx")
# the precisions a backend can run where it is not every one the model supports
# (vsr.backends.onnx refuses the others; precision auto picks among these)
BACKEND_PRECISIONS = {"onnx": ("fp32",)}
MIN_TILE = 32
# `vsr stream`'s and vsr.stream.StreamConfig's deflicker strength (live input is compressed)
STREAM_DEFLICKER = 0.5
# the choices of `vsr export` (vsr.export.FORMATS) and `vsr compress` (vsr.compress.config),
# named here so that those commands' --help lists them without importing torch
EXPORT_FORMATS = ("onnx", "torchscript", "tensorrt")
COMPRESS_STAGES = ("search", "prune", "finetune", "all")
COMPRESS_METHODS = ("drc", "l1")
COMPRESS_REFITS = ("lstsq", "sgd")  # per-selection fine-tuning of DR pruning (vsr.compress.prune)
EVAL_BASELINES = ("bicubic",)  # vsr eval --baseline (vsr.evaluate.BASELINES)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def check_precision(value: object) -> str:
    """``value``, one of :data:`PRECISIONS` or of their torch names (:data:`PRECISION_ALIASES`),
    as its short name; else ConfigError."""
    if isinstance(value, str) and value in PRECISION_ALIASES:
        return PRECISION_ALIASES[value]
    check_choice("precision", value, PRECISIONS)
    return value  # type: ignore[return-value]


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 frame", "0 frames" (``nouns``: an
    irregular plural)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def check_at_least(name: str, value: object, minimum: int, *, optional: bool = False) -> None:
    """Raise ConfigError unless ``value`` is an integer of at least ``minimum`` (or None when
    ``optional``)."""
    if optional and value is None:
        return
    if type(value) is not int or value < minimum:
        raise ConfigError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_number(name: str, value: object, *, above: float | None = None,
                 at_least: float | None = None, optional: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite real number (not a bool) greater than
    ``above`` and at least ``at_least`` (or None when ``optional``). NaN fails every
    comparison, so a plain ``value <= 0`` check lets it through: test finiteness first."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if above is not None and not value > above:
        raise ConfigError(f"{name} must be > {above:g}, got {value:g}")
    if at_least is not None and not value >= at_least:
        raise ConfigError(f"{name} must be >= {at_least:g}, got {value:g}")


def as_path(name: str, value: object) -> Path:
    """``value``, a non-empty str or os.PathLike, as a Path; else ConfigError (``Path(None)``
    is a TypeError, ``Path("")`` the current folder)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a path, not {value!r}")
    return Path(value)


def as_paths(name: str, values: object) -> tuple[Path, ...]:
    """A tuple or list of paths (one path alone counts as one: a str is not iterated letter
    by letter) as a tuple of Paths; else ConfigError."""
    if isinstance(values, str | os.PathLike):
        values = (values,)
    if not isinstance(values, tuple | list):
        raise ConfigError(f"{name} must be a list of paths, not {values!r}")
    return tuple(as_path(name, v) for v in values)


def check_type(name: str, value: object, kind: type, *, optional: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a ``kind`` (or None when ``optional``)."""
    if not (isinstance(value, kind) or (optional and value is None)):
        what = getattr(kind, "__name__", None) or str(kind).replace(" | ", " or ")
        article = "an" if what[:1].lower() in "aeio" else "a"  # a UpscaleConfig, an EvalConfig
        raise ConfigError(f"{name} must be {article} {what}, not {value!r}")


def check_callable(name: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is None or can be called (a progress callback)."""
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be a function (or None), not {value!r}")


def check_flags(config: object) -> None:
    """Raise ConfigError unless every field of the dataclass ``config`` declared ``bool``
    holds True or False: ``overwrite="no"`` would read as True and replace a file."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.type in ("bool", bool) and type(value) is not bool:
            raise ConfigError(f"{f.name} must be True or False, not {value!r}")


def check_model(model: object) -> None:
    """None (the default model), or a registry name, a path or ``"bicubic"``: a non-empty
    string or path ("" would silently mean the default)."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ConfigError(f"model must be a name or a path, not {model!r}")


def check_deflicker(value: object) -> None:
    """A number in [0, 1): the deflicker strength (0: off; vsr.pipeline.temporal)."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0.0 <= value < 1.0:  # NaN fails both comparisons
        raise ConfigError(f"deflicker must be a number in [0, 1) (0: off), got {value!r}")


MAX_SCALE = 16  # x16 of a 720p frame is 236 megapixels; x100000 was a raw allocation error


def check_scale(scale: object) -> None:
    """None (the model's own) or an integer from 2 to :data:`MAX_SCALE`."""
    check_at_least("scale", scale, 2, optional=True)
    if scale is not None and scale > MAX_SCALE:
        raise ConfigError(f"scale must be at most {MAX_SCALE}, got {scale}")


def check_device(device: object) -> None:
    """auto, cpu, cuda or cuda:N (spelling only; availability is checked when a job runs)."""
    if not isinstance(device, str):
        raise ConfigError(f"device must be a string such as cpu or cuda:0, not {device!r}")
    from vsr.device import resolve_device

    resolve_device(device)


def check_known(cls: type, names: Iterable[str]) -> None:
    """Raise ConfigError naming each of ``names`` that is no option of the config dataclass
    ``cls`` (an ``__init__`` field), with the ones it has: what a misspelt keyword or
    manifest option says, however it reaches the config."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"known: {', '.join(sorted(known))}")


class Config:
    """The base of every typed config (a frozen dataclass): a misspelt field is a ConfigError
    naming it (as in a batch manifest), not the generated ``__init__``'s TypeError, and every
    field declared ``bool`` must hold True or False (``overwrite="no"`` would read as True).
    A subclass's ``__post_init__`` calls this one's first."""

    def __new__(cls, *args: object, **kwargs: object):
        # copy and pickle call __new__ without arguments
        fields = [f for f in dataclasses.fields(cls) if f.init]
        check_known(cls, kwargs)
        if args or kwargs:  # not a copy's call: a field without a default left out
            positional = [f.name for f in fields if not f.kw_only]
            if len(args) > len(positional):  # JobOptions("bicubic") would be a TypeError
                raise ConfigError(f"{cls.__name__} takes its options by name (model=..., "
                                  f"not {args[len(positional)]!r} alone)")
            positional = positional[:len(args)]
            missing = [f.name for f in fields if f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING
                       and f.name not in kwargs and f.name not in positional]
            if missing:
                raise ConfigError(f"{cls.__name__} needs {', '.join(missing)}")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        check_flags(self)


@dataclass(frozen=True, kw_only=True)
class ModelOptions(Config):
    """Which model runs, and how. Validated on construction (ConfigError).

    ``model``: a registry name, a .safetensors path or ``"bicubic"`` (None: the default model);
    ``scale``: None for the model's own (needed for bicubic); ``precision``: one of PRECISIONS
    (or its torch name, :data:`PRECISION_ALIASES`: held as the short one);
    ``tile``: infer in tiles of that many pixels (None: whole frames); ``backend``: one of
    :data:`BACKEND_CHOICES`; ``batch``: frames per model call; ``deflicker``: the temporal
    filter's strength in [0, 1) (0: off; :mod:`vsr.pipeline.temporal`).
    """

    model: str | None = None
    scale: int | None = None
    precision: str = "auto"
    tile: int | None = None
    backend: str = "auto"
    batch: int = 1
    deflicker: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model(self.model)
        if isinstance(self.model, os.PathLike):  # a path as the string every user reads
            object.__setattr__(self, "model", os.fspath(self.model))
        check_scale(self.scale)
        object.__setattr__(self, "precision", check_precision(self.precision))
        check_at_least("tile", self.tile, MIN_TILE, optional=True)
        check_choice("backend", self.backend, BACKEND_CHOICES)
        check_at_least("batch", self.batch, 1)
        check_deflicker(self.deflicker)


@dataclass(frozen=True, kw_only=True)
class RunOptions(ModelOptions):
    """ModelOptions on one device: auto, cpu, cuda or cuda:N."""

    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device(self.device)
