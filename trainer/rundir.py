"""One trainer per run directory: an exclusive ``fcntl.flock`` on ``<out>/.lock`` for the run's lifetime.

Two trainers on the same ``--out`` would both append rows to metrics.jsonl and overwrite each other's
checkpoints; the second one now stops at once with a one-line error (exit 2). The kernel drops the lock when
the process dies, even by ``kill -9``, so a stale lock never blocks a resume.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from trainer.config import ConfigError

LOCK = ".lock"


class RunDirLock:
    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def lock_run_dir(out: Path) -> RunDirLock:
    """Hold ``out``'s lock or raise ConfigError naming the holder's pid."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"{out} is in use by another trainer (pid {holder}); wait for it or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunDirLock(fd)
