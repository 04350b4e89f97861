"""The engine's settings chosen from the corpus size N: candidate index, cells, probes, re-rank depth, store.

Tiers (measured in bench/results/scale.md on 2 shared cores, k = 100, recall@100 against the exact scan):

| N | candidate index | store | why |
|---|---|---|---|
| < 50 k | ``flat``: exact L2 on the embedding | float16 | a full scan is cheaper than k-means |
| 50 k - 1 M | ``ivf`` + ``sq8``: ~4 sqrt(N) cells, 1/16 probed | float16 | 1 byte per dimension |
| >= 1 M | ``ivf`` + ``pq``: PCA to 128 dims, IVF-PQ 64 bytes | float16, uint8 past 4 GiB | see below |

From 1 M on the build cost, not the search, sets the index: assigning N vectors to nlist cells costs
N * nlist * dim multiply-adds, so the ``pq`` tier assigns in 128 PCA dimensions (6x cheaper than 768) to
sqrt(N) cells (~1 min at 10 M), 1/24 probed, and stores 64-byte codes (12x smaller than SQ8). The approximate
candidate order is paid back by a deeper exact re-rank (``PQ_RERANK_FACTOR``; twice that on uint8 stores,
whose table re-rank is ~4x cheaper). Any explicit argument overrides the rule (``build --nlist/--nprobe``,
``serve --nprobe``, or ``nprobe`` / ``rerank_factor`` edited in ``engine.json``). ``pqfs`` (4-bit fast-scan
PQ) is never chosen: its candidate order at 1 M was far too coarse (bench/results/scale.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retrieval_service.search import store

KINDS = ("auto", "flat", "ivf")
CODECS = ("sq8", "flat", "pq", "pqfs")
IVF_THRESHOLD = 50_000
PQ_THRESHOLD = 1_000_000
TRAIN_POINTS_PER_CELL = 40  # FAISS warns below 39; more costs k-means time linearly for little gain
FLAT_RERANK_FACTOR = 2  # recall@100 0.999 (flat, N = 200k); 4 bought no recall: bench/results/search.md
PQ_RERANK_FACTOR = 16  # PQ candidates are approximate: re-rank 16 x (offset + k) of them exactly
# A uint8 store re-ranks through per-query tables (code_tables.py), ~4x cheaper per candidate: twice as deep.
# At 10 M (3162 cells, 132 probes) 16 -> 32 lifted recall@100 0.990 -> 0.996 (bench/results/scale.md).
PQ_RERANK_FACTOR_U8 = 32
PQ_MIN_NPROBE = 24


@dataclass(frozen=True)
class Plan:
    """Everything ``SearchEngine.build`` needs to know besides the data."""

    kind: str
    codec: str
    nlist: int
    nprobe: int
    rerank_factor: int
    store_dtype: np.dtype


def default_nlist(n: int) -> int:
    """~4 sqrt(N) cells, but never fewer than 39 training points per cell."""
    return max(1, min(round(4 * math.sqrt(n)), n // TRAIN_POINTS_PER_CELL))


def default_nprobe(nlist: int) -> int:
    """Cells visited per query: 1/16 of them (at least 8); see bench/results/search.md for recall@100."""
    return min(nlist, max(8, math.ceil(nlist / 16)))


def pq_nlist(n: int) -> int:
    """~sqrt(N) cells for the PQ tier (3162 at 10 M). At 1 M, 1000 cells with 72 probes reached recall@100
    0.9994 where 333 cells with 24 probes (the same 72,000 codes scanned) reached 0.9972: smaller cells
    spend the scan on nearer codes. Assignment costs N * nlist * 128 multiply-adds: ~1 min at 10 M."""
    return max(1, min(round(math.sqrt(n)), n // TRAIN_POINTS_PER_CELL))


def pq_nprobe(nlist: int) -> int:
    """1/24 of the cells, at least 24: at 10 M (3162 cells, re-rank 32) 132 probes gave recall@100 0.996,
    198 gave 0.998 at 5 % fewer queries/s; with 1054 cells 1/32 had given 0.987 and 1/16 0.993."""
    return min(nlist, max(PQ_MIN_NPROBE, math.ceil(nlist / 24)))


def plan(n: int, d: int, b: int, *, kind: str = "auto", codec: str | None = None, nlist: int | None = None,
         nprobe: int | None = None, rerank_factor: int | None = None, store_dtype=None,
         ivf_threshold: int = IVF_THRESHOLD, pq_threshold: int = PQ_THRESHOLD) -> Plan:
    """The settings for N sources of D filters x B bins; every argument given explicitly wins."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if codec is not None and codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if rerank_factor is not None and rerank_factor < 1:
        raise ValueError("rerank_factor must be >= 1")
    if kind == "auto":
        kind = "ivf" if n >= ivf_threshold else "flat"
    if kind == "ivf" and n == 0:
        kind = "flat"
    dtype = np.dtype(store_dtype) if store_dtype is not None else store.choose_dtype(n, d, b)
    store.store_file(dtype)  # validates the dtype
    if kind == "flat":
        return Plan("flat", "-", 0, 0, rerank_factor or FLAT_RERANK_FACTOR, dtype)
    codec = codec or ("pq" if n >= pq_threshold else "sq8")
    if codec in ("pq", "pqfs"):
        nlist = nlist or pq_nlist(n)
        nprobe = nprobe or pq_nprobe(nlist)
        deep = PQ_RERANK_FACTOR_U8 if dtype == store.U8 else PQ_RERANK_FACTOR
        return Plan("ivf", codec, nlist, nprobe, rerank_factor or deep, dtype)
    nlist = nlist or default_nlist(n)
    return Plan("ivf", codec, nlist, nprobe or default_nprobe(nlist), rerank_factor or FLAT_RERANK_FACTOR,
                dtype)
