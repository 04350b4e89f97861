"""services.chunks.run_chunks: every start once, on worker threads when asked, errors raised to the caller."""

from __future__ import annotations

import threading

import pytest

from services.chunks import run_chunks


@pytest.mark.parametrize("threads", [1, 3])
def test_every_start_runs_once_and_threads_only_when_asked(threads):
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def fn(start: int) -> None:
        with lock:
            seen[start] = threading.get_ident()

    run_chunks(fn, range(0, 50, 10), threads)
    assert sorted(seen) == [0, 10, 20, 30, 40]
    on_caller = {ident == threading.get_ident() for ident in seen.values()}
    assert on_caller == ({True} if threads == 1 else {False})


def test_a_chunk_error_reaches_the_caller():
    def fn(start: int) -> None:
        if start == 2:
            raise ValueError("chunk 2")

    for threads in (1, 4):
        with pytest.raises(ValueError, match="chunk 2"):
            run_chunks(fn, [0, 1, 2, 3], threads)
