"""torch.compile for the frame shape in use (static shapes); CUDA graphs on CUDA.

On CUDA the mode is ``reduce-overhead``: the whole network replays as one CUDA graph. A graph
replay overwrites its output buffer, so each result is cloned before the next call.
"""

from __future__ import annotations

import torch

from vsr.backends.base import Backend, NetworkOnly, first_reason, needs, needs_network


def _unavailable(handle) -> str | None:
    return first_reason(needs_network(handle, "compile"),
                        needs(hasattr(torch, "compile"), "this torch has no torch.compile"))


def _build(handle, shape, cache):
    cuda = handle.device.type == "cuda"
    net = NetworkOnly(handle.module).eval()
    compiled = torch.compile(net, dynamic=False, fullgraph=True,
                             mode="reduce-overhead" if cuda else None)
    x = torch.zeros(shape, device=handle.device, dtype=handle.dtype)
    with torch.inference_mode():
        for _ in range(3 if cuda else 1):  # compile now (and record the graph), not mid-run
            if cuda:
                torch.compiler.cudagraph_mark_step_begin()
            compiled(x)
    if not cuda:
        return compiled

    def run(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x).clone()

    return run


COMPILE = Backend("compile", "torch.compile (CUDA graphs on CUDA)", _unavailable, _build)
