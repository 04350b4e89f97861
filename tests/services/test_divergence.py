"""Divergences against independent slow references: scipy rel_entr loops and FAISS METRIC_JensenShannon."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from scipy.special import rel_entr

from services.divergence import (
    METRICS,
    SKL_EPS,
    hellinger_embedding,
    paired,
    pairwise,
    validate_histograms,
)
from services.errors import DescriptorError

D, B = 6, 8


def random_histograms(rng: np.random.Generator, n: int, zero_frac: float = 0.0) -> np.ndarray:
    """(n, D, B) float32, rows sum to 1; ``zero_frac`` of the bins emptied (at least one bin kept per row)."""
    h = rng.dirichlet(np.full(B, 0.7), size=(n, D))
    if zero_frac:
        mask = rng.random(h.shape) < zero_frac
        mask[..., 0] = False
        h[mask] = 0.0
        h /= h.sum(axis=2, keepdims=True)
    return h.astype(np.float32)


def reference(metric: str, p: np.ndarray, q: np.ndarray, w: np.ndarray) -> float:
    """One pair, float64, a Python loop over filters with scipy's rel_entr (0 log 0 = 0)."""
    p = p.astype(np.float64)
    q = q.astype(np.float64)
    total = 0.0
    for h in range(p.shape[0]):
        if metric == "js":
            m = (p[h] + q[h]) / 2
            value = 0.5 * rel_entr(p[h], m).sum() + 0.5 * rel_entr(q[h], m).sum()
        else:
            ps, qs = p[h] + SKL_EPS, q[h] + SKL_EPS
            value = 0.5 * (rel_entr(ps, qs).sum() + rel_entr(qs, ps).sum())
        total += w[h] * value
    return total


def reference_matrix(metric, P, Q, w) -> np.ndarray:
    return np.array([[reference(metric, p, q, w) for q in Q] for p in P])


@pytest.fixture
def weights() -> np.ndarray:
    w = np.random.default_rng(7).uniform(0.5, 1.5, D)
    return (w / w.sum()).astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("zero_frac", [0.0, 0.3])
def test_pairwise_matches_rel_entr(metric, zero_frac, weights):
    rng = np.random.default_rng(1)
    P, Q = random_histograms(rng, 5, zero_frac), random_histograms(rng, 37, zero_frac)
    got = pairwise(metric, P, Q, weights, chunk=64)  # small chunks: several query and candidate blocks
    ref = reference_matrix(metric, P, Q, weights)
    assert got.dtype == np.float32 and got.shape == (5, 37)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("metric", METRICS)
