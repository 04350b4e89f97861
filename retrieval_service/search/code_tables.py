"""Divergences to uint8-stored histograms through one table per query: 768 table reads per candidate, no logs.

A uint8 store (``store.py``) holds counts c in 0..255 per bin, decoded as q = c / 255. Both metrics are sums
over the D*B bins of a term that depends only on the query's bin value p_j and the count c, so per query
one table T[j, c] (D*B x 256, float32) holds every term the query can meet:

- js:  T[j, c] = w_j / 2 * (p log 2p + q log 2q - s log s), s = p + q (2 JS of the bin, as in
  ``services.divergence``; each term >= 0);
- skl: T[j, c] = w_j / 2 * (p - q) (log(p + eps) - log(q + eps)) (>= 0, no renormalisation).

A candidate's distance is then sum_j T[j, c_j]: 768 gathers from a 768 KB table that stays in L2, against
~10 numpy passes with two logs per element (4-5x faster on the re-rank of 2,048 candidates, table included:
``bench/search_rerank.py``, bench/results/scale.md). The table is computed in float64 and rounded once per
entry; the sum runs in float64 and is rounded to float32 at the end: every term is non-negative, so the
relative error is ~6e-8, below the float32 element-wise path's (they differ by <= 6e-6 relative). The kernel
reads each candidate row in place (an array) or with pread (``RowFile``), never a gathered copy, and releases
the GIL.

The exact scan of a uint8 store uses the same kernel (``distances_to_rows``), so both search paths give a
source the same distance bit for bit. Without numba the same sums are taken with numpy (float64, another
summation order): equal to ~1e-15 relative, not bit for bit, but exact and two-stage still agree because
they share whichever path is installed.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from services.chunks import run_chunks
from services.divergence import SKL_EPS

try:  # optional, like services/binning.py: the numpy path computes the same sums, slower
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the core extra
    njit = None

LEVELS = 256
QUERY_CHUNK = 8  # queries whose tables (8 x 768 x 256 float32 = 6 MB) are held at once
_SCALE = 255.0


def query_tables(metric: str, queries: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-query term tables for a uint8 store: float32 (nq, D*B, 256); ``queries`` float32 (nq, D, B)."""
    if metric not in ("js", "skl"):
        raise ValueError(f"unknown metric {metric!r}")
    nq, d, b = queries.shape
    half_w = np.repeat(np.asarray(w, np.float64), b)[:, None] / 2  # (D*B, 1)
    q = (np.arange(LEVELS, dtype=np.float64) / _SCALE)[None, :]  # (1, 256)
    q_term = _xlog2x(q) if metric == "js" else np.log(q + SKL_EPS)
    out = np.empty((nq, d * b, LEVELS), dtype=np.float32)
    for i in range(nq):  # one query at a time: the float64 temporaries (1.5 MB) stay in cache
        p = queries[i].reshape(d * b, 1).astype(np.float64)
        if metric == "js":
            s = p + q  # > 0 except where p == 0 and c == 0
            terms = np.log(np.where(s > 0, s, 1.0))
            terms *= s
            np.subtract(_xlog2x(p) + q_term, terms, out=terms)
            np.maximum(terms, 0.0, out=terms)  # exact zero at p == q; rounding never makes a term negative
        else:
            terms = np.log(p + SKL_EPS) - q_term
            terms *= p - q
        terms *= half_w
        out[i] = terms
    return out


def _xlog2x(x: np.ndarray) -> np.ndarray:
    """x log 2x with 0 log 0 = 0."""
    return x * np.log(np.where(x > 0, 2 * x, 1.0))  # small arrays: (nq, D*B, 1) or (1, 1, 256)


def distances_to_candidates(tables: np.ndarray, codes, cand: np.ndarray) -> np.ndarray:
    """Distance of query i to each of its candidates ``cand[i]`` (-1: none -> inf): float32 (nq, R).

    ``codes``: the store's uint8 rows as an (N, D*B) array, or a ``RowFile`` (rows read with pread).
    """
    out = np.empty(cand.shape, dtype=np.float32)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if isinstance(codes, RowFile):
        if _pread_kernel is not None:
            failed = _pread_kernel(tables, codes.fd, codes.width, cand, out, np.empty(codes.width, np.uint8))
            if failed:
                raise OSError(f"{codes.path}: {failed} rows could not be read (file truncated?)")
            return out
        codes = codes.rows
    if _kernel is not None:
        _kernel(tables, codes, cand, out)
        return out
    for i in range(len(cand)):
        ok = cand[i] >= 0
        rows = np.asarray(codes[cand[i][ok]])
        sums = tables[i][np.arange(rows.shape[1]), rows].astype(np.float64).sum(axis=1)
        out[i] = np.inf
        out[i][ok] = sums.astype(np.float32)
    return out


