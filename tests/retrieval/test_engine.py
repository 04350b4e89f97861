"""SearchEngine on gabor descriptors of real (generated) images: exactness, recall, windows, ties, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval_service.search.engine import SearchEngine
from retrieval_service.search.storage import EMBEDDING_FILE, ENGINE_FILE, HISTOGRAMS_FILE
from services.errors import DescriptorError, IndexIntegrityError
from services.extract import DescriptorExtractor, fit_edges
from services.spec import gabor_spec
from tests.imagegen import TEXTURE_KINDS, texture, to_rgb

SIZE, BINS = 40, 16


def images(n: int, seed: int) -> np.ndarray:
    """uint8 (n, SIZE, SIZE, 3): every texture kind at scales 2.5..14 px."""
    rng = np.random.default_rng(seed)
    return np.stack([
        to_rgb(texture(TEXTURE_KINDS[i % len(TEXTURE_KINDS)], SIZE, rng, rng.uniform(2.5, 14)), rng)
        for i in range(n)
    ])


@pytest.fixture(scope="module")
def real():
    """Gabor descriptors (D = 48, B = 16) of 240 corpus images and 24 held-out query images; weights (D,)."""
    spec = gabor_spec(size=SIZE, bins=BINS)
    corpus_images, query_images = images(240, seed=1), images(24, seed=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 torch threads ran 10x slower than 1
    try:
        spec = spec.with_edges(fit_edges(DescriptorExtractor(spec, device="cpu"), [corpus_images[:48]], BINS))
        extractor = DescriptorExtractor(spec, device="cpu")
        return extractor.histograms(corpus_images), extractor.histograms(query_images), spec.weights_array()
    finally:
        torch.set_num_threads(threads)


def perturbed(base: np.ndarray, n: int, seed: int, sigma: float = 0.25) -> np.ndarray:
    """n descriptors near real ones: multiplicative log-normal noise per bin, renormalised. (n, D, B)"""
    rng = np.random.default_rng(seed)
    h = base[rng.integers(0, len(base), n)] * np.exp(sigma * rng.standard_normal((n, *base.shape[1:])))
    return (h / h.sum(axis=2, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(real):
    """3000 descriptors: the 240 real ones, then perturbed copies."""
    base, _, _ = real
    return np.concatenate([base, perturbed(base, 3000 - len(base), seed=3)])


@pytest.fixture(scope="module")
def flat(corpus, real):
    return SearchEngine.build(corpus, real[2], kind="flat")


@pytest.fixture(scope="module")
def ivf(corpus, real):
    return SearchEngine.build(corpus, real[2], kind="auto", ivf_threshold=1000)


def brute_force(metric: str, queries: np.ndarray, stored: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reference divergences (nq, N) in float64, written independently of services.divergence."""
    return np.stack([_brute_force_one(metric, p, stored, w) for p in queries])


def _brute_force_one(metric: str, query: np.ndarray, stored: np.ndarray, w: np.ndarray) -> np.ndarray:
    p = query.astype(np.float64)[None]  # (1, D, B)
    q = stored.astype(np.float64)  # (N, D, B)
    if metric == "js":
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_p = np.where(p > 0, p * np.log(p / m), 0.0)
            kl_q = np.where(q > 0, q * np.log(q / m), 0.0)
        per_filter = 0.5 * (kl_p + kl_q).sum(-1)
    else:
        pe, qe = p + 1e-10, q + 1e-10
        per_filter = 0.5 * ((pe * np.log(pe / qe)).sum(-1) + (qe * np.log(qe / pe)).sum(-1))
    return per_filter @ w.astype(np.float64)


