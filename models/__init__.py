"""Architectures, registry, checkpoints and model handles (installed as vsr.models)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsr.errors import CheckpointError, ModelError
from vsr.models.checkpoint import (
    CheckpointInfo,
    load_state_into,
    load_tensors,
    read_info,  # noqa: F401  (re-exported)
    save_model,
)
from vsr.models.complexity import count_macs, count_params, macs_96, macs_720p
from vsr.models.drn import DRN
from vsr.models.dual import DualDownsampler, DualNetworks
from vsr.models.handle import BicubicUpscaler, NetworkUpscaler, Upscaler
from vsr.models.registry import (
    ARCHITECTURES,
    DEFAULT_MODEL,
    REGISTRY,
    STREAM_MODEL,
    ModelSpec,
    Registry,
)

__all__ = [
    "ARCHITECTURES", "DEFAULT_MODEL", "DRN", "REGISTRY", "BicubicUpscaler", "CheckpointInfo",
    "DualDownsampler", "DualNetworks", "ModelSpec", "NetworkUpscaler", "Registry", "STREAM_MODEL",
    "Upscaler",
    "build_from_info", "check_model_name", "count_macs", "count_params", "create_model",
    "describe_registry",
    "load_model", "load_network", "macs_720p", "macs_96", "save_model",
]


def create_model(name: str, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """A network from the registry. Keyword arguments left as None are dropped, so CLI
    defaults never override the model's own; pretrained=True loads the shipped weights."""
    spec = REGISTRY.get(name)
    overrides = {k: v for k, v in kwargs.items() if v is not None}
    model = spec.build(**overrides)
    if pretrained:
        if overrides:
            raise ModelError(f"cannot load the shipped weights of {name!r} into a network "
                             f"built with other arguments ({', '.join(overrides)})")
        path = spec.verify_weights()
        tensors, _ = load_tensors(path)
        load_state_into(model, tensors, path)
    return model


