"""Run a function over chunk starts on a thread pool, or in this thread when one thread (or one chunk) is all
there is. The callers' chunks write disjoint slices of one output array, and their heavy work (torch, numba
``nogil`` kernels, large numpy ufuncs) releases the GIL, so threads give real parallelism."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def run_chunks(fn: Callable[[int], None], starts: Sequence[int], threads: int) -> None:
    """``fn(start)`` for every start: ``min(threads, len(starts))`` threads when both exceed 1, else in order
    in the caller's thread (no pool start-up for the common single-chunk case). Exceptions propagate."""
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(fn, starts))
    else:
        for start in starts:
            fn(start)
