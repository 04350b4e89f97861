"""The source manifest of an index: SQLite ``manifest.sqlite`` mapping ``source_id`` to where the image lives.

Tables: ``sources(source_id INTEGER PRIMARY KEY, path, member, offset, label, class_name, ext, nbytes, sha256,
width, height)`` and ``classes(label INTEGER PRIMARY KEY, name)``. Written once by the build, then only read:
:meth:`Manifest.open` opens it read-only and immutable, one connection shared behind a lock, so server threads
can call it concurrently.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from retrieval_service.index.corpus import SourceRecord
from services.fileio import atomic_path

_COLUMNS = (
    "source_id",
    "path",
    "member",
    "offset",
    "label",
    "class_name",
    "ext",
    "nbytes",
    "sha256",
    "width",
    "height",
)
_SCHEMA = """
CREATE TABLE sources (
    source_id INTEGER PRIMARY KEY, path TEXT NOT NULL, member TEXT, offset INTEGER,
    label INTEGER NOT NULL, class_name TEXT NOT NULL, ext TEXT NOT NULL, nbytes INTEGER NOT NULL,
    sha256 TEXT, width INTEGER, height INTEGER
);
CREATE TABLE classes (label INTEGER PRIMARY KEY, name TEXT NOT NULL);
"""
# Built after the rows are in (one sort instead of per-row upkeep): /v1/sources/by-sha256 looks hashes up
# without a scan. Manifests written before it existed still answer, by a scan.
_SHA256_INDEX = "CREATE INDEX IF NOT EXISTS sources_sha256 ON sources (sha256)"
_SQL_CHUNK = 500  # stays under SQLite's bound-parameter limit


def write_manifest(path: str | os.PathLike, records: Iterable[SourceRecord], classes: Sequence[str]) -> None:
    """Write a fresh manifest at ``path`` (replacing any file there); records keep their ``source_id``."""
    with atomic_path(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode=OFF")  # a fresh file renamed into place: no journal needed
            conn.executescript(_SCHEMA)
            with conn:
                conn.executemany("INSERT INTO classes VALUES (?, ?)", list(enumerate(classes)))
                conn.executemany(
                    f"INSERT INTO sources VALUES ({', '.join('?' * len(_COLUMNS))})",
                    (tuple(getattr(r, c) for c in _COLUMNS) for r in records),
                )
                conn.execute(_SHA256_INDEX)
        finally:
            conn.close()


class Manifest:
    """Read-only view of ``manifest.sqlite``; thread-safe (one connection behind a lock)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self._labels: np.ndarray | None = None
        self._classes: list[str] | None = None
        self._size: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> Manifest:
        """Open an existing manifest read-only; raises ``FileNotFoundError`` when it is missing."""
        path = Path(path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no manifest at {path}")
        # immutable=1: the file never changes after the build, so SQLite may skip locking entirely.
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __len__(self) -> int:
        if self._size is None:
            with self._lock:
                self._size = self._conn.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
        return self._size

    @property
    def classes(self) -> list[str]:
        """Class names; a record's ``label`` indexes this list."""
        if self._classes is None:
            with self._lock:
                rows = self._conn.execute("SELECT name FROM classes ORDER BY label").fetchall()
            self._classes = [name for (name,) in rows]
        return list(self._classes)

    def get(self, source_id: int) -> SourceRecord | None:
        """The record of one source, or None when no such id exists."""
        return self.get_many([source_id])[0]

    def get_many(self, ids: Sequence[int]) -> list[SourceRecord | None]:
        """Records in the order of ``ids`` (None for unknown ids)."""
        wanted = [int(i) for i in ids]
        found: dict[int, SourceRecord] = {}
        unique = sorted(set(wanted))
        with self._lock:
            for start in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[start : start + _SQL_CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM sources WHERE source_id IN ({marks})", chunk
                ).fetchall()
                for row in rows:
                    record = SourceRecord(**dict(zip(_COLUMNS, row, strict=True)))
                    found[record.source_id] = record
        return [found.get(i) for i in wanted]

    def by_sha256(self, hashes: Sequence[str]) -> dict[str, list[int]]:
        """Source ids per SHA-256 of their file bytes, for the hashes present (ids ascending)."""
        wanted = sorted(set(hashes))
        found: dict[str, list[int]] = {}
        with self._lock:
            for start in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[start : start + _SQL_CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT sha256, source_id FROM sources WHERE sha256 IN ({marks}) ORDER BY source_id",
                    chunk,
                ).fetchall()
                for sha256, source_id in rows:
                    found.setdefault(sha256, []).append(int(source_id))
        return found

    def all_labels(self) -> np.ndarray:
        """Labels of every source, indexed by ``source_id``; int32 (N,). Loaded once, then cached."""
        if self._labels is None:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT source_id, label FROM sources ORDER BY source_id"
                ).fetchall()
            table = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
            if len(table) and not np.array_equal(table[:, 0], np.arange(len(table))):
                raise ValueError(f"{self.path}: source ids are not contiguous 0..N-1")
            self._labels = table[:, 1].astype(np.int32)
        return self._labels

    def labels(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels of ``ids``; int32, same shape as ``ids``. Raises ``IndexError`` for an unknown id."""
        ids = np.asarray(ids, dtype=np.int64)
        table = self.all_labels()
        if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
            raise IndexError(f"source id out of range 0..{len(table) - 1}")
        return table[ids]
