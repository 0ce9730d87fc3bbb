"""Size limits for untrusted input, each raised (or lowered) by one environment variable."""

from __future__ import annotations

import os

from vsr.errors import ConfigError


def env_limit(name: str, default: int) -> int:
    """``$name`` as a positive integer, or ``default`` where it is unset or empty.

    Raises ConfigError for any other value, naming the variable.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, not {text!r}")
    return value
