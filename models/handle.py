"""Model handles: what callers get instead of a bare nn.Module.

A handle knows its scale, the dtypes it supports and the input size it needs; it validates
(N, C, H, W) input, pads to the multiple the network needs, crops back, and upscales uint8 or
float frames.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.device import resolve_device
from vsr.errors import ModelError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_frames(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ModelError(f"expected frames shaped (N, 3, H, W), got {tuple(x.shape)}")
    if x.shape[2] < 1 or x.shape[3] < 1 or x.shape[0] < 1:
        raise ModelError(f"empty frame batch {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ModelError(f"frames must be uint8 or floating point, got {x.dtype}")


def _check_float_range(x: torch.Tensor) -> None:
    """Float frames hold values in [0, 1]: frames in 0..255 came out white all over (the
    output is clamped), and NaN came out NaN, without a word. Raises ModelError."""
    top = float(x.detach().abs().amax())  # one reduction, one wait: NaN and inf come out too
    if not math.isfinite(top):
        raise ModelError("float frames hold NaN or infinity")
    if top > 2.0:
        raise ModelError(f"float frames hold values in [0, 1], got up to {top:g} "
                         "(frames of 0..255: divide by 255, or pass uint8)")


def _check_model_input(x: torch.Tensor, handle: Upscaler) -> None:
    """What ``infer`` needs, from the tensor's metadata only (no host sync): float
    (N, 3, H, W), H and W at least 1 (N may be 0: no frames in, none out), and for a network
    its own dtype and device type (else torch fails deep inside with a RuntimeError)."""
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ModelError(f"expected frames shaped (N, 3, H, W), got {tuple(x.shape)}")
    if x.shape[2] < 1 or x.shape[3] < 1:  # torch's resize and conv fail deep inside
        raise ModelError(f"empty frames {tuple(x.shape)}: height and width must be at least 1")
    if not x.is_floating_point():
        raise ModelError(f"infer takes float frames in [0, 1], got {x.dtype} (upscale takes "
                         f"uint8)")
    if handle.module is not None and (x.dtype != handle.dtype
                                      or x.device.type != handle.device.type):
        raise ModelError(f"{handle.name} runs {handle.dtype} on {handle.device}, got "
                         f"{x.dtype} on {x.device}")


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A network's parameters and buffers by name, non-persistent buffers too (rgb_mean)."""
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return tensors


# Below this many pixels a side the convolutions' zero padding reaches every output pixel: a
# flat 1x1 picture of (10, 200, 30) came out (50, 134, 52) from the default model, 2x2 (22, 177,
# 35); from 16 pixels on a flat picture stays flat inside its border.
NETWORK_MIN_SIDE = 16


