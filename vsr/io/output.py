"""Output-path rules shared by the sinks: refuse to clobber, write to a temporary file in
the destination folder, and rename it into place only when the output is complete.

A temporary file is named ``.STEM.PID.HEX.partial.SUFFIX`` after the output it becomes: hidden,
the same suffix (so the format is guessed the same), and the writer's process id, so a later
run can tell the partial files of dead runs (killed with SIGKILL, a power cut) from those of
live ones and remove only the former. HEX is 12 hex digits: 4 naming the machine (its host
name), 8 random; a process id means nothing on another machine sharing the folder (NFS) or
in another container, so only this host's partials are ever judged. The STEM is cut and
tagged with a hash where the whole name would pass the file system's name limit, so every
legal output name has a legal temp name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import stat
import uuid
from pathlib import Path

from vsr.errors import OutputError

log = logging.getLogger(__name__)

# Outputs whose muxer writes more files next to the named one (playlists and their segments,
# manifests): those files would bypass the temporary-file-then-rename rule.
MULTI_FILE_SUFFIXES = {".m3u8": "HLS", ".mpd": "DASH"}

_PID_DIGITS = 7  # pid_max is at most 2**22 on Linux
HOST_TAG = hashlib.sha256(socket.gethostname().encode(errors="replace")).hexdigest()[:4]
_WRITER = r"(\d{1,7})\.([0-9a-f]{4})[0-9a-f]{8}"  # PID.HEX: the pid, the host tag, random
_PARTIAL = re.compile(_WRITER)
_ANY_PARTIAL = re.compile(r"\..*\." + _WRITER + r"\.partial[^/]*")
_PLAIN_REASONS = {errno.ENOSPC: "no space left on the device",
                  errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "the file is too large for the file system",
                  errno.EROFS: "the file system is read-only"}


def file_id(path: str | os.PathLike) -> tuple[int, int] | str:
    """What names one file whatever the spelling or link (symbolic or hard): device and inode
    where it exists, else the path with links resolved. Hashable, for many paths at once."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same path in another spelling, a
    symbolic or a hard link. Where one does not exist (yet), by name with links resolved."""
    return file_id(a) == file_id(b)


def check_output_path(path: str | os.PathLike, *, overwrite: bool,
                      input_path: str | os.PathLike | None = None) -> Path:
    """Validate ``path`` for writing; raises OutputError with a one-line reason. Returns the
    path to write: where ``path`` is a symbolic link to a file, that file (a link is followed,
    as the ffmpeg program follows it, not replaced by a file of its own)."""
    p = Path(path)
    kind = MULTI_FILE_SUFFIXES.get(p.suffix.lower())
    if kind is not None:
        raise OutputError(f"{kind} output ({p.suffix}) writes segment files beside {p.name} "
                          "that cannot be finished atomically; write .mp4 or .mkv and package "
                          "it afterwards")
    named = p
    try:
        exists = p.exists() or p.is_symlink()  # a link to nothing is there too
        if p.is_dir():
            raise OutputError(f"output is a directory: {p}")
        if input_path is not None and exists and same_file(p, input_path):
            raise OutputError(f"output would replace the input: {p}")
        if (kind := _special(p)) is not None:
            # the file is written whole and renamed into place: that would put a file where
            # the pipe or device was (/dev/stdout, /dev/null) and nothing would go through it
            raise OutputError(f"output {p} is a {kind}, not a file: name a file ('vsr "
                              "stream' writes to pipes)")
        if p.is_symlink() and p.exists():  # a link to nothing is replaced (--overwrite):
            p = Path(os.path.realpath(p))  # no file is made where it happens to point
    except OSError as exc:  # a path too long as a whole, a loop of links
        raise OutputError(f"cannot use the output path {p}: {exc.strerror}") from exc
    if exists and not overwrite:
        raise OutputError(f"output exists (use --overwrite): {named}")
    parent = p.parent if str(p.parent) else Path(".")
    limit = name_max(parent)
    if len(os.fsencode(p.name)) > limit:
        raise OutputError(f"output file name is too long ({len(os.fsencode(p.name))} bytes; "
                          f"the limit is {limit}): {p.name[:40]}...")
    if not parent.is_dir():
        if parent.exists():
            raise OutputError(f"output folder {parent} is a file, not a folder")
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    return p


_SPECIAL_FILES = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _special(path: Path) -> str | None:
    """What ``path`` (its links followed) is where it is not a regular file or a folder: a
    named pipe, a device, a socket; None otherwise (or where it does not exist)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # the parent's checks say what is wrong
        return None
    return next((kind for test, kind in _SPECIAL_FILES if test(mode)), None)


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of ``folder`` takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _cut(text: str, nbytes: int) -> str:
    """The longest prefix of ``text`` whose file-system encoding fits in ``nbytes``."""
    out, used = [], 0
    for ch in text:
        n = len(os.fsencode(ch))
        if used + n > nbytes:
            break
        out.append(ch)
        used += n
    return "".join(out)


