"""The on-disk engine cache and its key.

An engine (ONNX file, TensorRT program) is only reusable by the same weights, input shape,
precision, device and library versions; the key is the sha256 of all of them, so changing
any one gives a new file instead of a stale engine. Files are written to a temporary name
and renamed, so a crashed build never leaves a half engine behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from vsr.errors import ConfigError, VsrError
from vsr.io.output import discard, finish, store_file, temp_path_for


def default_cache_dir() -> Path:
    """$VSR_CACHE_DIR, else $XDG_CACHE_HOME/vsr, else ~/.cache/vsr.

    A leading ``~`` in $VSR_CACHE_DIR is expanded: a service manager's or a .env file's setting
    reaches vsr unexpanded, and made a folder named ``~`` in the working directory. A relative
    $XDG_CACHE_HOME is ignored, as the XDG base directory specification asks. Raises
    ConfigError where a home folder is needed and there is none (HOME unset and no passwd
    entry, as in a container run as an arbitrary user id)."""
    env = os.environ.get("VSR_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        if env:
            return Path(env).expanduser()
        if xdg and os.path.isabs(xdg):
            return Path(xdg) / "vsr"
        return Path.home() / ".cache" / "vsr"
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise ConfigError("no folder for the engine cache: there is no home folder (HOME is "
                          "not set); set VSR_CACHE_DIR") from None


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
    """Files named ``<backend>-<key digest><suffix>`` under one folder (default:
    :func:`default_cache_dir`, whose ConfigError the constructor raises)."""

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

    def note_differs(self, engine: Path) -> None:
        """Record that the cached ``engine``, as it was just built, disagrees with eager (its
        own rounding, not damage), so that a later run finding this very file falls back at
        once instead of rebuilding it again. Never raises: an unwritable cache records nothing.
        """
        with contextlib.suppress(OSError, VsrError):
            store_file(_verdict(engine), _file_digest(engine).encode())

    def known_to_differ(self, engine: Path) -> bool:
        """Whether ``engine`` is, byte for byte, a file :meth:`note_differs` recorded."""
        try:
            return _verdict(engine).read_text() == _file_digest(engine)
        except (OSError, UnicodeDecodeError):
            return False


def _verdict(engine: Path) -> Path:
    return engine.with_name(engine.name + ".differs")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
