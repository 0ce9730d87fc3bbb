"""Job state in SQLite, in the batch output folder, so a rerun knows what is finished.

Every change is committed at once (WAL journal), so a process killed with SIGKILL leaves
the store as it was after the last finished segment. The store is used from several worker
threads of one process through one connection guarded by a lock.

One batch process at a time owns a store: opening it takes an exclusive ``flock`` on a lock
file next to it, held until the store is closed. The kernel drops the lock when the process
ends in any way (kill -9 included), so a dead run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vsr.errors import OutputError

# A file is one (input, output) pair: the same input may be upscaled into several outputs.
_FILES = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,          -- running, joining (being moved into place), done, failed
    error TEXT,
    frames INTEGER,
    updated REAL NOT NULL,
    output_bytes INTEGER,          -- the finished output's size (NULL: unknown)
    UNIQUE (input, output)
);
"""
_SCHEMA = _FILES.format(name="files") + """
CREATE TABLE IF NOT EXISTS segments (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    start_pts INTEGER,             -- NULL: from the first frame
    end_pts INTEGER,               -- NULL: to the last frame
    frames INTEGER NOT NULL,
    status TEXT NOT NULL,          -- pending, done
    runs INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER,                 -- the size of the finished segment file (NULL: unknown)
    PRIMARY KEY (file_id, idx)
);
"""


@dataclass(frozen=True)
class SegmentRow:
    index: int
    start: int | None
    end: int | None
    frames: int
    done: bool
    runs: int
    bytes: int | None  # the finished file's size as recorded (None: pending, or an older store)


class StoreBusy(OutputError):
    """Another process holds the job store (a batch running on the same output folder)."""


class StoreError(OutputError):
    """The job store cannot be read or written (a full disk, a read-only or damaged file):
    the batch as a whole stops, not one file of it."""


def _store_error(path: Path, exc: sqlite3.Error, doing: str) -> StoreError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, sqlite3.OperationalError):  # "file is not a database", "malformed"
        return StoreError(f"cannot {doing} the job store {path}: {text} (the file is damaged; "
                          f"remove {path.parent} to start the batch's record anew)")
    return StoreError(f"cannot {doing} the job store {path}: {text}")


