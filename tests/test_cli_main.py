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


_HELP_PROBE = """
import contextlib, io, sys
command = sys.argv[1]
sys.argv = ["vsr", command, "--help"]
from vsr.cli.main import main
code = None
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main()
    except SystemExit as exc:
        code = exc.code
print(code, "Usage: vsr " + command in out.getvalue(), "torch" in sys.modules)
"""

_LIGHT_HELP = ["upscale", "batch", "stream", "train", "compress", "bench", "models", "export",
               "eval"]


@pytest.mark.parametrize("command", _LIGHT_HELP)
def test_command_help_does_not_import_torch(command: str) -> None:
    """`vsr COMMAND --help` answers at once: torch (seconds to import) loads only when a
    command runs."""
    out = subprocess.run([sys.executable, "-c", _HELP_PROBE, command], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.split() == ["0", "True", "False"], out


@pytest.mark.parametrize("args, names", [
    (["upscale", "--crf", "-1", "a.mp4", "b.mp4"], "'--crf'"),
    (["upscale", "a.mp4"], "'OUT'"),
    (["train", "--data", "/no/such/folder"], "'--data'"),
    (["no-such-command"], "'no-such-command'"),
])
def test_a_usage_error_is_one_error_line(args: list[str], names: str) -> None:
    """Bad options and arguments get the one `Error:` line every other failure gets (click's
    own report is four lines: usage, a hint, a blank line, the error), naming the option."""
    r = subprocess.run([sys.executable, "-m", "vsr", *args], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and names in lines[0] and "--help" in lines[0]
    assert r.stdout == ""


def test_the_bare_command_still_shows_its_help() -> None:
    r = subprocess.run([sys.executable, "-m", "vsr"], capture_output=True, text=True,
                       timeout=120)
    assert "Commands:" in r.stdout + r.stderr and "Error:" not in r.stdout + r.stderr
