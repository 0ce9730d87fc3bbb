"""One place that turns a --device spelling into a torch.device, and what memory a device has
and a network's activations take on it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from vsr.errors import ConfigError


def resolve_device(spec: str | torch.device, *,
                   require_available: bool = False) -> torch.device:
    """auto -> cuda if available else cpu; ``cpu``, ``cuda`` or ``cuda:N`` (or such a
    torch.device) as given.

    Raises ConfigError for a bad spelling, and (with ``require_available``) for CUDA asked for
    on a machine without it.
    """
    if isinstance(spec, torch.device):  # checked as its spelling is: no meta, no absent CUDA
        spec = str(spec)
    if not isinstance(spec, str):  # torch.device(None) or (5) would not be a ConfigError
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {spec!r}")
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


@functools.cache
def cpu_capabilities() -> dict:
    """What torch knows of this CPU's instruction sets (``torch.cpu.get_capabilities()``:
    "avx2", "avx512_f", "avx512_bf16", ...); empty where torch cannot tell."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        return dict(get()) if get is not None else {}
    except RuntimeError:
        return {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere
    oneDNN emulates bf16, slower than fp32, so ``precision="auto"`` stays in fp32 there."""
    caps = cpu_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


# x264's names for the x86 instruction sets it can use below AVX-512, each with the name
# torch.cpu.get_capabilities() gives it (MMX2 is part of every x86-64 CPU with SSE)
_X264_FLAGS = (("MMX2", "sse"), ("SSE", "sse"), ("SSE2", "sse2"), ("SSE3", "sse3"),
               ("SSSE3", "ssse3"), ("SSE4.1", "sse4_1"), ("SSE4.2", "sse4_2"),
               ("LZCNT", "lzcnt"), ("AVX", "avx"), ("FMA3", "fma3"), ("BMI1", "bmi"),
               ("BMI2", "bmi2"), ("AVX2", "avx2"))


def x264_asm_without_avx512() -> str | None:
    """x264's ``asm`` flags for this CPU with AVX-512 left out, or None on a CPU without
    AVX-512 (x264 then chooses alone).

    x264's AVX-512 routines make its output depend on memory it did not write for small
    frames (vsr.codecs' crop clips, outputs of tiny videos). On this repository's AMD EPYC VM a
    3-frame 16-40 px clip coded the same input differently in 1 to 23 of 300 round trips with
    other allocations in between (101 of 300 with the flags named explicitly), in 0 of 1200
    with AVX2 at most; 40 `vsr upscale` runs of a 16x16 clip gave 2 different outputs.
    Capped, x264 codes otherwise alike, though not always bit for bit: synthetic 64, 256 and
    720 px square clips came out identical, 24 real 1440p frames differently (0.06% fewer
    bytes, 0.006 dB lower PSNR), each the same on every run either way. Only flags the CPU has
    are named: x264 would run any it is told to.
    """
    caps = cpu_capabilities()
    if not caps.get("avx512_f"):
        return None
    return ",".join(name for name, cap in _X264_FLAGS if caps.get(cap))


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new allocations on ``device``: the GPU's free memory, or on the CPU
    the smaller of MemAvailable and what the cgroup (a container's limit) leaves; None where
    neither is known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def leaf_output_bytes(modules: Iterable[torch.nn.Module], forward: Callable[[], object],
                      value_bytes: int | None = None) -> int:
    """Bytes of the outputs of every leaf module of ``modules`` while ``forward()`` runs
    (without gradients): each value at its own size, or at ``value_bytes``. All of them, as if
    none were freed: more than an inference's peak, a lower bound for a training step's."""
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, out: object) -> None:
        nonlocal total
        for t in out if isinstance(out, list | tuple) else (out,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * (value_bytes or t.element_size())

    hooks = [m.register_forward_hook(count) for net in modules for m in net.modules()
             if not any(m.children())]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in hooks:
            h.remove()
    return total