class RowFile:
    """The rows of a uint8 store file, read with ``pread`` one candidate at a time: the pages stay in the
    shared page cache and never enter this process's RSS (a memory map would: this kernel maps whole
    large folios, so random rows map most of the file within a few queries). ``rows``: the memory map, for
    the numpy fallback. One descriptor per store, shared by threads (pread has no file position)."""

    def __init__(self, path, rows: np.ndarray):
        self.path, self.rows = path, rows
        self.width = int(np.prod(rows.shape[1:]))
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


def rerank(metric: str, queries: np.ndarray, w: np.ndarray, codes: np.ndarray, cand: np.ndarray,
           threads: int = 1) -> np.ndarray:
    """Distance of each query to its candidates (-1: inf), float32 (nq, R): tables and sums for
    ``QUERY_CHUNK`` queries at a time (their tables take 6 MB), the chunks spread over ``threads`` threads
    (the kernel and numpy's large ufuncs release the GIL). Each query's row is the same whatever the split."""
    out = np.empty(cand.shape, dtype=np.float32)

    def chunk(start: int) -> None:
        stop = min(len(queries), start + QUERY_CHUNK)
        tables = query_tables(metric, queries[start:stop], w)
        out[start:stop] = distances_to_candidates(tables, codes, cand[start:stop])

    run_chunks(chunk, range(0, len(queries), QUERY_CHUNK), threads)
    return out


def distances_to_rows(tables: np.ndarray, codes: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Distance of every query to rows [start, stop) of the store: float32 (nq, stop - start)."""
    rows = np.arange(start, stop, dtype=np.int64)
    return distances_to_candidates(tables, codes, np.broadcast_to(rows, (len(tables), len(rows))))


def _row_distance(table, code, width):
    """One candidate's distance: the sum of its bins' table entries."""
    body = width - width % 4
    # four running sums: one float64 chain would wait on the add latency at every bin
    a0 = a1 = a2 = a3 = 0.0
    for j in range(0, body, 4):
        a0 += table[j, code[j]]
        a1 += table[j + 1, code[j + 1]]
        a2 += table[j + 2, code[j + 2]]
        a3 += table[j + 3, code[j + 3]]
    for j in range(body, width):
        a0 += table[j, code[j]]
    return (a0 + a1) + (a2 + a3)


def _sum_rows(tables, codes, cand, out):
    nq, r = cand.shape
    width = codes.shape[1]
    for i in range(nq):
        table = tables[i]
        for k in range(r):
            row = cand[i, k]
            if row < 0:
                out[i, k] = np.inf
                continue
            out[i, k] = _row_distance(table, codes[row], width)


def _sum_rows_pread(tables, fd, width, cand, out, buf):
    """``_sum_rows`` with each candidate row read into ``buf`` by pread; returns the count of short reads."""
    nq, r = cand.shape
    failed = 0
    for i in range(nq):
        table = tables[i]
        for k in range(r):
            row = cand[i, k]
            if row < 0:
                out[i, k] = np.inf
                continue
            if _pread(fd, buf.ctypes.data, width, row * width) != width:
                failed += 1
                out[i, k] = np.nan
                continue
            out[i, k] = _row_distance(table, buf, width)
    return failed


if njit is not None:  # compiled before the kernels that call it, inlined into them
    _row_distance = njit(nogil=True, inline="always")(_row_distance)
_kernel = njit(nogil=True, cache=True)(_sum_rows) if njit is not None else None
try:  # POSIX pread from libc; elsewhere the rows come from the memory map (numpy-side gather)
    _pread = ctypes.CDLL(None, use_errno=True).pread
    _pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
    _pread.restype = ctypes.c_ssize_t
except (OSError, AttributeError, TypeError):  # pragma: no cover - not Linux/macOS
    _pread = None
# not cached on disk: a ctypes function pointer is a per-process constant (compiled on first use, ~1 s)
_pread_kernel = njit(nogil=True)(_sum_rows_pread) if njit is not None and _pread is not None else None
