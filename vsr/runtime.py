"""Process-wide tuning for frame-sized work on the CPU: one explicit call.

    import vsr
    vsr.configure_runtime()  # first thing, before anything imports torch

The `vsr` command makes this call at start; a program using the library makes it itself (or
not: everything works without it, slower on the CPU). Nothing else in the library changes
process-wide settings, but for one: onnxruntime starts with its telemetry off
(``ORT_DISABLE_TELEMETRY``, vsr.backends.onnx.import_onnxruntime). The choice of backend
never depends on it.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

# True once a call put OMP_WAIT_POLICY into the environment after torch had loaded: the
# variable is then there for child processes only, and later calls must still say so.
_policy_set_after_torch = False


@dataclass(frozen=True)
class RuntimeSettings:
    """What :func:`configure_runtime` found or set."""

    omp_wait_policy: str | None  # OMP_WAIT_POLICY in the environment after the call
    omp_effective: bool  # False: torch was imported first, so OpenMP had read it already
    freed_memory_kept: bool  # glibc keeps freed memory and one arena (vsr.hostmem)
    threads: int | None  # torch's intra-op threads, when set by this call


def configure_runtime(*, threads: int | None = None, omp_wait_policy: str | None = "PASSIVE",
                      keep_freed_memory: bool = True) -> RuntimeSettings:
    """Tune this process for decode -> infer -> encode on the CPU; returns what took effect.

    ``omp_wait_policy``: OpenMP workers that spin between parallel regions take the cores
    the decode and encode threads need (2 cores, bicubic 720p bench: pipeline 2.63 fps <
    serial 4.07 fps spinning, 3.60 >= 3.51 waiting passively). Set only when the environment
    does not choose already; OpenMP reads it when torch loads, so call this before importing
    torch (None: leave it). ``keep_freed_memory``: large blocks from one heap, kept for reuse
    (glibc; see :mod:`vsr.hostmem`), unless the environment chooses an allocator.
    ``threads``: torch's intra-op thread count (None: torch's default). Raises ConfigError for
    a thread count below 1.
    """
    from vsr.errors import ConfigError

    if threads is not None and (type(threads) is not int or threads < 1):
        raise ConfigError(f"threads must be an integer of at least 1, got {threads!r}")
    global _policy_set_after_torch
    effective = True
    if omp_wait_policy is not None:
        torch_loaded = "torch" in sys.modules
        chosen_before = "OMP_WAIT_POLICY" in os.environ and not _policy_set_after_torch
        effective = not torch_loaded or chosen_before
        if "OMP_WAIT_POLICY" not in os.environ:
            os.environ["OMP_WAIT_POLICY"] = omp_wait_policy
            _policy_set_after_torch = torch_loaded
        if not effective:
            log.warning("configure_runtime: torch was imported first; OMP_WAIT_POLICY=%s "
                        "applies to child processes only", omp_wait_policy)
    kept = False
    if keep_freed_memory:
        from vsr.hostmem import keep_freed_memory as _keep

        kept = _keep()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return RuntimeSettings(omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                           omp_effective=effective, freed_memory_kept=kept, threads=threads)
