"""The on-disk engine cache and its key.

An engine (ONNX file, TensorRT program) is only reusable by the same weights, input shape,
precision, device and library versions; the key is the sha256 of all of them, so changing
any one gives a new file instead of a stale engine. Files are written to a temporary name
and renamed, so a crashed build never leaves a half engine behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from vsr.io.output import discard, finish, temp_path_for


def default_cache_dir() -> Path:
    """$VSR_CACHE_DIR, else $XDG_CACHE_HOME/vsr, else ~/.cache/vsr."""
    env = os.environ.get("VSR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vsr"


def model_digest(module: nn.Module) -> str:
    """sha256 of the network's class, hparams and every tensor of its state (in float32, so
    the digest does not depend on the precision the handle is in)."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    hparams = getattr(module, "hparams", None)
    h.update(json.dumps(hparams, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def device_name(device: torch.device) -> str:
    """The GPU's marketing name on CUDA (engines are per GPU model), else ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``shape`` is None for shape-independent artefacts."""

    model: str  # model_digest
    backend: str
    shape: tuple[int, ...] | None
    precision: str
    device: str  # device_name
    tensorrt: str | None  # TensorRT (and torch-tensorrt) version, None when not involved
    torch: str = torch.__version__
    extra: str = ""  # backend-specific (ONNX opset, onnxruntime version...)

    def digest(self) -> str:
        fields = asdict(self)
        fields["shape"] = list(self.shape) if self.shape is not None else None
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class EngineCache:
    """Files named ``<backend>-<key digest><suffix>`` under one folder."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: EngineKey, suffix: str) -> Path:
        return self.root / "engines" / f"{key.backend}-{key.digest()[:32]}{suffix}"

    def build(self, final: Path, write: Callable[[Path], None]) -> Path:
        """Write ``final`` through ``write(temp_path)`` and rename it into place; on failure
        no file is left behind and the exception propagates."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(final)
        try:
            write(tmp)
            finish(tmp, final)
        except BaseException:
            discard(tmp)
            raise
        return final
