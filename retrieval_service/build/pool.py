"""One process per core: each worker decodes AND processes whole batches on one torch thread.

Why processes: Python-level work (decoding glue, numpy's binning when numba is absent) holds the GIL, so
extractor threads in one process contend for it; separate processes scale everything, and
decoding runs next to the extraction it feeds instead of in another process that ships pixels over
shared memory. Only metadata and (n_ok, D, B) histograms come back to the driver (~3 KB per image); for the
edge fit, only the response values the final reservoir keeps (``edges.py``).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from retrieval_service.build.shards import DecodedBatch
from retrieval_service.build.workers import (
    ExtractionSetup,
    PositionedImages,
    describe_batch,
    sample_batch,
    worker_extractor,
)
from retrieval_service.index.corpus import SourceRecord

_SETUP: ExtractionSetup | None = None
_ROOT: Path | None = None


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM this worker when the build that spawned it dies.

    A killed build (SIGKILL, OOM) otherwise left its workers running their batch to the end, and then each
    printed a BrokenPipeError traceback when it could not hand the result back. SIGTERM's default action
    ends the worker silently. Elsewhere (no prctl) this is a no-op.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl: too late to be told
        os._exit(0)


_PR_SET_PDEATHSIG = 1


def _init(setup: ExtractionSetup, root: str) -> None:
    global _SETUP, _ROOT
    _die_with_parent()
    _SETUP, _ROOT = setup, Path(root)
    worker_extractor(setup)  # build the bank (and its FFT plans lazily) before the first batch arrives


def _describe(task: tuple[list[int], list[SourceRecord]]) -> tuple[DecodedBatch, np.ndarray]:
    positions, records = task
    images = PositionedImages(_ROOT, records, _SETUP.size, positions)
    batch, hists = describe_batch(worker_extractor(_SETUP), images, positions)
    return replace(batch, images=torch.empty(0, dtype=torch.uint8)), hists  # pixels stay here


def _sample(task: tuple[list[int], list[SourceRecord], np.ndarray, list[np.ndarray]]):
    positions, records, expected_ok, columns = task
    images = PositionedImages(_ROOT, records, _SETUP.size, positions)
    return sample_batch(worker_extractor(_SETUP), images, positions, expected_ok, columns)


def worker_pool(setup: ExtractionSetup, root: Path, processes: int):
    """``processes`` spawned workers, each with its extractor for ``setup`` built at start-up.

    Spawned, not forked: the driver has already run torch (edge fitting), and a forked copy of its
    thread pools can deadlock.
    """
    return mp.get_context("spawn").Pool(processes, _init, (setup, str(root)))


def describe_in_processes(
    setup: ExtractionSetup,
    root: Path,
    records: Sequence[SourceRecord],
    batches: list[list[int]],
    processes: int,
    pool=None,
) -> Iterator[tuple[DecodedBatch, np.ndarray]]:
    """(batch metadata, histograms) for every batch, in order, from ``processes`` spawned workers (or the
    already started ``pool`` of ``worker_pool(setup, root, ...)``, which stays open)."""
    tasks = ((positions, [records[p] for p in positions]) for positions in batches)
    if pool is not None:
        yield from pool.imap(_describe, tasks, chunksize=1)
        return
    with worker_pool(setup, root, processes) as pool:
        # imap keeps order and bounds nothing by itself: chunksize 1 keeps batches flowing evenly.
        yield from pool.imap(_describe, tasks, chunksize=1)


def sample_in_processes(pool, records: Sequence[SourceRecord], batches: list[list[int]],
                        expected_ok: list[np.ndarray], columns: list[list[np.ndarray]]):
    """``workers.sample_batch`` for every batch, in order, on a ``worker_pool``."""
    tasks = (
        (positions, [records[p] for p in positions], ok, cols)
        for positions, ok, cols in zip(batches, expected_ok, columns, strict=True)
    )
    yield from pool.imap(_sample, tasks, chunksize=1)
