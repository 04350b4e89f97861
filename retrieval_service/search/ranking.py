"""Total orders over (distance, source_id) and the window-independent ranked list of the two-stage search.

Keys: a non-negative float32's bit pattern orders like the float, so ``bits << 32 | source_id`` (uint64)
orders pairs by (distance, source_id) with a single integer comparison: partial sorts (``np.partition``) over
keys are exact top-k selections with ties broken by id, no tie group is ever cut arbitrarily.

Ranked list of the two-stage search: positions are filled bucket by bucket, bucket j ending at position
``e_j = BUCKET_BASE * 2**j``. Bucket j takes, in (distance, source_id) order, the members of its candidate
pool (the first ``rerank_factor * e_j`` FAISS candidates) that rank after the last listed entry. A pool
depends only on the query, j and the exclusions, never on the requested window, so each window
[offset, offset + k) is a slice of one fixed, sorted list: windows concatenate exactly to the answer of one
big request. The price: a source that an earlier, smaller pool missed but a later pool finds *before* the last
listed entry is never listed (a recall miss of the earlier positions, never a duplicate or an out-of-order
entry), so a window reaching the size of the corpus may be padded with (inf, -1) a little early. Residual
assumption: FAISS returns the same candidate prefix for the same query whatever k; exact float ties of the
embedding distance at a pool boundary could in principle be cut differently by calls with another k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BUCKET_BASE = 64
NO_KEY = np.uint64(np.iinfo(np.uint64).max)  # an empty slot: decodes to (inf, -1)
_ID_MASK = np.uint64(0xFFFFFFFF)


def encode_keys(dist: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint64 keys ordering by (distance, id); ``dist`` >= 0 float32, ``ids`` in [0, 2**32)."""
    d = np.asarray(dist, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 == +0.0: one bit pattern for zero
    return (d.view(np.uint32).astype(np.uint64) << np.uint64(32)) | np.asarray(ids).astype(np.uint64)


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode_keys``; ``NO_KEY`` slots become (inf, -1)."""
    empty = keys == NO_KEY
    dist = (keys >> np.uint64(32)).astype(np.uint32).view(np.float32).copy()
    ids = (keys & _ID_MASK).astype(np.int64)
    dist[empty] = np.inf
    ids[empty] = -1
    return dist, ids


def smallest_keys(keys: np.ndarray, n: int) -> np.ndarray:
    """The n smallest keys of each row, sorted; rows shorter than n are padded with ``NO_KEY``. (nq, n)"""
    nq, m = keys.shape
    if m > n:
        keys = np.partition(keys, n - 1, axis=1)[:, :n]
    keys = np.sort(keys, axis=1)
    if keys.shape[1] < n:
        keys = np.concatenate([keys, np.full((nq, n - keys.shape[1]), NO_KEY)], axis=1)
    return keys


def bucket_ends(window: int) -> list[int]:
    """End positions e_j = BUCKET_BASE * 2**j of the buckets covering positions [0, window)."""
    ends = [BUCKET_BASE]
    while ends[-1] < window:
        ends.append(ends[-1] * 2)
    return ends


def ranked_list(pools: Sequence[np.ndarray], ends: Sequence[int]) -> np.ndarray:
    """One query's sorted list of keys: bucket j appends its pool's keys that rank after the last listed one,
    up to position ends[j].

    ``pools[j]``: keys (any order) of the candidates in bucket j's pool. The result may be shorter than
    ``ends[-1]`` when the pools run out of eligible candidates.
    """
    listed: list[np.ndarray] = []
    count = 0
    last = None
    for pool, end in zip(pools, ends, strict=True):
        if last is not None:
            pool = pool[pool > last]  # keys are unique: "after last" also means "not listed yet"
        take = np.sort(pool)[: end - count]
        if len(take):
            listed.append(take)
            count += len(take)
            last = take[-1]
    return np.concatenate(listed) if listed else np.empty(0, dtype=np.uint64)
