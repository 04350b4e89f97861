"""The large-corpus side of the engine: settings chosen from N, uint8 store, IVF-PQ recall, on-disk builds.

Recall and file tests use the gabor descriptors of real (generated) images from test_engine.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval_service.search import code_tables, store, tuning
from retrieval_service.search.engine import SearchEngine
from services.errors import IndexIntegrityError
from tests.retrieval.test_engine import brute_force, corpus, real  # noqa: F401  (module fixtures)

D, B = 48, 16


# ------------------------------------------------------------------ the auto-selection rule
@pytest.mark.parametrize(
    ("n", "kind", "codec", "nlist", "nprobe", "rerank", "dtype"),
    [
        (10_000, "flat", "-", 0, 0, 2, "<f2"),
        (200_000, "ivf", "sq8", 1789, 112, 2, "<f2"),  # 4 sqrt(N) cells, 1/16 probed
        (999_999, "ivf", "sq8", 4000, 250, 2, "<f2"),
        (1_000_000, "ivf", "pq", 1000, 42, 16, "<f2"),  # PQ tier: sqrt(N) cells, deeper re-rank
        (2_796_202, "ivf", "pq", 1672, 70, 16, "<f2"),  # the largest float16 store under 4 GiB
        (2_796_203, "ivf", "pq", 1672, 70, 32, "|u1"),  # uint8: table re-rank, twice as deep
        (10_000_000, "ivf", "pq", 3162, 132, 32, "|u1"),
    ],
)
def test_plan_follows_corpus_size(n, kind, codec, nlist, nprobe, rerank, dtype):
    p = tuning.plan(n, D, B)
    assert (p.kind, p.codec, p.nlist, p.nprobe, p.rerank_factor, p.store_dtype.str) == (
        kind, codec, nlist, nprobe, rerank, dtype)


def test_explicit_settings_win_over_the_rule():
    p = tuning.plan(10_000_000, D, B, codec="sq8", nlist=4096, nprobe=64, rerank_factor=3, store_dtype="<f2")
    assert (p.codec, p.nlist, p.nprobe, p.rerank_factor, p.store_dtype.str) == ("sq8", 4096, 64, 3, "<f2")
    assert tuning.plan(100, D, B, kind="ivf").kind == "ivf"
    assert tuning.plan(0, D, B, kind="ivf").kind == "flat"  # nothing to cluster


@pytest.mark.parametrize("bad", [dict(kind="hnsw"), dict(codec="opq"), dict(rerank_factor=0),
                                 dict(store_dtype="<f4")])
def test_plan_rejects_unknown_settings(bad):
    with pytest.raises(ValueError):
        tuning.plan(1000, D, B, **bad)


# ------------------------------------------------------------------ the uint8 store
def test_uint8_codes_sum_to_255_and_round_each_bin_within_one_step(corpus):  # noqa: F811
    codes = store.encode(corpus, store.U8)
    assert codes.dtype == np.uint8
    assert (codes.sum(axis=2, dtype=np.int64) == 255).all()
    decoded = store.decode(codes)
    assert np.abs(decoded - corpus).max() < 1 / 255
    np.testing.assert_allclose(decoded.sum(axis=2), 1.0, atol=1e-5)
    exact = np.full((1, 1, 5), 51 / 255, dtype=np.float32)  # representable values come back unchanged
    assert (store.encode(exact, store.U8) == 51).all()


def test_uint8_engine_ranks_by_the_stored_values(corpus, real):  # noqa: F811
    _, queries, w = real
    engine = SearchEngine.build(corpus, w, kind="flat", store_dtype="|u1")
    dist, ids = engine.search(queries, k=10, exact=True)
    stored = store.decode(store.encode(corpus, store.U8))
    ref = brute_force("js", queries, stored, w)
    np.testing.assert_allclose(dist, np.sort(ref, axis=1)[:, :10], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ IVF-PQ recall on real descriptors
@pytest.mark.parametrize(("metric", "codec"), [("js", "pq"), ("skl", "pq"), ("js", "pqfs")])
def test_ivf_pq_recall_at_10(corpus, real, metric, codec):  # noqa: F811
    _, queries, w = real
    engine = SearchEngine.build(corpus, w, kind="ivf", codec=codec)
    assert (engine.kind, engine.codec, engine.rerank_factor) == ("ivf", codec, tuning.PQ_RERANK_FACTOR)
    _, exact = engine.search(queries, k=10, metric=metric, exact=True)
    _, approx = engine.search(queries, k=10, metric=metric)
    recall = np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.99, recall


# ------------------------------------------------------------------ building straight to disk
@pytest.fixture(scope="module")
def on_disk(tmp_path_factory, corpus, real):  # noqa: F811
    directory = tmp_path_factory.mktemp("ondisk")
    engine = SearchEngine.build(corpus, real[2], kind="ivf", codec="pq", store_dtype="|u1",
                                directory=directory)
    return directory, engine


def test_a_store_built_in_place_is_memory_mapped_and_not_rewritten(on_disk):
    directory, engine = on_disk
    path = directory / "histograms.u8"
    assert isinstance(engine._store.raw, np.memmap)
    before = path.stat().st_mtime_ns
    sums = engine.save(directory)
    assert path.stat().st_mtime_ns == before
    meta = json.loads((directory / "engine.json").read_text())
    assert meta["histogram_dtype"] == "|u1" and meta["codec"] == "pq"
    assert sums["histograms.u8"] == meta["checksums"]["histograms.u8"]


def test_uint8_pq_engine_loads_to_the_same_answers(on_disk, real):  # noqa: F811
    directory, engine = on_disk
    engine.save(directory)
    loaded = SearchEngine.load(directory)  # verify=True re-hashes the store written during the build
    for exact in (False, True):
        a, b = engine.search(real[1], k=20, exact=exact), loaded.search(real[1], k=20, exact=exact)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])


def test_truncated_uint8_store_is_detected(on_disk, tmp_path):
    directory, engine = on_disk
    engine.save(tmp_path)  # a copy elsewhere: the store is written from the memory map
    with open(tmp_path / "histograms.u8", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(IndexIntegrityError, match="histograms.u8"):
        SearchEngine.load(tmp_path, verify=False)


# ------------------------------------------------------------------ uint8 distances through per-query tables
@pytest.mark.parametrize("metric", ["js", "skl"])
def test_code_tables_match_the_elementwise_divergence(corpus, real, metric):  # noqa: F811
    _, queries, w = real
    codes = store.encode(corpus, store.U8)
    flat = codes.reshape(len(codes), -1)
    cand = np.random.default_rng(0).integers(-1, len(codes), (len(queries), 50))  # -1: no candidate
    tables = code_tables.query_tables(metric, queries, w)
    got = code_tables.distances_to_candidates(tables, flat, cand)
    decoded = store.decode(codes)
    ref = np.stack([brute_force(metric, queries[i : i + 1], decoded[np.maximum(c, 0)], w)[0]
                    for i, c in enumerate(cand)])
    assert np.isinf(got[cand < 0]).all()
    np.testing.assert_allclose(got[cand >= 0], ref[cand >= 0], rtol=2e-5, atol=1e-7)
    rows = code_tables.distances_to_rows(tables, flat, 3, 40)
    np.testing.assert_array_equal(rows, code_tables.distances_to_candidates(
        tables, flat, np.broadcast_to(np.arange(3, 40), (len(queries), 37))))


def test_code_tables_numpy_fallback_equals_the_kernel(corpus, real, monkeypatch):  # noqa: F811
    _, queries, w = real
    flat = store.encode(corpus, store.U8).reshape(len(corpus), -1)
    cand = np.random.default_rng(1).integers(-1, len(flat), (len(queries), 30))
    tables = code_tables.query_tables("js", queries, w)
    compiled = code_tables.distances_to_candidates(tables, flat, cand)
    monkeypatch.setattr(code_tables, "_kernel", None)
    np.testing.assert_allclose(code_tables.distances_to_candidates(tables, flat, cand), compiled, rtol=1e-6)


@pytest.mark.parametrize("codec", ["pq", "pqfs"])
def test_uint8_two_stage_and_exact_give_a_source_the_same_distance(corpus, real, codec):  # noqa: F811
    _, queries, w = real
    engine = SearchEngine.build(corpus, w, kind="ivf", codec=codec, store_dtype="|u1")
    d_exact, i_exact = engine.search(queries, k=20, exact=True)
    d_two, i_two = engine.search(queries, k=20)
    for de, ie, dt, it in zip(d_exact, i_exact, d_two, i_two, strict=True):
        common, a, b = np.intersect1d(ie, it, return_indices=True)
        assert len(common) >= 18
        np.testing.assert_array_equal(de[a], dt[b])  # one kernel for both paths: bit for bit


def test_pread_rows_give_the_memory_map_distances(on_disk, real):  # noqa: F811
    _, engine = on_disk  # built straight into its directory: the store is memory-mapped from there
    _, queries, w = real
    rows = engine._store.raw.reshape(engine.size, -1)
    row_file = engine._codes
    assert isinstance(row_file, code_tables.RowFile)  # a memory-mapped store is re-ranked through pread
    cand = np.random.default_rng(2).integers(-1, engine.size, (len(queries), 40))
    tables = code_tables.query_tables("js", queries, w)
    np.testing.assert_array_equal(code_tables.distances_to_candidates(tables, row_file, cand),
                                  code_tables.distances_to_candidates(tables, rows, cand))
    np.testing.assert_array_equal(engine._store.read_raw(5, 30), engine._store.raw[5:30])


@pytest.mark.parametrize("dtype", ["<f2", "|u1"])
def test_threaded_rerank_gives_the_single_thread_answers(corpus, real, dtype):  # noqa: F811
    import faiss

    _, queries, w = real
    many = np.concatenate([queries] * (1 + 48 // len(queries)))  # several re-rank blocks
    engine = SearchEngine.build(corpus, w, kind="ivf", codec="pq", store_dtype=dtype)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = engine.search(many, k=10)
        faiss.omp_set_num_threads(2)
        two = engine.search(many, k=10)
    finally:
        faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