def _temp_stem(path: Path) -> str:
    """``path``'s stem as it appears in its temporary names (the same on every call)."""
    fixed = len(os.fsencode(f"..{'9' * _PID_DIGITS}.{'0' * 12}.partial{path.suffix}"))
    room = name_max(path.parent if str(path.parent) else Path(".")) - fixed
    stem = path.stem
    if len(os.fsencode(stem)) <= room:
        return stem
    if room < 12:
        raise OutputError(f"output file name extension is too long: {path.suffix[:40]}...")
    tag = hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    return f"{_cut(stem, room - 9)}~{tag}"


def temp_path_for(path: Path) -> Path:
    """A new hidden sibling of ``path`` to write into, named for this process (see the module
    docstring); partial files of ``path`` left by dead processes are removed first."""
    path = Path(path)
    remove_stale_partials(path)
    return path.with_name(f".{_temp_stem(path)}.{os.getpid()}.{HOST_TAG}{uuid.uuid4().hex[:8]}"
                          f".partial{path.suffix}")


def partial_writer(temp: Path) -> int | None:
    """The process id in a temporary file's name, or None if it is not one of ours."""
    m = _ANY_PARTIAL.fullmatch(Path(temp).name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (a zombie cannot; unknown counts as alive)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _gone(writer: re.Match) -> bool:
    """Whether the writer a name matched by _WRITER names has exited (on this machine)."""
    return writer.group(2) == HOST_TAG and not pid_alive(int(writer.group(1)))


def is_stale_partial(temp: Path) -> bool:
    """Whether ``temp`` is a temporary file of this machine (named as above) whose writer
    has exited."""
    m = _ANY_PARTIAL.fullmatch(Path(temp).name)
    return m is not None and _gone(m)


def stale_partials(path: Path) -> list[Path]:
    """Temporary files of the output ``path`` whose writing process is gone."""
    path = Path(path)
    try:
        stem = _temp_stem(path)
    except OutputError:
        return []
    head, tail = f".{stem}.", f".partial{path.suffix}"
    folder = path.parent if str(path.parent) else Path(".")
    found = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                n = e.name
                if (n.startswith(head) and n.endswith(tail) and len(n) > len(head) + len(tail)
                        and (m := _PARTIAL.fullmatch(n[len(head):-len(tail)]))
                        and _gone(m)):
                    found.append(folder / n)
    except OSError:
        return []
    return found


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by dead runs; returns those removed.
    A file that cannot be removed is logged and left; this never fails the caller."""
    removed = []
    for p in stale_partials(path):
        try:
            p.unlink()
        except FileNotFoundError:  # another run cleaned it first
            continue
        except OSError as exc:
            log.warning("cannot remove %s left by a stopped run: %s", p, exc.strerror)
            continue
        log.info("removed %s left by a stopped run", p)
        removed.append(p)
    return removed


def write_error(final: Path | None, exc: BaseException, doing: str = "writing") -> OutputError:
    """A one-line OutputError for a failed write of ``final`` (named instead of its temporary
    file; None: not named): disk full and read-only file systems get their plain reason."""
    what = doing if final is None else f"{doing} {final}"
    return OutputError(f"{what} failed: {write_reason(exc)}")


def write_failure(exc: BaseException) -> BaseException | None:
    """What a failed write's message should describe: ``exc`` itself (an OSError, a library's
    error), or the OSError behind an OutputError of :func:`store_file`; None for another
    OutputError (a file that appeared meanwhile), which says all there is itself."""
    if isinstance(exc, OutputError):
        return exc.__cause__ if isinstance(exc.__cause__, OSError) else None
    return exc


def write_reason(exc: BaseException) -> str:
    """Why a write failed, in a few words on one line (disk full and read-only file systems
    get their plain reason; a library's own error, e.g. safetensors', its message)."""
    return (_PLAIN_REASONS.get(getattr(exc, "errno", None))
            or getattr(exc, "strerror", None) or " ".join(str(exc).split())
            or type(exc).__name__)


def store_file(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` as ``path`` through a temporary file, flushed to the disk and renamed into
    place: ``path`` is either the whole new file or what it was before, and nothing partial is
    left, whatever stops the write (a full disk, Ctrl-C). ``replace``: as :func:`finish`.

    Raises:
        OutputError: the file cannot be written (disk full, read-only...) or moved into place.
    """
    temp = temp_path_for(path)
    try:
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise write_error(path, exc) from exc
        finish(temp, path, replace=replace)  # a stop before its move: the temp goes too
    except BaseException:
        discard(temp)
        raise


