"""Job state in SQLite, in the batch output folder, so a rerun knows what is finished.

Every change is committed at once (WAL journal), so a process killed with SIGKILL leaves
the store as it was after the last finished segment. The store is used from several worker
threads of one process through one connection guarded by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vsr.errors import OutputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    input TEXT NOT NULL UNIQUE,
    output TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,          -- running, done, failed
    error TEXT,
    frames INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    start_pts INTEGER,             -- NULL: from the first frame
    end_pts INTEGER,               -- NULL: to the last frame
    frames INTEGER NOT NULL,
    status TEXT NOT NULL,          -- pending, done
    runs INTEGER NOT NULL DEFAULT 0,
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


class JobStore:
    """The batch's SQLite file; raises OutputError when it cannot be opened."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutputError(f"cannot open the job store {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finished(self, input_path: str, output: str, fingerprint: str) -> bool:
        """True when this input was finished with these settings and its output is there."""
        with self._lock:
            row = self._db.execute("SELECT output, fingerprint, status FROM files "
                                   "WHERE input = ?", (input_path,)).fetchone()
        return (row is not None and row == (output, fingerprint, "done")
                and Path(output).is_file())

    def begin(self, input_path: str, output: str, fingerprint: str,
              plan: list[tuple[int | None, int | None, int]], resume: bool) -> tuple[int, bool]:
        """Record a file as running with its segment plan ``[(start, end, frames)]``.

        With ``resume``, a previous attempt with the same settings and plan keeps its finished
        segments; otherwise its segments start over. Returns (file id, kept old segments).
        """
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT id, fingerprint FROM files WHERE input = ?",
                                   (input_path,)).fetchone()
            if row is not None:
                file_id = row[0]
                old = self._db.execute("SELECT start_pts, end_pts, frames FROM segments "
                                       "WHERE file_id = ? ORDER BY idx", (file_id,)).fetchall()
                keep = resume and row[1] == fingerprint and [tuple(r) for r in old] == plan
                self._db.execute("UPDATE files SET output = ?, fingerprint = ?, status = "
                                 "'running', error = NULL, updated = ? WHERE id = ?",
                                 (output, fingerprint, time.time(), file_id))
                if keep:
                    return file_id, True
                self._db.execute("DELETE FROM segments WHERE file_id = ?", (file_id,))
            else:
                file_id = self._db.execute(
                    "INSERT INTO files (input, output, fingerprint, status, updated) "
                    "VALUES (?, ?, ?, 'running', ?)",
                    (input_path, output, fingerprint, time.time())).lastrowid
            self._db.executemany(
                "INSERT INTO segments (file_id, idx, start_pts, end_pts, frames, status) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                [(file_id, i, s, e, n) for i, (s, e, n) in enumerate(plan)])
            return file_id, False

    def segments(self, file_id: int) -> list[SegmentRow]:
        with self._lock:
            rows = self._db.execute("SELECT idx, start_pts, end_pts, frames, status, runs "
                                    "FROM segments WHERE file_id = ? ORDER BY idx",
                                    (file_id,)).fetchall()
        return [SegmentRow(i, s, e, n, st == "done", r) for i, s, e, n, st, r in rows]

    def segment_started(self, file_id: int, index: int) -> None:
        self._write("UPDATE segments SET runs = runs + 1, status = 'pending' "
                    "WHERE file_id = ? AND idx = ?", (file_id, index))

    def segment_done(self, file_id: int, index: int) -> None:
        self._write("UPDATE segments SET status = 'done' WHERE file_id = ? AND idx = ?",
                    (file_id, index))

    def segment_undone(self, file_id: int, index: int) -> None:
        self._write("UPDATE segments SET status = 'pending' WHERE file_id = ? AND idx = ?",
                    (file_id, index))

    def file_done(self, file_id: int, frames: int) -> None:
        self._write("UPDATE files SET status = 'done', frames = ?, error = NULL, updated = ? "
                    "WHERE id = ?", (frames, time.time(), file_id))

    def file_failed(self, file_id: int, error: str) -> None:
        self._write("UPDATE files SET status = 'failed', error = ?, updated = ? WHERE id = ?",
                    (error, time.time(), file_id))

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)
