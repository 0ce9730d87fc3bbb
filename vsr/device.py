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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere
    oneDNN emulates bf16, slower than fp32, so ``precision="auto"`` stays in fp32 there."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:  # older torch: no way to ask, so no bf16 by default
        return False
    try:
        caps = capabilities()
    except RuntimeError:
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