def test_paired_matches_reference_and_pairwise(metric, weights):
    rng = np.random.default_rng(2)
    P = random_histograms(rng, 4, 0.2)
    Q = random_histograms(rng, 4 * 9, 0.2).reshape(4, 9, D, B)
    got = paired(metric, P, Q, weights, chunk=20)
    ref = np.array([[reference(metric, P[i], Q[i, r], weights) for r in range(9)] for i in range(4)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)
    for i in range(4):  # the same arithmetic: bit-identical to pairwise
        np.testing.assert_array_equal(got[i], pairwise(metric, P[i : i + 1], Q[i], weights)[0])


def test_js_matches_faiss_on_smoothed_weighted_concatenation(weights):
    """FAISS's JS on concat_h(w_h * phi_h) equals our weighted JS (1-homogeneity); FAISS needs no zeros."""
    rng = np.random.default_rng(3)
    P, Q = random_histograms(rng, 6, 0.3), random_histograms(rng, 50, 0.3)
    P = (P + 1e-4) / (P + 1e-4).sum(axis=2, keepdims=True)
    Q = (Q + 1e-4) / (Q + 1e-4).sum(axis=2, keepdims=True)
    P, Q = P.astype(np.float32), Q.astype(np.float32)
    index = faiss.IndexFlat(D * B, faiss.METRIC_JensenShannon)
    index.add((Q * weights[:, None]).reshape(len(Q), -1))
    dist, ids = index.search((P * weights[:, None]).reshape(len(P), -1), len(Q))
    ref = np.empty_like(dist)
    np.put_along_axis(ref, ids, dist, axis=1)
    np.testing.assert_allclose(pairwise("js", P, Q, weights), ref, rtol=1e-5, atol=1e-8)


def test_faiss_js_is_nan_on_empty_bins_ours_is_not(weights):
    """Why we do not use FAISS's JS: an empty bin gives NaN there (0 * log(m / 0)) and the row is dropped."""
    rng = np.random.default_rng(4)
    P, Q = random_histograms(rng, 2, 0.5), random_histograms(rng, 3, 0.5)
    index = faiss.IndexFlat(D * B, faiss.METRIC_JensenShannon)
    index.add(Q.reshape(3, -1))
    dist, ids = index.search(P.reshape(2, -1), 3)
    dropped = (ids < 0) | ~np.isfinite(dist) | (dist > 1e30)
    assert dropped.any()
    ours = pairwise("js", P, Q, np.full(D, 1 / D, np.float32))
    assert np.all(np.isfinite(ours)) and np.all(ours > 0)


@pytest.mark.parametrize("metric", METRICS)
def test_identical_histograms_are_zero_and_symmetric(metric, weights):
    rng = np.random.default_rng(5)
    P = random_histograms(rng, 8, 0.3)
    M = pairwise(metric, P, P, weights)
    assert np.all(np.diag(M) == 0.0)
    np.testing.assert_allclose(M, M.T, rtol=1e-6, atol=1e-9)


def test_js_bounds_and_disjoint_support():
    """JS <= ln 2 with equality for disjoint supports; SKL there is dominated by log(1 / eps)."""
    p = np.zeros((1, D, B), np.float32)
    q = np.zeros((1, D, B), np.float32)
    p[..., 0] = 1.0
    q[..., 1] = 1.0
    w = np.full(D, 1 / D, np.float32)
    np.testing.assert_allclose(pairwise("js", p, q, w), [[np.log(2)]], rtol=1e-6)
    expected_skl = 0.5 * 2 * (1 + SKL_EPS) * np.log((1 + SKL_EPS) / SKL_EPS)
    np.testing.assert_allclose(pairwise("skl", p, q, w), [[expected_skl]], rtol=1e-5)


def test_float16_memmap_candidates(tmp_path, weights):
    rng = np.random.default_rng(6)
    P, Q = random_histograms(rng, 3), random_histograms(rng, 20)
    mm = np.memmap(tmp_path / "h.f16", dtype=np.float16, mode="w+", shape=Q.shape)
    mm[:] = Q
    got = pairwise("js", P, mm, weights, chunk=7)
    np.testing.assert_allclose(got, reference_matrix("js", P, np.asarray(mm, np.float32), weights), rtol=1e-5)


def test_hellinger_embedding_l2_is_weighted_hellinger(weights):
    rng = np.random.default_rng(8)
    H = random_histograms(rng, 5, 0.2)
    z = hellinger_embedding(H, weights, chunk=2)
    assert z.shape == (5, D * B) and z.dtype == np.float32
    np.testing.assert_allclose((z**2).sum(axis=1), 1.0, rtol=1e-5)  # sum_h w_h = 1
    h64 = H.astype(np.float64)
    ref = (weights[:, None] * (np.sqrt(h64[0]) - np.sqrt(h64[1])) ** 2).sum()
    np.testing.assert_allclose(((z[0] - z[1]) ** 2).sum(), ref, rtol=1e-5)


def test_validate_accepts_all_layouts():
    rng = np.random.default_rng(9)
    H = random_histograms(rng, 3)
    for layout in (H, H.reshape(3, -1), H[0], H[0].reshape(-1), H.astype(np.float64).tolist()):
        out = validate_histograms(layout, D, B)
        assert out.dtype == np.float32 and out.ndim == 3 and out.shape[1:] == (D, B)
    np.testing.assert_array_equal(validate_histograms(H.reshape(3, -1), D, B), H)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: h.reshape(3, D * B)[:, :-1], "shape"),
        (lambda h: h[:, :, :-1], "shape"),
        (lambda h: _set(h, (2, 4, 1), np.nan), "query 2, filter 4: histogram contains NaN"),
        (lambda h: _set(h, (1, 0, 0), np.inf), "query 1, filter 0: histogram contains NaN or inf"),
        (lambda h: _set(h, (1, 3, 0), -0.2), "query 1, filter 3, bin 0: negative"),
        (lambda h: _set(h, (0, 5, 2), h[0, 5, 2] + 0.01), "query 0, filter 5: bins sum to"),
        (lambda h: "not a number", "numeric"),
    ],
)
def test_validate_errors_name_the_culprit(mutate, message):
    H = random_histograms(np.random.default_rng(10), 3).astype(np.float64)
    with pytest.raises(DescriptorError, match=message.replace("(", r"\(")):
        validate_histograms(mutate(H.copy()), D, B)


def test_validate_tolerance():
    H = random_histograms(np.random.default_rng(11), 1).astype(np.float64)
    H[0, 0, 0] += 5e-4
    validate_histograms(H, D, B)  # within the default atol 1e-3
    with pytest.raises(DescriptorError):
        validate_histograms(H, D, B, atol=1e-4)


def _set(h, idx, value):
    h[idx] = value
    return h

