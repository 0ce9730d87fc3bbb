"""A model handle ready for a run: loaded through the registry, on its device, in its precision.

Below every job (upscale, batch, stream, bench, export): it knows models and devices, nothing
of sources, sinks or backends.

    handle = load_model("drn-t-x2", device="cpu", precision="fp32")
    y = handle.infer(x)  # (N, 3, H, W) float in [0, 1] -> (N, 3, sH, sW)
"""

from __future__ import annotations

import torch

from vsr.device import resolve_device
from vsr.errors import ConfigError
from vsr.options import PRECISIONS, check_choice

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, handle) -> torch.dtype:
    """auto: fp16 on CUDA when the model supports it, else fp32. Raises ConfigError for an
    unknown name or a precision the model does not support."""
    check_choice("precision", precision, PRECISIONS)
    supported = tuple(getattr(handle, "supported_dtypes", (torch.float32,)))
    if precision == "auto":
        on_cuda = handle.device.type == "cuda"
        return torch.float16 if on_cuda and torch.float16 in supported else torch.float32
    dtype = DTYPES[precision]
    if dtype != torch.float32 and dtype not in supported:
        raise ConfigError(f"{handle.name} does not support {precision}")
    return dtype


def load_model(model: str | None = None, *, scale: int | None = None,
               device: str | torch.device = "auto", precision: str = "auto"):
    """A model handle (``vsr.models.Upscaler``) from a registry name, a .safetensors path or
    ``"bicubic"`` (None: the default model), on ``device`` in ``precision``.

    ``scale`` is needed for bicubic and must match a network's own when given. Raises
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
    return handle.to(dtype=resolve_precision(precision, handle))
