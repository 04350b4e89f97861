"""Crash-safe file writes and content hashes: the one home of temp-file-then-rename and of sha256 of a file.

A reader (another process, or this one after a ``kill -9``) sees either the old file or the whole new one,
never a partial write: the data goes to a temporary file in the same directory (so the rename stays on one
file system), is flushed and fsynced, and is then renamed over the target (``os.replace``, atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_BLOCK = 1 << 22  # 4 MiB reads: large enough to hash at disk speed, small enough to keep memory flat


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back, once, at import (umask is process-wide)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary sibling path for writers that need a file name (SQLite, FAISS); on a clean exit it replaces
    ``path``. On an exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result gets the mode a plain open() gives
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True) -> Iterator[IO]:
    """An open temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_writer(path, "wb", fsync=fsync) as f:
        f.write(payload)


def file_sha256(path: str | os.PathLike, block: int = _BLOCK) -> str:
    """Hex sha256 of a file's bytes, read in blocks (memory stays flat for any file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
