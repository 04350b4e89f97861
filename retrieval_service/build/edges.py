"""The edge fit on the worker processes, with the edges ``fit_edges`` would give in one process, bit for bit.

``fit_edges`` feeds every sampled response value through a seeded reservoir (Algorithm R). Which value ends
in which slot depends only on how many values each call brings, in order, never on the values themselves:
the driver plans the whole reservoir from the batch plan (``reservoir_picks``), assuming every sampled
image decodes; each worker decodes and filters its batches and sends back only the values that stay
(~0.4 MB per batch instead of ~350 MB of responses). When an image turns out unreadable, the plan is
redone with the real ok flags and the batches run again (rare: a sampled file that fails to decode).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval_service.build.pool import sample_in_processes, worker_pool
from retrieval_service.build.workers import ExtractionSetup
from retrieval_service.index.corpus import SourceRecord
from services.extract import DescriptorExtractor, quantile_edges, reservoir_picks

log = logging.getLogger("retrieval_service.build.builder")

CAPACITY = 200_000  # fit_edges' default max_values_per_filter


def planned_calls(ok: Sequence[np.ndarray], layout: list[tuple[int, int]], chunk: int) -> list[list[tuple]]:
    """Per batch, its ``fit_edges`` calls (block row, number of values): per chunk of ``chunk`` readable
    images, per block of ``layout`` ((row, values per image), in the bank's order)."""
    per_batch = []
    for flags in ok:
        n_ok = int(np.count_nonzero(flags))
        per_batch.append(
            [(row, min(chunk, n_ok - start) * m) for start in range(0, n_ok, chunk) for row, m in layout]
        )
    return per_batch


def fit_edges_in_processes(
    setup: ExtractionSetup,
    extractor: DescriptorExtractor,
    root: Path,
    records: Sequence[SourceRecord],
    batches: list[list[int]],
    bins: int,
    seed: int,
    processes: int,
    capacity: int = CAPACITY,
) -> np.ndarray:
    """``fit_edges(extractor, <the readable images of batches>, bins, capacity, seed)``, computed by
    ``processes`` workers (each builds ``setup``'s extractor, which must equal ``extractor``: same chunk
    size)."""
    probe = np.zeros((1, setup.size, setup.size, 3), np.uint8)
    layout = [(row, values.shape[1]) for row, values in extractor.sample_values(probe)]
    dims = {row: values.shape[0] for row, values in extractor.sample_values(probe)}
    ok = [np.ones(len(b), bool) for b in batches]
    with worker_pool(setup, root, processes) as pool:
        while True:
            calls = planned_calls(ok, layout, extractor.chunk_size)
            flat = [c for per_batch in calls for c in per_batch]
            t = time.perf_counter()
            picks, filled = reservoir_picks(flat, capacity, seed)
            log.info("edge sample: reservoir planned in %.1f s", time.perf_counter() - t)
            if not flat or not all(filled.values()):
                raise ValueError("fit_edges got no images")
            reservoirs = {row: np.empty((dims[row], capacity), np.float32) for row in filled}
            per_batch, k = [], 0
            for batch_calls in calls:
                per_batch.append(picks[k : k + len(batch_calls)])
                k += len(batch_calls)
            columns = [[cols for _, cols in p] for p in per_batch]
            actual, complete = [], True
            results = sample_in_processes(pool, records, batches, ok, columns)
            for batch_calls, batch_picks, (flags, values) in zip(calls, per_batch, results, strict=True):
                actual.append(flags)
                if values is None:
                    complete = False
                    continue
                for (row, _), (slots, _), picked in zip(batch_calls, batch_picks, values, strict=True):
                    reservoirs[row][:, slots] = picked
            if complete:
                break
            log.info(
                "edge sample: %d sampled images are unreadable; planning the reservoir again without them",
                sum(int((~f).sum()) for f in actual),
            )
            ok = actual
    return np.concatenate([quantile_edges(reservoirs[row][:, : filled[row]], bins) for row in sorted(filled)])