def assert_exact_ranking(dist, ids, ref, k):
    """ids are a valid exact top-k under ``ref`` (nq, N): same distances, and the order is (distance, id)."""
    for i in range(len(ref)):
        order = np.lexsort((np.arange(ref.shape[1]), ref[i]))[:k]
        np.testing.assert_allclose(dist[i], ref[i, order], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(ref[i, ids[i]], ref[i, order], rtol=1e-4, atol=1e-7)
        clear = np.diff(ref[i, order]) > 1e-5 * ref[i, order][1:] + 1e-8  # gaps larger than float32 noise
        np.testing.assert_array_equal(ids[i][:-1][clear], order[:-1][clear])


@pytest.mark.parametrize("metric", ["js", "skl"])
def test_exact_equals_brute_force(flat, corpus, real, metric):
    queries, w = real[1][::2], real[2]
    dist, ids = flat.search(queries, k=20, metric=metric, exact=True)
    assert dist.dtype == np.float32 and ids.dtype == np.int64 and dist.shape == ids.shape == (12, 20)
    assert_exact_ranking(dist, ids, brute_force(metric, queries, flat.histograms(np.arange(3000)), w), 20)


@pytest.mark.parametrize("engine_name", ["flat", "ivf"])
@pytest.mark.parametrize("metric", ["js", "skl"])
def test_two_stage_recall(engine_name, metric, request, real):
    engine = request.getfixturevalue(engine_name)
    assert engine.kind == engine_name
    queries = real[1]
    _, exact_ids = engine.search(queries, k=10, metric=metric, exact=True)
    _, ids = engine.search(queries, k=10, metric=metric)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, exact_ids, strict=True)])
    assert recall >= 0.99, recall


@pytest.mark.parametrize("engine_name", ["flat", "ivf"])
@pytest.mark.parametrize("exact", [False, True])
def test_offset_windows_concatenate(engine_name, exact, request, real):
    engine = request.getfixturevalue(engine_name)
    queries, exclude = real[1][:8], [3, 17, 250]
    big_d, big_i = engine.search(queries, k=200, exact=exact, exclude=exclude)
    parts = [engine.search(queries, k=k, offset=o, exact=exact, exclude=exclude)
             for o, k in [(0, 10), (10, 30), (40, 25), (65, 70), (135, 65)]]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts], axis=1), big_i)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts], axis=1), big_d)
    assert np.all(np.diff(big_d, axis=1) >= 0)
    assert not np.isin(big_i, exclude).any()


@pytest.mark.parametrize("exact", [False, True])
def test_ties_are_ordered_by_source_id(corpus, real, exact):
    data = corpus[:600].copy()
    dup = [5, 77, 300, 599]
    data[dup] = data[123]
    engine = SearchEngine.build(data, real[2], kind="flat")
    dist, ids = engine.search(data[123], k=5, exact=exact)
    assert sorted(ids[0, :5].tolist()) == sorted([*dup, 123])
    np.testing.assert_array_equal(ids[0], [5, 77, 123, 300, 599])
    assert np.all(dist[0] == dist[0, 0])
    _, second = engine.search(data[123], k=2, offset=1, exact=exact)  # the tie group cut by a window edge
    np.testing.assert_array_equal(second[0], [77, 123])


def test_exclusions_and_padding(corpus, real):
    engine = SearchEngine.build(corpus[:20], real[2])
    exclude = list(range(0, 20, 2)) + [-4, 999]  # unknown ids are ignored
    for exact in (False, True):
        dist, ids = engine.search(real[1][:3], k=15, exclude=exclude, exact=exact)
        assert np.all(ids[:, :10] % 2 == 1) and np.all(ids[:, 10:] == -1)
        assert np.all(np.isinf(dist[:, 10:])) and np.all(np.isfinite(dist[:, :10]))
        assert all(sorted(row[:10]) == list(range(1, 20, 2)) for row in ids.tolist())
    dist, ids = engine.search(real[1][:1], k=5, offset=30)
    assert np.all(ids == -1) and np.all(np.isinf(dist))


