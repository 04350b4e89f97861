"""max_per_source assignment (search/capping.py) against its contract, on real engine rankings."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from retrieval_service.search.capping import CapTooTight, capped_windows
from retrieval_service.search.engine import SearchEngine


def _histograms(rng: np.random.Generator, n: int, d: int = 4, b: int = 6) -> np.ndarray:
    h = rng.random((n, d, b)) + 0.05
    return (h / h.sum(axis=2, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def engine() -> SearchEngine:
    rng = np.random.default_rng(0)
    return SearchEngine.build(_histograms(rng, 300), np.full(4, 0.25), kind="flat")


def _fetch(engine, queries, exact=True):
    calls = []

    def fetch(depth):
        calls.append(depth)
        return engine.search(queries, k=depth, exact=exact)

    return fetch, calls


def _capped(engine, queries, windows, cap, exact=True):
    fetch, calls = _fetch(engine, queries, exact)
    return capped_windows(fetch, windows, cap, engine.size), calls


def test_identical_queries_share_sources_up_to_the_cap_and_all_get_k(engine):
    q = np.repeat(engine.histograms([5]), 6, axis=0)  # six identical queries: worst case for the cap
    results, calls = _capped(engine, q, [(10, 0)] * 6, cap=2)
    counts = Counter(int(i) for _, ids in results for i in ids)
    assert all(len(ids) == 10 for _, ids in results)
    assert max(counts.values()) <= 2 and len(counts) == 30
    assert len(calls) >= 2, "six queries x 10 at cap 2 need 30 candidates: a deeper fetch"
    # Step 0: queries 0 and 1 (query order breaks the distance tie) take the best source; 2 and 3 move on
    # to the second best within the same step, 4 and 5 to the third.
    _, top = engine.search(q[:1], k=3, exact=True)
    assert [int(ids[0]) for _, ids in results] == [top[0][0]] * 2 + [top[0][1]] * 2 + [top[0][2]] * 2


def test_each_list_is_sorted_by_distance_then_id(engine):
    rng = np.random.default_rng(1)
    q = engine.histograms(rng.integers(0, 300, 8))
    results, _ = _capped(engine, q, [(15, 0)] * 8, cap=1)
    for dist, ids in results:
        assert len(ids) == 15
        order = np.lexsort((ids, dist))
        assert order.tolist() == list(range(15))
    assert len({int(i) for _, ids in results for i in ids}) == 8 * 15


def test_windows_concatenate_for_the_same_query_set(engine):
    rng = np.random.default_rng(2)
    q = engine.histograms(rng.integers(0, 300, 5))
    whole, _ = _capped(engine, q, [(20, 0)] * 5, cap=1)
    first, _ = _capped(engine, q, [(8, 0)] * 5, cap=1)
    rest, _ = _capped(engine, q, [(12, 8)] * 5, cap=1)
    mixed, _ = _capped(engine, q, [(8, 0), (12, 8), (20, 0), (3, 5), (1, 19)], cap=1)
    for i in range(5):
        joined = np.concatenate([first[i][1], rest[i][1]])
        assert joined.tolist() == whole[i][1].tolist()
    assert mixed[1][1].tolist() == whole[1][1][8:20].tolist()
    assert mixed[3][1].tolist() == whole[3][1][5:8].tolist()


def test_without_contention_the_cap_changes_nothing(engine):
    q = engine.histograms([0, 150])
    results, _ = _capped(engine, q, [(5, 0), (5, 0)], cap=1, exact=False)
    dist, ids = engine.search(q, k=5)
    if not set(ids[0].tolist()) & set(ids[1].tolist()):
        assert [r[1].tolist() for r in results] == ids.tolist()


def test_more_places_than_sources_times_cap_is_refused(engine):
    small = SearchEngine.build(engine.histograms(range(6)), np.full(4, 0.25), kind="flat")
    q = np.repeat(small.histograms([0]), 3, axis=0)
    results, _ = _capped(small, q, [(2, 0)] * 3, cap=1)  # 6 places, 6 sources: exactly enough
    assert sorted(int(i) for _, ids in results for i in ids) == list(range(6))
    with pytest.raises(CapTooTight, match="6 eligible sources fill at most 6 places"):
        _capped(small, q, [(3, 0)] * 3, cap=1)


def test_cap_must_be_positive(engine):
    with pytest.raises(ValueError):
        _capped(engine, engine.histograms([0]), [(1, 0)], cap=0)


def test_a_cap_needing_too_deep_lists_is_refused_before_fetching(engine):
    q = np.repeat(engine.histograms([5]), 6, axis=0)
    fetch, calls = _fetch(engine, q)
    with pytest.raises(CapTooTight, match="max_per_source=1"):
        capped_windows(fetch, [(10, 0)] * 6, 1, engine.size, max_pairs=6 * 40 - 1)
    assert calls == [20], "the first fetch fits; the doubled one would not and is never made"
