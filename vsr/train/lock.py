"""One process at a time in a run folder (``vsr train --out/--resume``, ``vsr compress --out``).

Two runs in one folder trample each other: a second ``vsr train`` started before the first's
first save passed the "already holds a run" check and both appended to metrics.csv and
replaced each other's state (one then died on a vanished temporary file); two ``vsr compress``
replaced each other's stage files without --overwrite. The holder keeps an exclusive ``flock``
on ``<folder>/.vsr.lock`` while it runs; the kernel drops it when the process ends, however it
ends, so a file left by a killed run never blocks the next. The holder removes the file (while
still holding it) on release; a process that locked a file so removed sees that it is no longer
the folder's and tries again, so two processes never both believe they hold the folder.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vsr.errors import OutputError
from vsr.io.output import write_reason

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not guarded
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".vsr.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``folder`` for this process while the body runs (``what``: the command, for the
    message another process gets). The folder is made if need be; folders made here are
    removed on release if they are empty then (a run that failed before writing anything
    leaves no folder behind). On a file system without flock the run goes unguarded.

    Raises:
        OutputError: another process holds the folder, or it cannot be made or written.
    """
    folder = Path(folder)
    made = [d for d in (folder, *folder.parents) if not d.exists()]
    fd = None
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot make the folder ({write_reason(exc)})") from None
        fd = _acquire(folder / LOCK_NAME, folder, what) if fcntl is not None else None
        yield
    finally:
        if fd is not None:
            (folder / LOCK_NAME).unlink(missing_ok=True)  # while held: see the module docstring
            os.close(fd)
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break


def _acquire(path: Path, folder: Path, what: str) -> int | None:
    """The open, locked lock file; None where the file system has no flock."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write in the folder ({write_reason(exc)})"
                              ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"{folder} is in use by another process{holder}; wait for it "
                              f"to finish, or use another folder") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                log.warning("%s: no file locks here; another run could use the folder at the "
                            "same time", folder)
                return None
            raise OutputError(f"{folder}: cannot lock the folder ({write_reason(exc)})"
                              ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # locked a file its holder removed on release: lock the folder's own
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {what}\n".encode())
        except OSError:  # who holds it is only for the message of another process
            pass
        return fd


def _holder(fd: int) -> str:
    """" (pid N, vsr train)" as the holder wrote it, or "" if it has not yet."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split(maxsplit=1)
    except OSError:
        return ""
    if len(text) == 2 and text[0].isdigit():
        return f" (pid {text[0]}, {text[1].strip()})"
    return ""
