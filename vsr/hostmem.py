"""Host allocator tuning for frame-sized tensors (glibc on Linux).

glibc serves every block above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap`` and returns it with ``munmap`` on free. A 1440p float frame is 44 MB, so every
intermediate tensor of every frame is mapped, faulted in page by page (zero-filled by the kernel)
and unmapped again. Measured on the 2-core VM: bicubic 720p -> 1440p on the CPU ran at 11.6 fps
with 1.16 s of system time per 20 frames, and at 20.7 fps with 0.06 s once large blocks came from
the heap and freed memory was kept for reuse. In a worker thread (as the pipeline runs it),
1080p -> 4K: 3.9 fps plain, 5.2 with the threshold alone, 7.5-9.0 with one arena as well.
:func:`vsr.configure_runtime` applies :func:`keep_freed_memory` (the CLI calls it at start; a
library user may); nothing else in the library reads or changes this process-wide setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
                  "LD_PRELOAD")
_applied = False


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _applied


def keep_freed_memory() -> bool:
    """Serve large blocks from one heap and keep freed memory for reuse (glibc ``mallopt``).

    Returns True when applied; False off glibc, or when the environment already chooses
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX``, an
    ``LD_PRELOAD`` allocator such as jemalloc, or ``VSR_MALLOC=system``). The resident size
    then stays at the run's peak instead of shrinking between frames.
    """
    if not sys.platform.startswith("linux") or os.environ.get("VSR_MALLOC") == "system":
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    global _applied
    # One arena: a thread's own arena grows in heaps of at most 64 MiB, so a larger block (a
    # 4K float frame is 100 MB) allocated by a pipeline thread would still be mmap'ed each time.
    ok = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
          and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    _applied = _applied or ok
    log.debug("glibc mallopt (one arena, mmap threshold 1 GiB, no trimming): %s",
              "applied" if ok else "refused")
    return ok
