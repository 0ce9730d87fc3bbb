"""One place that turns a --device spelling into a torch.device."""

from __future__ import annotations

import torch

from vsr.errors import ConfigError


def resolve_device(spec: str, *, require_available: bool = False) -> torch.device:
    """auto -> cuda if available else cpu; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Raises ConfigError for a bad spelling, and (with ``require_available``) for CUDA asked for
    on a machine without it.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {spec!r} (auto, cpu, cuda or cuda:N)") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {spec!r} (auto, cpu, cuda or cuda:N)")
    if require_available and dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec} was asked for but CUDA is not available")
    return dev