# link() is refused where the file system has no hard links (FAT, exFAT, some network and
# FUSE file systems); there the check before the rename is all there is
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def _written_meanwhile(final: Path) -> OutputError:
    return OutputError(f"{final} appeared while this run wrote it (another run to the same "
                       "name?); it is kept and this output discarded (--overwrite replaces it)")


def finish(temp: Path, final: Path, *, replace: bool = True) -> None:
    """Move the finished ``temp`` into place as ``final``. Without ``replace`` (no --overwrite)
    a ``final`` that appeared while this run wrote (another run to the same name) is kept and
    this output discarded, OutputError: the check when the run started is not enough. Done by
    a hard link, which fails on an existing name, then removing ``temp``.

    Raises:
        OutputError: ``final`` exists (without ``replace``), or the move failed.
    """
    if replace:
        try:
            os.replace(temp, final)
        except OSError as exc:
            discard(temp)
            raise OutputError(f"cannot move the finished output to {final}: "
                              f"{exc.strerror}") from exc
        return
    try:
        os.link(temp, final)
    except FileExistsError as exc:
        discard(temp)
        raise _written_meanwhile(final) from exc
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            discard(temp)
            raise OutputError(f"cannot move the finished output to {final}: "
                              f"{exc.strerror}") from exc
        if os.path.lexists(final):
            discard(temp)
            raise _written_meanwhile(final) from exc
        finish(temp, final, replace=True)
        return
    discard(temp)


def discard(temp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def check_frame(image, size: tuple[int, int], *, alpha: bool = False) -> None:
    """Raise OutputError unless ``image`` is what a sink of ``size`` (height, width) takes:
    (H, W, 3) RGB uint8 or uint16, or (H, W, 4) RGBA too where the sink keeps ``alpha``."""
    channels = (3, 4) if alpha else (3,)
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is None or len(shape) != 3 or shape[:2] != size or shape[2] not in channels \
            or dtype not in ("uint8", "uint16"):
        raise OutputError(f"a frame must be ({size[0]}, {size[1]}, "
                          f"{' or '.join(map(str, channels))}) uint8 or uint16, got "
                          f"{shape} {dtype}")


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
