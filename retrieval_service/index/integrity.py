"""The corpus under a built index may change: sources read back are checked against the manifest.

- :func:`read_verified`: a source's bytes, hashed while reading and compared with the manifest's sha256, so
  a replaced file is never served under its old ETag (``SourceChanged``) and a deleted one is a clear
  ``SourceMissing`` instead of an ``OSError``.
- :func:`check_present`: a cheap ``stat`` pass (exists, size as built) over many records, before a stream
  sends its first byte.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from retrieval_service.index.corpus import (
    CorpusError,
    SourceRecord,
    UnsafeSourcePath,
    open_source,
    source_file,
)
from services.errors import SJFTError

_BLOCK = 1 << 20


class SourceMissing(SJFTError):
    """The source file of a record is gone (or unreadable) since the index was built."""

    code = "source_missing"


class SourceChanged(SJFTError):
    """The source file of a record no longer holds the bytes the index was built from."""

    code = "source_changed"


def read_verified(root: str | os.PathLike, record: SourceRecord) -> bytes:
    """All bytes of ``record``'s source, checked against its manifest size and sha256 while reading."""
    where = f"{record.path}:{record.member}" if record.member else record.path
    try:
        with open_source(root, record) as stream:
            digest = hashlib.sha256()
            parts = []
            while block := stream.read(_BLOCK):
                digest.update(block)
                parts.append(block)
    except (FileNotFoundError, NotADirectoryError, UnsafeSourcePath) as exc:
        raise SourceMissing(f"source {record.source_id} ({where}) is missing from the corpus") from exc
    except CorpusError as exc:  # a tar member now beyond the end of its (rewritten) tar
        raise SourceChanged(f"source {record.source_id} ({where}) changed since the build: {exc}") from exc
    except OSError as exc:
        raise SourceMissing(
            f"source {record.source_id} ({where}) cannot be read: {exc.strerror or exc}"
        ) from exc
    data = b"".join(parts)
    if len(data) != record.nbytes or (record.sha256 and digest.hexdigest() != record.sha256):
        raise SourceChanged(
            f"source {record.source_id} ({where}) changed since the index was built "
            f"({len(data)} bytes, sha256 {digest.hexdigest()[:12]}; built from {record.nbytes} bytes, "
            f"sha256 {(record.sha256 or '?')[:12]})"
        )
    return data


def check_present(root: str | os.PathLike, records: Sequence[SourceRecord]) -> tuple[list[int], list[int]]:
    """(missing ids, changed ids) by ``stat`` alone: a file gone, or of another size than built.

    A tar member counts as changed when its data no longer fits inside its tar. Content changes of the
    same size are caught later, by :func:`read_verified`.
    """
    missing: list[int] = []
    changed: list[int] = []
    sizes: dict[str, int | None] = {}  # one stat per file (a tar holds many records)
    for record in records:
        if record.path not in sizes:
            try:
                sizes[record.path] = source_file(root, record).stat().st_size
            except (OSError, UnsafeSourcePath):
                sizes[record.path] = None
        size = sizes[record.path]
        if size is None:
            missing.append(record.source_id)
        elif record.member is None and size != record.nbytes:
            changed.append(record.source_id)
        elif record.path.endswith(".tar") and (record.offset or 0) + record.nbytes > size:
            changed.append(record.source_id)
    return missing, changed
