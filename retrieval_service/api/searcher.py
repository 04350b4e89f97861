"""The engine's owner: a bounded queue in front of it, cache look-ups around it, queries grouped by window.

At most ``max_pending`` searches may be in flight or waiting; the next is refused (429) rather than queued
without bound. On a GPU the searches are serialised (one owner: a GPU index is not thread-safe even for
reads); on CPU they run concurrently, since FAISS CPU searches are thread-safe and the numpy re-ranking then
uses every core.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Sequence

import numpy as np

from retrieval_service.api.errors import LimitExceeded, Overloaded
from retrieval_service.api.metrics import ServiceMetrics
from retrieval_service.api.queries import Resolved
from retrieval_service.search.capping import CapTooTight, capped_windows
from retrieval_service.shared_state.cache import ResultCache, exclusions_digest


class Searcher:
    """``search(queries, metric, exact, exclude)`` -> per query (distances (k,), ids (k,)), unpadded."""

    def __init__(
        self, engine, cache: ResultCache, metrics: ServiceMetrics, max_pending: int, serialise: bool = False
    ):
        self.engine = engine
        self.cache = cache
        self.metrics = metrics
        self.max_pending = max_pending
        self._engine_lock: threading.Lock | contextlib.nullcontext = (
            threading.Lock() if serialise else contextlib.nullcontext()
        )
        self._count_lock = threading.Lock()
        self._pending = 0

    def search(
        self,
        queries: Sequence[Resolved],
        metric: str,
        exact: bool,
        exclude: Sequence[int],
        prepare: Callable[[Sequence[Resolved]], None] = lambda queries: None,
        max_per_source: int | None = None,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """Results in query order, and whether every one came from the cache.

        ``prepare(misses)`` fills in the descriptors the cache could not spare us (decoding images).
        ``max_per_source``: a source goes to at most that many queries (``search.capping``); the answers
        then depend on the whole query set, which is part of their cache keys.
        """
        excl = exclusions_digest(exclude)
        if max_per_source is not None:
            return self._search_capped(queries, metric, exact, exclude, prepare, max_per_source, excl)
        keys = [self.cache.key(metric, exact, q.digest, q.k, q.offset, excl) for q in queries]
        results: list[tuple[np.ndarray, np.ndarray] | None] = list(self.cache.get_many(keys))
        if self.cache.enabled:
            hits = sum(r is not None for r in results)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(len(results) - hits)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            prepare([queries[i] for i in missing])
            exclude_ids = sorted(set(int(i) for i in exclude))
            fresh = []
            for (k, offset), members in _group_by_window([queries[i] for i in missing], missing).items():
                batch = np.stack([queries[i].descriptor for i in members])  # (n, D, B)
                dist, ids = self._run(batch, k, offset, metric, exact, exclude_ids)  # (n, k) each
                for row, i in enumerate(members):
                    keep = ids[row] >= 0  # engine pads short answers with -1 / inf
                    results[i] = (dist[row][keep].astype(np.float32), ids[row][keep].astype(np.int64))
                    fresh.append((keys[i], *results[i]))
            self.cache.set_many(fresh)
        return [r for r in results if r is not None], not missing

    def _search_capped(self, queries, metric, exact, exclude, prepare, cap: int, excl: str):
        request = hashlib.sha256("\n".join(q.digest for q in queries).encode()).hexdigest()[:32]
        keys = [
            self.cache.key(metric, exact, f"cap{cap}:{request}:{i}", q.k, q.offset, excl)
            for i, q in enumerate(queries)
        ]
        cached = self.cache.get_many(keys)
        if self.cache.enabled:
            hits = sum(r is not None for r in cached)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(len(cached) - hits)
        if all(r is not None for r in cached):
            return list(cached), True
        prepare(list(queries))
        exclude_ids = sorted(set(int(i) for i in exclude))
        eligible = self.engine.size - sum(1 for i in exclude_ids if i < self.engine.size)
        batch = np.stack([q.descriptor for q in queries])  # (n, D, B)
        try:
            results = capped_windows(
                lambda depth: self._run(batch, depth, 0, metric, exact, exclude_ids),
                [(q.k, q.offset) for q in queries],
                cap,
                eligible,
            )
        except CapTooTight as exc:
            raise LimitExceeded(str(exc), {"max_per_source": cap, "queries": len(queries)}) from exc
        self.cache.set_many([(key, *r) for key, r in zip(keys, results, strict=True)])
        return results, False

    def _run(self, batch: np.ndarray, k: int, offset: int, metric: str, exact: bool, exclude: list[int]):
        with self._count_lock:
            if self._pending >= self.max_pending:
                self.metrics.rejected.inc()
                raise Overloaded(
                    f"the search queue is full ({self.max_pending} waiting); retry shortly",
                    headers={"Retry-After": "1"},
                )
            self._pending += 1
            self.metrics.queue_depth.set(self._pending)
        try:
            with self._engine_lock:
                return self.engine.search(
                    batch, k=k, offset=offset, metric=metric, exact=exact, exclude=exclude
                )
        finally:
            with self._count_lock:
                self._pending -= 1
                self.metrics.queue_depth.set(self._pending)


def _group_by_window(
    queries: Sequence[Resolved], positions: Sequence[int]
) -> dict[tuple[int, int], list[int]]:
    """Positions grouped by (k, offset), so each group is one batched engine call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for q, i in zip(queries, positions, strict=True):
        groups.setdefault((q.k, q.offset), []).append(i)
    return groups
