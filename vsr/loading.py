"""A model handle ready for a run: loaded through the registry, on its device, in its precision.

Below every job (upscale, batch, stream, bench, export): it knows models and devices, nothing
of sources, sinks or backends.

    handle = load_model("drn-t-x2", device="cpu", precision="fp32")
    y = handle.infer(x)  # (N, 3, H, W) float in [0, 1] -> (N, 3, sH, sW)
"""

from __future__ import annotations

import torch

from vsr.device import cpu_has_native_bf16, resolve_device
from vsr.errors import ConfigError
from vsr.options import PRECISIONS, check_choice

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# The deepest frames (bits per component) each reduced precision carries: its significand
# holds 8 bits in bf16 and 11 in fp16, so frames beyond that run in fp32 under "auto".
_MAX_BIT_DEPTH = {torch.bfloat16: 8, torch.float16: 10}


def auto_dtype(device: torch.device, supported: tuple[torch.dtype, ...], *, network: bool,
               bit_depth: int = 8, native_bf16: bool | None = None) -> torch.dtype:
    """What ``precision="auto"`` runs a model in: one that computes in ``supported`` dtypes
    on ``device`` (``network``: a neural network, not bicubic) for frames of ``bit_depth``.

    On CUDA fp16. On a CPU with bf16 in hardware (``native_bf16``; None asks
    :func:`vsr.device.cpu_has_native_bf16`) a network runs in bf16: 1.4-1.7x the speed of
    fp32 for the shipped DRNs, 0.01-0.03 dB below it on Set5/Set14/B100 (docs/engine.md,
    "Precision"). All else, bicubic on the CPU and frames deeper than the reduced precision
    carries, runs in fp32.
    """
    if device.type == "cuda":
        reduced = torch.float16
    else:
        if native_bf16 is None:
            native_bf16 = cpu_has_native_bf16()
        if not (network and native_bf16):
            return torch.float32
        reduced = torch.bfloat16
    if reduced in supported and bit_depth <= _MAX_BIT_DEPTH[reduced]:
        return reduced
    return torch.float32


def resolve_precision(precision: str, handle, *, bit_depth: int = 8) -> torch.dtype:
    """The dtype of ``precision`` for ``handle`` (auto: :func:`auto_dtype`). Raises
    ConfigError for an unknown name or a precision the model does not support."""
    check_choice("precision", precision, PRECISIONS)
    supported = tuple(getattr(handle, "supported_dtypes", (torch.float32,)))
    if precision == "auto":
        return auto_dtype(handle.device, supported, bit_depth=bit_depth,
                          network=getattr(handle, "module", None) is not None)
    dtype = DTYPES[precision]
    if dtype != torch.float32 and dtype not in supported:
        raise ConfigError(f"{handle.name} does not support {precision}")
    return dtype


def load_model(model: str | None = None, *, scale: int | None = None,
               device: str | torch.device = "auto", precision: str = "auto",
               bit_depth: int = 8):
    """A model handle (``vsr.models.Upscaler``) from a registry name, a .safetensors path or
    ``"bicubic"`` (None: the default model), on ``device`` in ``precision``.

    ``scale`` is needed for bicubic and must match a network's own when given; ``bit_depth``
    is that of the frames it will see (``precision="auto"`` depends on it). Raises
    ConfigError (bad device or precision, CUDA asked for but absent), ModelError (unknown
    name, scale mismatch), CheckpointError (bad file).
    """
    from vsr.models import DEFAULT_MODEL
    from vsr.models import load_model as load_registry_model

    check_choice("precision", precision, PRECISIONS)
    if not isinstance(device, torch.device):
        device = resolve_device(device, require_available=True)
    handle = load_registry_model(model or DEFAULT_MODEL, scale=scale, device=str(device))
    if scale is not None and handle.scale != scale:
        raise ConfigError(f"{handle.name} upscales x{handle.scale}, not x{scale}")
    return handle.to(dtype=resolve_precision(precision, handle, bit_depth=bit_depth))
