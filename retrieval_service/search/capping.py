"""``max_per_source``: within one request, a source is given to at most m queries.

Each query's capped list is built one position per step, for every query of the request at once: at step p
each query takes its best (distance, source_id) candidate whose source has been given fewer than m times so
far; within a step the queries take in the order of (that candidate's distance, query position), so the
closest claim wins a contested source and the loser moves on to its next candidate in the same step.

Properties (the contract in DESIGN.md):
- a source appears in at most m queries' lists (a source is never listed twice for one query);
- each list is sorted by (distance, source_id): what a query passes over at step p stays ineligible;
- every query gets one entry per step while it has eligible candidates, so every query gets its k;
- positions < p are decided by steps < p alone, and every query takes part in every step up to the deepest
  window of the request: the list depends on the request's queries and m, never on the windows asked, so
  [0, 10) and [10, 20) of the same query set concatenate to [0, 20).
Candidates come from the engine's window-independent ranking (``ranking.py``), fetched deeper (doubling)
whenever a query runs out of them before its list is complete.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import numpy as np

Fetch = Callable[[int], tuple[np.ndarray, np.ndarray]]  # depth -> (dist (nq, depth), ids (nq, depth), -1 pad)
MAX_PAIRS = 1_000_000  # (query, candidate) pairs fetched at once: bounds memory and the deep re-ranks


class CapTooTight(ValueError):
    """The cap cannot be met: more slots than sources x cap, or deeper candidate lists than ``MAX_PAIRS``."""


def capped_windows(
    fetch: Fetch,
    windows: Sequence[tuple[int, int]],
    max_per_source: int,
    eligible: int,
    max_pairs: int = MAX_PAIRS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query (k, offset) window of its capped list: (distances float32, ids int64), unpadded.

    ``fetch(depth)`` gives each query's first ``depth`` ranked candidates; ``eligible`` bounds the depth
    (sources in the index minus exclusions). Raises ``CapTooTight`` instead of fetching more than
    ``max_pairs`` (query, candidate) pairs (many near-identical queries under a cap of 1 need deep lists).
    """
    if max_per_source < 1:
        raise ValueError("max_per_source must be >= 1")
    steps = max(k + offset for k, offset in windows)
    if len(windows) * steps > eligible * max_per_source:
        raise CapTooTight(
            f"max_per_source={max_per_source} cannot give {len(windows)} queries {steps} neighbors each: "
            f"{eligible} eligible sources fill at most {eligible * max_per_source} places; raise "
            "max_per_source, or send fewer queries or a shallower window"
        )
    depth = min(eligible, 2 * steps)
    while True:
        if len(windows) * depth > max_pairs:
            raise CapTooTight(
                f"max_per_source={max_per_source} over {len(windows)} queries needs more than {depth} "
                f"candidates per query ({max_pairs:,} pairs at most): raise max_per_source or send fewer "
                "queries per request"
            )
        dist, ids = fetch(max(depth, 1))
        rows = [(d[i >= 0], i[i >= 0]) for d, i in zip(dist, ids, strict=True)]
        complete = [depth >= eligible or len(r[1]) < depth for r in rows]
        picks = _assign(rows, complete, steps, max_per_source, eligible)
        if picks is not None:
            break
        depth = min(eligible, depth * 2)
    out = []
    for (d, i), taken, (k, offset) in zip(rows, picks, windows, strict=True):
        sel = np.asarray(taken[offset : offset + k], dtype=np.int64)
        out.append((d[sel].astype(np.float32), i[sel].astype(np.int64)))
    return out


def _assign(
    rows: Sequence[tuple[np.ndarray, np.ndarray]],
    complete: Sequence[bool],
    steps: int,
    cap: int,
    eligible: int,
) -> list[list[int]] | None:
    """Candidate positions taken by each query, step by step; None when a query with an incomplete
    candidate list ran out of them (fetch deeper and start again)."""
    capacity = eligible * cap  # once every eligible source is given cap times, no list can grow
    total = 0
    given: dict[int, int] = {}
    dists = [d.tolist() for d, _ in rows]
    ids = [i.tolist() for _, i in rows]
    ptr = [0] * len(rows)
    taken: list[list[int]] = [[] for _ in rows]
    active = list(range(len(rows)))

    def _next(q: int) -> bool:
        """Move query q's pointer to its next eligible candidate; False when it has none."""
        row = ids[q]
        while ptr[q] < len(row) and given.get(row[ptr[q]], 0) >= cap:
            ptr[q] += 1
        return ptr[q] < len(row)

    for _ in range(steps):
        if total >= capacity:
            break
        heap = []
        for q in active:
            if _next(q):
                heap.append((dists[q][ptr[q]], q))
            elif not complete[q]:
                return None
        if not heap:
            break
        heapq.heapify(heap)
        active = []
        while heap:
            _, q = heapq.heappop(heap)
            source = ids[q][ptr[q]]
            if given.get(source, 0) < cap:
                given[source] = given.get(source, 0) + 1
                total += 1
                taken[q].append(ptr[q])
                ptr[q] += 1
                active.append(q)
            elif _next(q):  # taken to its cap earlier in this step: try the query's next candidate
                heapq.heappush(heap, (dists[q][ptr[q]], q))
            elif not complete[q] and total < capacity:
                return None
        active.sort()
    return taken
