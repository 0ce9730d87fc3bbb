"""Output-path rules shared by the sinks: refuse to clobber, write to a temporary file in
the destination folder, and rename it into place only when the output is complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from vsr.errors import OutputError


def check_output_path(path: str | os.PathLike, *, overwrite: bool,
                      input_path: str | os.PathLike | None = None) -> Path:
    """Validate ``path`` for writing; raises OutputError with a one-line reason."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output is a directory: {p}")
    if input_path is not None and p.exists() and p.resolve() == Path(input_path).resolve():
        raise OutputError(f"output would replace the input: {p}")
    if p.exists() and not overwrite:
        raise OutputError(f"output exists (use --overwrite): {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    return p


def temp_path_for(path: Path) -> Path:
    """A hidden sibling of ``path`` with the same suffix (so the format is guessed the same)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def finish(temp: Path, final: Path) -> None:
    try:
        os.replace(temp, final)
    except OSError as exc:
        discard(temp)
        raise OutputError(f"cannot move the finished output to {final}: {exc.strerror}") from exc


def discard(temp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


class SinkContext:
    """A sink as a context manager: a clean exit closes (flushes, renames into place), an
    exception aborts (the temporary output is removed). Subclasses define close and abort."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
