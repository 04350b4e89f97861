"""One process per core: each worker decodes AND histograms whole batches on one torch thread.

Why processes: Python-level work (decoding glue, numpy's binning when numba is absent) holds the GIL, so
extractor threads in one process contend for it; separate processes scale everything, and
decoding runs next to the extraction it feeds instead of in another process that ships pixels over
shared memory. Only metadata and (n_ok, D, B) histograms come back to the driver (~3 KB per image).
"""

from __future__ import annotations

import multiprocessing as mp
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
    worker_extractor,
)
from retrieval_service.index.corpus import SourceRecord

_SETUP: ExtractionSetup | None = None
_ROOT: Path | None = None


def _init(setup: ExtractionSetup, root: str) -> None:
    global _SETUP, _ROOT
    _SETUP, _ROOT = setup, Path(root)
    worker_extractor(setup)  # build the bank (and its FFT plans lazily) before the first batch arrives


def _describe(task: tuple[list[int], list[SourceRecord]]) -> tuple[DecodedBatch, np.ndarray]:
    positions, records = task
    images = PositionedImages(_ROOT, records, _SETUP.size, positions)
    batch, hists = describe_batch(worker_extractor(_SETUP), images, positions)
    return replace(batch, images=torch.empty(0, dtype=torch.uint8)), hists  # pixels stay here


def describe_in_processes(
    setup: ExtractionSetup,
    root: Path,
    records: Sequence[SourceRecord],
    batches: list[list[int]],
    processes: int,
) -> Iterator[tuple[DecodedBatch, np.ndarray]]:
    """(batch metadata, histograms) for every batch, in order, from ``processes`` spawned workers.

    Spawned, not forked: the driver has already run torch (edge fitting), and a forked copy of its
    thread pools can deadlock.
    """
    tasks = ((positions, [records[p] for p in positions]) for positions in batches)
    with mp.get_context("spawn").Pool(processes, _init, (setup, str(root))) as pool:
        # imap keeps order and bounds nothing by itself: chunksize 1 keeps batches flowing evenly.
        yield from pool.imap(_describe, tasks, chunksize=1)
