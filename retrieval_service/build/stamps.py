"""File stamps of a partial build: a finished shard is reused on resume only if none of its files changed.

The corpus fingerprint (``staging.py``) covers paths and sizes, so a file rewritten with the same size kept
its stale histogram when a killed build resumed. Each shard now has ``stamps-<i>.npy``: (size, mtime_ns,
ctime_ns) of the file behind each of its candidates, as stat-ed when the run that extracts the shard
starts. On resume a shard whose stamps differ from the files' current ones (or that has none) is deleted
and extracted again.
A file changed after that stat but before it was read is also caught: its mtime then differs next time.
The ctime catches a same-size copy that keeps the mtime (``cp -p``, ``rsync -t``, ``touch -r``): no user
can set it back. Stamps of an older build (two columns) count as none. ``verify --hash`` compares every
file's sha256 with the manifest once the build is done.
The bin edges fitted by the first run are kept (a few changed files barely move equal-mass edges).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval_service.build.shards import shard_path
from retrieval_service.index.corpus import SourceRecord, UnsafeSourcePath, source_file
from services.fileio import atomic_writer

log = logging.getLogger("retrieval_service.build.builder")


def file_stamps(root: Path, records: Sequence[SourceRecord]) -> np.ndarray:
    """int64 (n, 3): (size, mtime_ns, ctime_ns) of each record's file, -1s when it cannot be stat-ed.

    One stat per distinct file: every member of a tar shares its tar's stamp.
    """
    seen: dict[str, tuple[int, int, int]] = {}
    out = np.empty((len(records), 3), dtype=np.int64)
    for i, record in enumerate(records):
        stamp = seen.get(record.path)
        if stamp is None:
            try:
                st = source_file(root, record).stat()  # a followed symlink: its recorded target
                stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            except (OSError, UnsafeSourcePath):
                stamp = (-1, -1, -1)
            seen[record.path] = stamp
        out[i] = stamp
    return out


def stamps_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"stamps-{index:05d}.npy"


def _recorded(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def invalidate_changed_shards(
    shard_dir: Path, root: Path, records: Sequence[SourceRecord], shard_size: int
) -> int:
    """Delete finished shards whose files changed since they were extracted; stamp the ones to extract.

    Returns the number of shards deleted. Call before extraction, on every (re)start of a build.
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    stamps = file_stamps(root, records)
    dropped = 0
    for index, start in enumerate(range(0, len(records), shard_size)):
        current = stamps[start : start + shard_size]
        shard, stamp_file = shard_path(shard_dir, index), stamps_path(shard_dir, index)
        if shard.exists():
            recorded = _recorded(stamp_file)
            if recorded is not None and np.array_equal(recorded, current):
                continue
            if recorded is None or recorded.shape != current.shape:
                why = "no stamps"
            else:
                first = start + int(np.flatnonzero((recorded != current).any(axis=1))[0])
                why = f"e.g. {records[first].path}"
            log.warning("shard %d: files changed since its extraction (%s): extracting again", index, why)
            shard.unlink()
            dropped += 1
        with atomic_writer(stamp_file) as fh:
            np.save(fh, current)
    return dropped