def build_from_info(info: CheckpointInfo, path: Any = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint describes (no weights loaded)."""
    ctor = ARCHITECTURES.get(info.arch)
    if ctor is None:
        raise CheckpointError(f"{path}: unknown architecture {info.arch!r} "
                              f"(known: {', '.join(ARCHITECTURES)})")
    try:
        model = ctor(**info.hparams)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: hparams do not fit {info.arch!r} ({exc})") from None
    if int(getattr(model, "scale", info.scale)) != info.scale:
        raise CheckpointError(f"{path}: metadata scale {info.scale} disagrees with hparams")
    return model


def load_network(path: str | os.PathLike) -> tuple[nn.Module, CheckpointInfo]:
    """A network and its self-description from a checkpoint file alone."""
    tensors, info = load_tensors(path)
    model = build_from_info(info, path)
    load_state_into(model, tensors, path)
    return model.eval(), info


_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".onnx")


def _names_a_file(text: str) -> bool:
    """Whether ``text`` (not a registry name) is meant as a checkpoint path: it exists, or it
    has a folder part (``./m``, ``runs/x/model-fp16``, ``~/m``) or a weights file's suffix.
    A bare word that is neither is taken as a mistyped registry name."""
    return (Path(text).exists() or text.lower().endswith(_CHECKPOINT_SUFFIXES)
            or any(sep in text for sep in (os.sep, os.altsep or os.sep))
            or text.startswith(("~", ".")))


def _check_checkpoint_path(text: str) -> None:
    """CheckpointError naming what ``text`` is when it is not a file to load: missing (the
    ``~`` not expanded by a shell said as such), a folder, or no regular file."""
    path = Path(text)
    if path.is_dir():
        raise CheckpointError(f"{text}: is a folder, not a checkpoint file (a .safetensors "
                              "file)")
    if not path.exists():
        hint = ""
        if text.startswith("~") and Path(text).expanduser().exists():
            hint = f" ('~' is not expanded here: {Path(text).expanduser()})"
        raise CheckpointError(f"{text}: no such checkpoint file (not a registry name "
                              f"either: see vsr models){hint}")
    if not path.is_file():
        raise CheckpointError(f"{text}: not a regular file (a device, pipe or socket), not a "
                              "checkpoint file")


def _same_path(a: str | os.PathLike, b: str | os.PathLike | None) -> bool:
    try:
        return b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _scale_hint(scale: int) -> str:
    """'; --model NAME upscales xSCALE' for the first shipped model (weights in the
    registry) of that scale, or '' where none is: `--scale` only checks a model's scale."""
    name = next((s.name for s in REGISTRY if s.weights and s.scale == int(scale)), None)
    return f"; --model {name} upscales x{scale}" if name else ""


def check_model_name(spec: str | os.PathLike, scale: int | None = None) -> None:
    """The checks of :func:`load_model` that need no weights: a registry name, or a
    checkpoint path that is a file, or ``"bicubic"`` with a scale; a registry model's own
    scale against ``scale``. load_model makes them first; `vsr batch` makes them before any
    work. Raises ModelError or CheckpointError."""
    text = os.fspath(spec)
    if text == "bicubic":
        if scale is None:
            raise ModelError("the bicubic baseline needs --scale")
    elif text in REGISTRY:
        own = REGISTRY.get(text).scale
        if scale is not None and int(scale) != int(own):
            raise ModelError(f"model {text!r} upscales x{own}, not x{scale}"
                             f"{_scale_hint(scale)}")
    elif _names_a_file(text):
        _check_checkpoint_path(text)
    else:
        REGISTRY.get(text)  # raises the "unknown model ... known models" error


def load_model(spec: str | os.PathLike, *, scale: int | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Upscaler:
    """A ready handle from a registry name, a .safetensors path, or ``"bicubic"``.

    ``scale`` is required for bicubic and, for a network, must match its own if given.
    Raises ModelError (unknown name, scale mismatch) or CheckpointError (bad file).
    """
    dtype = dtype or torch.float32
    text = os.fspath(spec)
    check_model_name(text, scale)  # what needs no weights, before any are read
    if text == "bicubic":
        return BicubicUpscaler("bicubic", scale, device=device, dtype=dtype,
                               info={"name": "bicubic", "scale": scale})
    if text in REGISTRY:
        entry = REGISTRY.get(text)
        module = create_model(text, pretrained=True)
        info: dict[str, Any] = {"name": text, "source": str(entry.weights_path),
                                "card": dict(entry.card)}
        name = text
    else:  # a checkpoint file, as check_model_name found
        try:
            module, ck = load_network(text)
        except OSError as exc:  # no permission, a failing disk (EIO)
            raise CheckpointError(f"{text}: cannot read the checkpoint "
                                  f"({exc.strerror or exc})") from None
        if not hasattr(module, "scale"):  # e.g. drn-dual: the dual networks of a training run
            raise CheckpointError(f"{text}: a {ck.arch!r} checkpoint, not an upscaling network "
                                  "(vsr upscales with a 'drn' checkpoint)")
        name = ck.name or Path(text).stem
        if name in REGISTRY and not _same_path(text, REGISTRY.get(name).weights_path):
            # a user's own run (vsr train names its network by the architecture, vsr compress
            # by the base and ratio): never reported as the shipped model of that name
            name = f"{name} ({Path(text).name})"
        info = {"name": name, "source": text, "provenance": ck.provenance,
                "hparams": ck.hparams}
    if scale is not None and int(scale) != int(module.scale):
        raise ModelError(f"model {name!r} upscales x{module.scale}, not x{scale}"
                         f"{_scale_hint(scale)}")
    return NetworkUpscaler(name, module, device=device, dtype=dtype, info=info)


# (arch, kwargs, scale) -> (params, macs_96, macs_720p, hparams): the counts of a registry
# network, computed once a process
_COUNTS: dict[tuple[str, str, int], tuple[int, int, int, dict[str, Any]]] = {}


def describe_registry() -> list[dict[str, Any]]:
    """One row per registry model (the ``vsr models --json`` contract, plus details).

    Networks are built on the meta device: counting needs shapes only, no weights.
    """
    rows = []
    for spec in REGISTRY:
        key = (spec.arch, repr(sorted(spec.kwargs.items())), spec.scale)
        if key not in _COUNTS:  # a shape-only forward costs ~0.2 s a model: once a process
            with torch.device("meta"):
                net = spec.build()
            _COUNTS[key] = (count_params(net), macs_96(net), macs_720p(net, spec.scale),
                            dict(net.hparams))
        params, m96, m720, hparams = _COUNTS[key]
        rows.append({
            "name": spec.name,
            "scale": spec.scale,
            "params": params,
            "macs_96": m96,
            "macs_720p": m720,
            "pretrained": spec.pretrained,
            "default": spec.name == DEFAULT_MODEL,
            "description": spec.description,
            "hparams": dict(hparams),
            "weights": spec.weights if spec.pretrained else None,
            "base": spec.base,
            "ratio": spec.ratio,
            "card": dict(spec.card),
        })
    return rows
