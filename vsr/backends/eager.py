"""The reference backend: the handle's own ``infer`` (always available)."""

from __future__ import annotations

from vsr.backends.base import Backend


def _unavailable(handle) -> str | None:
    return None


def _build(handle, shape, cache):
    return handle.infer


EAGER = Backend("eager", "PyTorch eager (the reference)", _unavailable, _build)