def input_padding(handle, h: int, w: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): the replicate padding of an (h, w) input before ``handle``'s
    network: up to its ``size_multiple`` on the right and bottom, and a side under its
    ``min_side`` centred in that many pixels (then up to the multiple)."""
    def one(n: int) -> tuple[int, int]:
        if n >= handle.min_side:
            return 0, (-n) % handle.size_multiple
        total = handle.min_side - n
        total += (-(n + total)) % handle.size_multiple
        return total // 2, total - total // 2
    (left, right), (top, bottom) = one(w), one(h)
    return left, right, top, bottom


def run_padded(handle, run, x: torch.Tensor) -> torch.Tensor:
    """``run(x)`` on ``x`` padded by :func:`input_padding`, its output cut back to scale x x."""
    h, w = x.shape[-2:]
    left, right, top, bottom = input_padding(handle, h, w)
    if not (left or right or top or bottom):
        return run(x)
    s = handle.scale
    y = run(F.pad(x, (left, right, top, bottom), mode="replicate"))
    return y[..., top * s:(top + h) * s, left * s:(left + w) * s]


class Upscaler:
    """Base handle. Subclasses implement ``_run`` on padded float input."""

    name: str
    scale: int
    size_multiple: int = 1
    min_side: int = 1  # a smaller input is padded to this many pixels a side (input_padding)
    supported_dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    # Whether outputs can go non-finite or black (a network in reduced precision can): the
    # pipeline's guard checks each frame only where this is True.
    can_fail: bool = True
    module: nn.Module | None = None
    info: Mapping[str, Any]
    # the network's floating tensors as they were before a move to fp16/bf16, on the CPU (there
    # the very tensors it had, not a copy): what an fp32 run of this model computes with
    _exact: dict[str, torch.Tensor] | None = None

    def __init__(self, name: str, scale: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, info: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.scale = int(scale)
        self.info = dict(info or {})
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.to(device=device, dtype=dtype)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Upscaler:
        """Move the handle (and its network) in place; returns itself."""
        if dtype is not None and dtype not in self.supported_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.supported_dtypes)
            raise ModelError(f"{self.name} does not support {dtype}; supported: {names}")
        # both checked before either changes: a refused move leaves the handle as it was
        # (it said float16 while its network stayed in float32)
        if device is not None:  # a ConfigError for a bad or absent device, not torch's own
            self.device = resolve_device(device, require_available=True)
        if dtype is not None:
            self.dtype = dtype
        if self.module is not None:
            if self.dtype in (torch.float16, torch.bfloat16) and self._exact is None \
                    and any(t.dtype == torch.float32 for t in _tensors(self.module).values()):
                # the weights as they are in fp32, kept (on the CPU) before they are rounded:
                # an fp32 run after a reduced-precision one (the fp32 fallback, with_dtype)
                # computes with these, not with weights rounded to bf16's 8 bits. On the CPU
                # these are the tensors themselves, not a copy: the move below gives the
                # network new ones and never writes the old (a handle made by with_dtype may
                # compute with them too). Floating tensors only: no move changes the others
                self._exact = {k: t.detach() if t.device.type == "cpu"
                               else t.detach().to("cpu", copy=True)
                               for k, t in _tensors(self.module).items()
                               if t.is_floating_point()}
            self.module.to(device=self.device, dtype=self.dtype)
            if self.dtype == torch.float32 and self._exact is not None:
                with torch.no_grad():
                    for k, t in _tensors(self.module).items():
                        kept = self._exact.get(k)
                        if kept is not None and kept.shape == t.shape:
                            t.copy_(kept)
                self._exact = None  # exact again: the next move down keeps what it has then
        return self

    def with_dtype(self, dtype: torch.dtype) -> Upscaler:
        """This model in ``dtype`` on this handle's device as a new handle (this one itself
        where it already runs ``dtype``), this handle unchanged: what several runs share is
        never converted under them. The new one computes with this handle's weights as exact
        as it holds them: the fp32 copy a move to fp16/bf16 kept (not the rounded ones).

        Memory: on the CPU the new network's tensors are this handle's (or its fp32 copy's)
        where the dtype is the same, not copies; nothing may change either in place (inference
        only reads them). Raises ModelError for a dtype the model does not support."""
        if dtype == self.dtype:
            return self
        other = copy.copy(self)
        other.info = dict(self.info)
        other._exact = None
        if self.module is not None:
            exact = self._exact or {}
            memo: dict[int, object] = {}  # deepcopy takes these for the network's tensors
            for k, t in _tensors(self.module).items():
                kept = exact.get(k)
                data = kept if kept is not None and kept.shape == t.shape else t.detach()
                memo[id(t)] = (nn.Parameter(data, requires_grad=t.requires_grad)
                               if isinstance(t, nn.Parameter) else data)
            other.module = copy.deepcopy(self.module, memo)
        return other.to(dtype=dtype)  # on this device: the fp32 copy is on the CPU

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) RGB in [0, 1], on the handle's device and dtype ->
        (N, 3, scale*H, scale*W), same device and dtype, not clamped. No host syncs.

        Raises ModelError for input of another shape, dtype or device."""
        with torch.inference_mode():
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``infer`` without its inference mode (the caller chooses the mode)."""
        _check_model_input(x, self)
        return run_padded(self, self._run, x)

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (clamped, rounded), or float [0, 1] -> float (clamped).

        The result is on the handle's device, an ordinary tensor the caller may change in
        place (an inference-mode tensor refuses that outside inference mode: drawing on a
        frame in a GUI thread failed). Raises ModelError for a bad shape or dtype, and for
        float frames holding NaN, infinity or values far outside [0, 1] (one check of them).
        """
        _check_frames(x)
        as_uint8 = x.dtype == torch.uint8
        if not as_uint8:
            _check_float_range(x)
        with torch.no_grad():
            src = x.to(self.device, non_blocking=True)
            src = src.to(self.dtype) / 255.0 if as_uint8 else src.to(self.dtype)
            # scaled and rounded in fp32: in bf16, x255 would round once more before round_()
            # (0.3 dB on a 42 dB clip)
            y = self._forward(src).float().clamp_(0.0, 1.0)
            if as_uint8:
                return y.mul_(255.0).round_().to(torch.uint8)
            return y.to(x.dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, scale={self.scale}, "
                f"device={self.device}, dtype={self.dtype})")


class NetworkUpscaler(Upscaler):
    """A handle around a DRN-style network whose forward(x, return_all=False) gives x_S."""

    min_side = NETWORK_MIN_SIDE

    def __init__(self, name: str, module: nn.Module, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, info: Mapping[str, Any] | None = None) -> None:
        self.module = module.eval()
        self.size_multiple = int(getattr(module, "size_multiple", 1))
        super().__init__(name, int(module.scale), device=device, dtype=dtype, info=info)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, return_all=False)


class BicubicUpscaler(Upscaler):
    """The reference baseline: MATLAB-compatible bicubic (vsr.resize.imresize), no network."""

    supported_dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    can_fail = False  # interpolates finite input: finite, and lit wherever the input is

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        from vsr.resize import imresize

        if x.dtype in (torch.float16, torch.bfloat16):  # matmul weights in fp32 for accuracy
            return imresize(x.float(), self.scale).to(x.dtype)
        return imresize(x, self.scale)