def test_exclusions_match_exact(flat, real):
    queries = real[1][:6]
    _, top = flat.search(queries, k=10, exact=True)
    exclude = np.unique(top[:, :5])  # the best five of every query
    _, want = flat.search(queries, k=10, exact=True, exclude=exclude)
    _, got = flat.search(queries, k=10, exclude=exclude)
    assert not np.isin(got, exclude).any()
    np.testing.assert_array_equal(got, want)


def test_ivf_short_cells_fall_back_to_exhaustive(corpus, real):
    """nprobe=1 cannot supply enough candidates for a deep window: pools come from an exhaustive probe."""
    engine = SearchEngine.build(corpus[:1000], real[2], kind="ivf", nlist=20, nprobe=1)
    dist, ids = engine.search(real[1][:2], k=1000)
    for d, row in zip(dist, ids, strict=True):
        found = row[row >= 0]
        assert len(np.unique(found)) == len(found) >= 950  # only earlier pools' misses are left out
        assert np.all(np.diff(d[: len(found)]) >= 0) and np.all(row[len(found) :] == -1)
    _, part = engine.search(real[1][:2], k=300, offset=500)
    np.testing.assert_array_equal(part, ids[:, 500:800])


def test_rejects_bad_queries(flat, real):
    with pytest.raises(DescriptorError, match="shape"):
        flat.search(np.ones((2, 48, 15), np.float32), k=3)
    bad = real[1][:2].copy()
    bad[1, 4, 0] += 0.5
    with pytest.raises(DescriptorError, match="query 1, filter 4"):
        flat.search(bad, k=3)
    with pytest.raises(ValueError, match="metric"):
        flat.search(real[1][:1], k=3, metric="l2")
    with pytest.raises(IndexError):
        flat.histograms([0, 3000])


@pytest.mark.parametrize("engine_name", ["flat", "ivf"])
def test_save_load_roundtrip(engine_name, request, tmp_path, real, corpus):
    engine = request.getfixturevalue(engine_name)
    sums = engine.save(tmp_path)
    assert set(sums) == {HISTOGRAMS_FILE, EMBEDDING_FILE, ENGINE_FILE}
    assert (tmp_path / HISTOGRAMS_FILE).stat().st_size == 3000 * 48 * 16 * 2
    for mmap in (True, False):
        loaded = SearchEngine.load(tmp_path, mmap=mmap)
        assert (loaded.size, loaded.dim, loaded.bins, loaded.kind) == (3000, 48, 16, engine_name)
        np.testing.assert_array_equal(loaded.weights, engine.weights)
        np.testing.assert_array_equal(loaded.histograms([0, 2999]), engine.histograms([0, 2999]))
        np.testing.assert_allclose(loaded.histograms([7])[0], corpus[7], atol=5e-4)  # float16 storage
        for exact in (False, True):
            a = engine.search(real[1][:6], k=12, offset=3, exact=exact, exclude=[1, 2])
            b = loaded.search(real[1][:6], k=12, offset=3, exact=exact, exclude=[1, 2])
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


@pytest.fixture
def saved(tmp_path, corpus, real):
    SearchEngine.build(corpus[:500], real[2], kind="ivf", nlist=8).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", [HISTOGRAMS_FILE, EMBEDDING_FILE, ENGINE_FILE])
def test_flipped_byte_is_detected(saved, name):
    path = saved / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="checksum"):
        SearchEngine.load(saved)


@pytest.mark.parametrize("name", [HISTOGRAMS_FILE, EMBEDDING_FILE])
def test_truncated_file_is_detected_even_without_verify(saved, name):
    path = saved / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(IndexIntegrityError):
        SearchEngine.load(saved)
    with pytest.raises(IndexIntegrityError):
        SearchEngine.load(saved, verify=False)


@pytest.mark.parametrize("name", [HISTOGRAMS_FILE, EMBEDDING_FILE, ENGINE_FILE])
def test_missing_file_is_detected(saved, name):
    (saved / name).unlink()
    with pytest.raises(IndexIntegrityError, match="missing"):
        SearchEngine.load(saved)
