"""The console entry point: environment it sets up before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import os, sys
sys.argv = ["vsr", "--version"]
from vsr.cli.main import main
try:
    main()
except SystemExit:
    pass
print("POLICY=" + os.environ.get("OMP_WAIT_POLICY", ""))
"""


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_the_user_chose(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f"POLICY={expected}" in out
