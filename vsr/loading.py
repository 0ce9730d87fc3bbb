"""A model handle ready for a run: loaded through the registry, on its device, in its precision.

Below every job (upscale, batch, stream, bench, export): it knows models and devices, nothing
of sources, sinks or backends.

    handle = load_model("drn-t-x2", device="cpu", precision="fp32")
    y = handle.infer(x)  # (N, 3, H, W) float in [0, 1] -> (N, 3, sH, sW)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vsr.device import cpu_has_native_bf16, resolve_device
from vsr.errors import CheckpointError, ConfigError
from vsr.options import (
    BACKEND_CHOICES,
    BACKEND_PRECISIONS,
    PRECISIONS,
    check_at_least,
    check_choice,
    check_model,
    check_scale,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> "bfloat16": how JSON results and logs name a precision."""
    return str(dtype).removeprefix("torch.")


# The deepest frames (bits per component) each reduced precision carries: its significand
# holds 8 bits in bf16 and 11 in fp16, so frames beyond that run in fp32 under "auto".
_MAX_BIT_DEPTH = {torch.bfloat16: 8, torch.float16: 10}
# Input frames (H x W) below this many pixels stay in fp32 on the CPU: drn-t-x2-drc50, 2 threads,
# s/frame fp32 / bf16 at 144x176 0.056 / 0.080, at 240x320 0.250 / 0.204, at 360x640 0.464 /
# 0.319 (benchmarks/ENGINE.md, "CPU: bf16")
_BF16_MIN_PIXELS = 50_000


def is_small_frame(pixels: int | None) -> bool:
    """Whether input frames of ``pixels`` (H x W; None: not known, taken as large) stay in fp32
    on a CPU under ``precision="auto"``."""
    return pixels is not None and pixels < _BF16_MIN_PIXELS


def auto_dtype(device: torch.device, supported: tuple[torch.dtype, ...], *, network: bool,
               bit_depth: int = 8, pixels: int | None = None,
               native_bf16: bool | None = None) -> torch.dtype:
    """What ``precision="auto"`` runs a model in: one that computes in ``supported`` dtypes
    on ``device`` (``network``: a neural network, not bicubic) for input frames of
    ``bit_depth`` bits and ``pixels`` pixels (None: not known, taken as large).

    On CUDA fp16. On a CPU with bf16 in hardware (``native_bf16``; None asks
    :func:`vsr.device.cpu_has_native_bf16`) a network runs in bf16 on frames of 50,000
    pixels and more: 1.4-1.8x the speed of fp32 for the shipped DRNs at 720p out, 0.01-0.03 dB
    below it on Set5/Set14/B100 (docs/engine.md, "Precision"); on smaller frames bf16 is
    slower. All else, bicubic on the CPU and frames deeper than the reduced precision carries,
    runs in fp32.
    """
    if device.type == "cuda":
        reduced = torch.float16
    else:
        if native_bf16 is None:
            native_bf16 = cpu_has_native_bf16()
        if not (network and native_bf16) or is_small_frame(pixels):
            return torch.float32
        reduced = torch.bfloat16
    if reduced in supported and bit_depth <= _MAX_BIT_DEPTH[reduced]:
        return reduced
    return torch.float32


def resolve_precision(precision: str, handle, *, bit_depth: int = 8,
                      pixels: int | None = None, backend: str = "auto") -> torch.dtype:
    """The dtype of ``precision`` for ``handle`` run by ``backend`` (auto: :func:`auto_dtype`
    among the dtypes both support). Raises ConfigError for an unknown name or a precision the
    model or the backend does not run."""
    check_choice("precision", precision, PRECISIONS)
    supported = tuple(getattr(handle, "supported_dtypes", (torch.float32,)))
    runs = BACKEND_PRECISIONS.get(backend)
    if runs is not None:
        supported = tuple(d for d in supported if dtype_name(d) in runs)
    if precision == "auto":
        return auto_dtype(handle.device, supported, bit_depth=bit_depth, pixels=pixels,
                          network=getattr(handle, "module", None) is not None)
    if runs is not None and precision not in runs:
        raise ConfigError(f"the {backend} backend runs in {' or '.join(runs)} only, "
                          f"not {precision}")
    dtype = DTYPES[precision]
    if dtype != torch.float32 and dtype not in supported:
        raise ConfigError(f"{handle.name} does not support {precision}")
    return dtype


def check_finite_weights(tensors: Iterable[tuple[str, torch.Tensor]], source: object) -> None:
    """Raise CheckpointError, naming ``source`` (a file, a model), if a floating-point tensor
    of ``tensors`` (name, tensor pairs) holds NaN or infinity: such a network turns every frame
    into garbage (NaN becomes 0 in uint8) without any other error."""
    for name, value in tensors:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinity (a damaged "
                                  f"file or a diverged training run)")


def load_model(model: str | None = None, *, scale: int | None = None,
               device: str | torch.device = "auto", precision: str = "auto",
               bit_depth: int = 8, pixels: int | None = None, backend: str = "auto"):
    """A model handle (``vsr.models.Upscaler``) from a registry name, a .safetensors path or
    ``"bicubic"`` (None: the default model), on ``device`` in ``precision``.

    ``scale`` is needed for bicubic and must match a network's own when given; ``bit_depth``
    and ``pixels`` (H x W) describe the input frames it will see, if known
    (``precision="auto"`` depends on them, and on the ``backend`` that will run it). Raises
    ConfigError (a bad argument: a model that is no name, a scale under 2, an unknown device,
    precision or backend; CUDA asked for but absent), ModelError (unknown name, scale
    mismatch), CheckpointError (bad file, weights not finite).
    """
    from vsr.models import DEFAULT_MODEL
    from vsr.models import load_model as load_registry_model

    check_model(model)
    check_scale(scale)
    check_choice("precision", precision, PRECISIONS)
    check_choice("backend", backend, BACKEND_CHOICES)
    check_at_least("bit_depth", bit_depth, 1)
    check_at_least("pixels", pixels, 1, optional=True)
    device = resolve_device(device, require_available=True)
    handle = load_registry_model(model or DEFAULT_MODEL, scale=scale, device=str(device))
    if handle.module is not None:  # in the file's own dtype: a cast could overflow later
        check_finite_weights(handle.module.state_dict().items(), model or DEFAULT_MODEL)
    if scale is not None and handle.scale != scale:
        raise ConfigError(f"{handle.name} upscales x{handle.scale}, not x{scale}")
    return handle.to(dtype=resolve_precision(precision, handle, bit_depth=bit_depth,
                                               pixels=pixels, backend=backend))
