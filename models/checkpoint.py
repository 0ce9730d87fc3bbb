"""Self-describing checkpoints: safetensors with architecture, hparams, scale and provenance.

Nothing in a checkpoint is ever executed: the header is JSON, the tensors are raw data, and
the architecture is looked up by name in an explicit table. Anything else is refused.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from vsr.errors import CheckpointError

FORMAT = "vsr-checkpoint/1"
_MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says about itself."""

    arch: str
    hparams: dict[str, Any]
    scale: int
    kind: str = "inference"  # "inference" or "training"
    name: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {
            "vsr.format": FORMAT,
            "vsr.arch": self.arch,
            "vsr.hparams": json.dumps(self.hparams, sort_keys=True),
            "vsr.scale": str(self.scale),
            "vsr.kind": self.kind,
            "vsr.name": self.name or "",
            "vsr.provenance": json.dumps(self.provenance, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None, path: Path) -> CheckpointInfo:
        if not meta or meta.get("vsr.format") != FORMAT:
            raise CheckpointError(f"{path}: not a vsr checkpoint (no '{FORMAT}' metadata)")
        try:
            hparams = json.loads(meta["vsr.hparams"])
            provenance = json.loads(meta.get("vsr.provenance") or "{}")
            scale = int(meta["vsr.scale"])
            arch = meta["vsr.arch"]
        except (KeyError, ValueError, TypeError) as exc:  # TypeError: a value not a string
            raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc})") from None
        except RecursionError:  # JSON nested thousands deep: refused, not a crash
            raise CheckpointError(f"{path}: malformed checkpoint metadata (JSON nested too "
                                  "deeply)") from None
        if not isinstance(hparams, dict) or not isinstance(provenance, dict):
            raise CheckpointError(f"{path}: malformed checkpoint metadata (hparams/provenance)")
        if not all(isinstance(meta.get(k, ""), str) for k in ("vsr.arch", "vsr.kind", "vsr.name")):
            raise CheckpointError(f"{path}: malformed checkpoint metadata (arch/kind/name)")
        return cls(arch=arch, hparams=hparams, scale=scale, kind=meta.get("vsr.kind", "inference"),
                   name=meta.get("vsr.name") or None, provenance=provenance)


def atomic_save(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                metadata: Mapping[str, str]) -> Path:
    """Write a safetensors file whole or not at all (vsr.io.output.store_file: a temporary
    file in the same folder, flushed to the disk, then renamed). Raises OutputError (the
    OSError behind it as its cause) or SafetensorError."""
    from vsr.io.output import store_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store_file(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                          metadata=dict(metadata)))
    return path


def save_model(path: str | os.PathLike, model: nn.Module, info: CheckpointInfo, *,
               dtype: torch.dtype | None = None,
               extra: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Save ``model.state_dict()`` (optionally cast, e.g. to fp16) with ``info`` as metadata.

    ``extra`` tensors (dual networks, optimizer state of a training checkpoint) must use keys
    with a prefix the model does not have, e.g. ``"dual."`` or ``"optim."``.
    """
    tensors = {}
    for key, value in model.state_dict().items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value
    for key, value in (extra or {}).items():
        if key in tensors:
            raise ValueError(f"extra tensor {key!r} collides with a model parameter")
        tensors[key] = value
    return atomic_save(path, tensors, info.to_metadata())


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse and check a safetensors header without loading data: (tensor table, metadata)."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
        if path.exists():  # a device, a pipe (reading one could block), a socket
            raise CheckpointError(f"{path}: not a regular file, not a checkpoint file")
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors checkpoint (file too short)")
            if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") \
                    or head[:2] == b"PK":
                raise CheckpointError(f"{path}: refusing a pickle/zip (torch.save) file; "
                                      "only safetensors checkpoints are loaded")
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors checkpoint (bad header "
                                      "length)")
            raw = fh.read(n)
    except OSError as exc:  # no permission, a failing disk (EIO)
        raise CheckpointError(f"{path}: cannot read the checkpoint "
                              f"({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    except RecursionError:  # JSON nested thousands deep: refused, not a crash
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header JSON nested too "
                              "deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header is not an object)")
    meta = header.pop("__metadata__", {}) or {}
    data_len = size - 8 - n
    for key, entry in header.items():
        try:
            start, end = entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: malformed tensor entry {key!r}") from None
        if not (0 <= start <= end <= data_len):
            raise CheckpointError(f"{path}: truncated or corrupt (tensor {key!r} out of range)")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: malformed checkpoint metadata")
    return header, meta


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """The checkpoint's self-description, without loading tensors."""
    _, meta = read_header(path)
    return CheckpointInfo.from_metadata(meta, Path(path))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """All tensors (on CPU) and the info of a checked checkpoint."""
    info = read_info(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({' '.join(str(exc).split())})") \
            from None
    return tensors, info


TRAINING_PREFIXES = ("dual.", "optim.", "train.")


def load_state_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Any, *,
                    prefix: str = "", ignore: tuple[str, ...] = TRAINING_PREFIXES) -> None:
    """Copy ``tensors`` (keys under ``prefix``, less ``ignore`` prefixes) into ``model``.

    Every key and shape must match exactly; otherwise ``CheckpointError``.
    """
    own = model.state_dict()
    given = {k[len(prefix):]: v for k, v in tensors.items()
             if k.startswith(prefix) and not k.startswith(ignore)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    if missing or unexpected:
        detail = (f"missing {missing[:3]} " if missing else "") + \
            (f"unexpected {unexpected[:3]}" if unexpected else "")
        raise CheckpointError(f"{path}: weights do not fit the architecture ({detail.strip()})")
    for key, value in given.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path}: weights do not fit the architecture ({key}: "
                                  f"{tuple(value.shape)} vs {tuple(own[key].shape)})")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key} has non-float dtype {value.dtype}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in given.items()}, strict=True)
