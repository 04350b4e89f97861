"""Result cache in Redis: one entry per (index, spec, metric, exact, query, window, exclusions), with a TTL.

Entries hold one query's neighbor window (ids + distances as raw little-endian bytes), so a request mixing
cached and new queries only searches the new ones, and a hit returns exactly the bytes the search produced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from retrieval_service.shared_state.connection import RedisState


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def exclusions_digest(exclude: Iterable[int]) -> str:
    """Order- and duplicate-insensitive digest of excluded source ids."""
    ids = np.unique(np.fromiter(exclude, dtype=np.int64))
    return digest(ids.astype("<i8").tobytes())[:32] if ids.size else "-"


class ResultCache:
    """Neighbor windows keyed by everything that determines them; a no-op when Redis is absent or down."""

    def __init__(self, state: RedisState, prefix: str, index_id: str, spec_hash: str, ttl_s: int):
        self.state = state
        self.ttl_s = ttl_s
        # Index id and spec hash are in every key: a rebuilt index never serves stale answers.
        self._base = f"{prefix}:cache:{index_id}:{spec_hash[:16]}"

    @property
    def enabled(self) -> bool:
        return self.state.configured and self.ttl_s > 0

    def key(self, metric: str, exact: bool, query_digest: str, k: int, offset: int, excl_digest: str) -> str:
        return f"{self._base}:{metric}:{int(exact)}:{query_digest}:{k}:{offset}:{excl_digest}"

    def get_many(self, keys: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per key: (distances (k,) float32, ids (k,) int64) or None on a miss (or when Redis is unusable)."""
        if not self.enabled or not keys:
            return [None] * len(keys)
        values = self.state.run(lambda c: c.mget(keys))
        if values is None:
            return [None] * len(keys)
        return [_decode(v) if v is not None else None for v in values]

    def set_many(self, items: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Store (key, distances (k,), ids (k,)) entries with the TTL, in one round trip."""
        if not self.enabled or not items:
            return

        def _store(client) -> None:
            pipe = client.pipeline(transaction=False)
            for key, dist, ids in items:
                pipe.set(key, _encode(dist, ids), ex=self.ttl_s)
            pipe.execute()

        self.state.run(_store)


def _encode(dist: np.ndarray, ids: np.ndarray) -> bytes:
    # Layout: k (uint32) | ids (k int64) | distances (k float32); little-endian, exact round trip.
    k = len(ids)
    return np.uint32(k).astype("<u4").tobytes() + ids.astype("<i8").tobytes() + dist.astype("<f4").tobytes()


def _decode(blob: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    if len(blob) < 4:
        return None
    k = int(np.frombuffer(blob[:4], dtype="<u4")[0])
    if len(blob) != 4 + 12 * k:
        return None  # a foreign or truncated value: treat as a miss
    ids = np.frombuffer(blob[4 : 4 + 8 * k], dtype="<i8").astype(np.int64)
    dist = np.frombuffer(blob[4 + 8 * k :], dtype="<f4").astype(np.float32)
    return dist, ids
