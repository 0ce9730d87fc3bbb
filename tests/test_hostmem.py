"""Allocator tuning: frame-sized blocks are reused instead of re-mapped page by page."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = r"""
import resource, sys, threading
import torch
if sys.argv[1] == "tuned":
    from vsr.hostmem import keep_freed_memory
    assert keep_freed_memory()
from vsr.pipeline.compute import to_image, to_model_input
from vsr.resize import imresize
torch.set_num_threads(1)
frame = torch.zeros(720, 1280, 3, dtype=torch.uint8)
def one():  # the CPU engine's bicubic path for one 720p frame: 44 MB float intermediates
    return to_image(imresize(to_model_input(frame, torch.float32), 2), torch.uint8)
out = []
def work():  # in a worker thread, as the pipeline's inference stage runs
    for _ in range(8):  # the heap settles within a few frames
        one()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        one()
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work)
t.start()
t.join()
print(out[0])
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
                        "LD_PRELOAD", "VSR_MALLOC")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return int(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_large_blocks_are_reused_without_page_faults() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    # untuned: every frame-sized intermediate is mmap'ed and faulted in again, page by page
    assert plain > 40_000, plain  # 8 frames; about 4-6k page faults each
    assert tuned < plain // 5, (tuned, plain)  # usually 0; a late heap growth costs ~5k


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from vsr.hostmem import keep_freed_memory

    monkeypatch.setenv("VSR_MALLOC", "system")
    assert keep_freed_memory() is False
    monkeypatch.delenv("VSR_MALLOC")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