class JobStore:
    """The batch's SQLite file, locked for this process while open.

    Raises StoreBusy when another process holds it (``wait=False``; with ``wait=True`` it
    blocks until that process ends), OutputError when it cannot be created or opened.
    """

    def __init__(self, path: Path, *, wait: bool = False) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the job store {self.path}: "
                              f"{exc.strerror or exc}") from exc
        self._db: sqlite3.Connection | None = None
        try:
            _flock(self._lock_fd, self.path, wait)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            _migrate(self._db)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            _add_column(self._db, "segments", "bytes")
            _add_column(self._db, "files", "output_bytes")
        except BaseException as exc:
            if self._db is not None:
                self._db.close()
            os.close(self._lock_fd)  # releases the lock
            if isinstance(exc, sqlite3.Error):
                raise _store_error(self.path, exc, "open") from exc
            if isinstance(exc, OSError):
                raise OutputError(f"cannot open the job store {self.path}: {exc}") from exc
            raise
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # what it could not write is reported
                self._db.close()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    @contextlib.contextmanager
    def _using(self, doing: str = "write") -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; an SQLite failure becomes a StoreError."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc, doing) from exc

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rekey(self, input_path: str, output: str, new_input: str, new_output: str) -> None:
        """Record the file kept under (``input_path``, ``output``) under the new names, unless
        a record holds those already (files were recorded by their paths as typed, before
        they were recorded by their resolved paths)."""
        if (input_path, output) == (new_input, new_output):
            return
        with self._using() as db, db:
            db.execute("UPDATE files SET input = ?, output = ? WHERE input = ? AND output = ? "
                       "AND NOT EXISTS (SELECT 1 FROM files WHERE input = ? AND output = ?)",
                       tuple(map(_key, (new_input, new_output, input_path, output, new_input,
                                        new_output))))

    def finished_output(self, input_path: str, output: str, fingerprint: str) -> str | None:
        """What became of the output this input was finished into with these settings:
        "intact" (there, of the size this batch wrote), why it is not the file this batch
        wrote (cut short, emptied, replaced), or None (not finished with these settings, or
        no file there)."""
        with self._using("read") as db:
            row = db.execute("SELECT fingerprint, status, output_bytes FROM files WHERE "
                             "input = ? AND output = ?",
                             (_key(input_path), _key(output))).fetchone()
        if row is None or row[:2] != (fingerprint, "done") or not Path(output).is_file():
            return None
        size = Path(output).stat().st_size
        if row[2] is not None and size != row[2]:
            return f"it holds {size:,} bytes where this batch wrote {row[2]:,}"
        return "intact"

    def begin(self, input_path: str, output: str, fingerprint: str,
              plan: list[tuple[int | None, int | None, int]], resume: bool
              ) -> tuple[int, bool, int]:
        """Record a file as running with its segment plan ``[(start, end, frames)]``.

        With ``resume``, a previous attempt with the same settings and plan keeps its finished
        segments; otherwise its segments start over. Returns (file id, kept old segments, how
        many finished segments were discarded that ``resume`` would have kept).
        """
        with self._using() as db, db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT id, fingerprint FROM files WHERE input = ? AND "
                                   "output = ?", (_key(input_path), _key(output))).fetchone()
            if row is not None:
                file_id = row[0]
                old = self._db.execute("SELECT start_pts, end_pts, frames, status FROM "
                                       "segments WHERE file_id = ? ORDER BY idx",
                                       (file_id,)).fetchall()
                same = row[1] == fingerprint and [tuple(r[:3]) for r in old] == plan
                self._db.execute("UPDATE files SET fingerprint = ?, status = 'running', "
                                 "error = NULL, updated = ? WHERE id = ?",
                                 (fingerprint, time.time(), file_id))
                if same and resume:
                    return file_id, True, 0
                discarded = sum(r[3] == "done" for r in old) if same else 0
                self._db.execute("DELETE FROM segments WHERE file_id = ?", (file_id,))
            else:
                file_id = self._db.execute(
                    "INSERT INTO files (input, output, fingerprint, status, updated) "
                    "VALUES (?, ?, ?, 'running', ?)",
                    (_key(input_path), _key(output), fingerprint, time.time())).lastrowid
                discarded = 0
            self._db.executemany(
                "INSERT INTO segments (file_id, idx, start_pts, end_pts, frames, status) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                [(file_id, i, s, e, n) for i, (s, e, n) in enumerate(plan)])
            return file_id, False, discarded

    def segments(self, file_id: int) -> list[SegmentRow]:
        with self._using("read") as db:
            rows = db.execute("SELECT idx, start_pts, end_pts, frames, status, runs, "
                              "bytes FROM segments WHERE file_id = ? ORDER BY idx",
                              (file_id,)).fetchall()
        return [SegmentRow(i, s, e, n, st == "done", r, b) for i, s, e, n, st, r, b in rows]

    def segment_started(self, file_id: int, index: int) -> None:
        self._write("UPDATE segments SET runs = runs + 1, status = 'pending', bytes = NULL "
                    "WHERE file_id = ? AND idx = ?", (file_id, index))

    def segment_done(self, file_id: int, index: int, size: int) -> None:
        """The segment's file is finished (and on disk) with ``size`` bytes."""
        self._write("UPDATE segments SET status = 'done', bytes = ? WHERE file_id = ? "
                    "AND idx = ?", (size, file_id, index))

    def segment_undone(self, file_id: int, index: int) -> None:
        self._write("UPDATE segments SET status = 'pending', bytes = NULL WHERE file_id = ? "
                    "AND idx = ?", (file_id, index))

    def file_done(self, file_id: int, frames: int, output_bytes: int | None = None) -> None:
        """The file's output is finished, in place, with ``output_bytes`` bytes."""
        self._write("UPDATE files SET status = 'done', frames = ?, error = NULL, updated = ?, "
                    "output_bytes = ? WHERE id = ?",
                    (frames, time.time(), output_bytes, file_id))

    def file_joining(self, file_id: int, output_bytes: int) -> None:
        """The file's output, of ``output_bytes`` bytes, is about to be moved into place."""
        self._write("UPDATE files SET status = 'joining', output_bytes = ?, updated = ? "
                    "WHERE id = ?", (output_bytes, time.time(), file_id))

    def settle_joined(self, input_path: str, output: str, fingerprint: str) -> int | None:
        """Record as done a file that was stopped while its output was being moved into place,
        where the output there has the size it was moving (it got there); its file id, or
        None (no such record, or another file there)."""
        with self._using("read") as db:
            row = db.execute("SELECT id, fingerprint, status, output_bytes FROM files WHERE "
                             "input = ? AND output = ?",
                             (_key(input_path), _key(output))).fetchone()
        if row is None or row[1:3] != (fingerprint, "joining"):
            return None
        try:
            if Path(output).stat().st_size != row[3]:
                return None
        except OSError:
            return None
        self._write("UPDATE files SET status = 'done', updated = ? WHERE id = ?",
                    (time.time(), row[0]))
        return row[0]

    def file_failed(self, file_id: int, error: str) -> None:
        self._write("UPDATE files SET status = 'failed', error = ?, updated = ? WHERE id = ?",
                    (_shown(error), time.time(), file_id))

    def _write(self, sql: str, args: tuple) -> None:
        with self._using() as db:
            db.execute(sql, args)


def _key(path: str) -> str | bytes:
    """A path as the store keys it: its text, or where it holds bytes that are not UTF-8 (a
    Latin-1 name from an old archive, which Python holds as surrogates and SQLite's text cannot
    take: the whole batch stopped with a UnicodeEncodeError) those bytes, as a BLOB that no
    text key equals. Names that are UTF-8 are kept as before, so older stores still match."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _shown(text: str) -> str:
    """``text`` (an error that may name such a file) as text SQLite takes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _flock(fd: int, path: Path, wait: bool) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise StoreBusy(f"another vsr batch is running on this output folder (its job store "
                        f"{path} is locked); wait for it to finish, or use --wait") from exc


def _migrate(db: sqlite3.Connection) -> None:
    """Stores written before one input could have several outputs keyed files by input
    alone: rebuild that table with the (input, output) key, keeping every row and id."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'files'"
                     ).fetchone()
    if row is None or "UNIQUE (input, output)" in row[0]:
        return
    db.execute("PRAGMA foreign_keys=OFF")  # dropping the old table must not cascade
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(_FILES.format(name="files_v2"))
        db.execute("INSERT INTO files_v2 (id, input, output, fingerprint, status, error, "
                   "frames, updated) SELECT id, input, output, fingerprint, status, error, "
                   "frames, updated FROM files")
        db.execute("DROP TABLE files")
        db.execute("ALTER TABLE files_v2 RENAME TO files")


def _add_column(db: sqlite3.Connection, table: str, column: str) -> None:
    """Stores written before sizes were recorded lack the INTEGER ``column``: add it (NULL
    for what they finished: segments are then checked by their frame count alone, outputs
    by their being there)."""
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if column not in columns:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER")
