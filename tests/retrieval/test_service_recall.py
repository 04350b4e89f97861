"""Approximate answers over HTTP keep recall@10 >= 0.99 against exact ones on a 2,000-source IVF index.

2,000 extracted images would take minutes on a shared CPU, so the corpus is perturbed copies of REAL
descriptors (the 48 generated images of the shared test index): mixtures of two real descriptors with
multiplicative noise. The index (real SearchEngine, IVF, real SQLite manifest) is adopted by ``create_app``
and served by uvicorn on a loopback port in a thread: the same app, server and HTTP path as subprocess tests.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from retrieval_service.app import create_app
from retrieval_service.corpus import SourceRecord
from retrieval_service.engine import SearchEngine
from retrieval_service.index import LoadedIndex
from retrieval_service.manifest import Manifest, write_manifest
from retrieval_service.settings import Settings
from tests.conftest import free_port
from tests.retrieval.live_server import build_test_index, shared_index_root

N_SOURCES, N_QUERIES, K = 2000, 100, 10
RERANK_FACTOR = 8


def perturbed(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, D, B) histograms near the (M, D, B) real ones: convex mixtures x log-normal noise, renormalised."""
    i, j = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    a = rng.uniform(0.0, 0.5, (n, 1, 1))
    h = ((1 - a) * real[i] + a * real[j]) * np.exp(0.3 * rng.standard_normal((n, *real.shape[1:])))
    return (h / h.sum(axis=2, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    real_dir = build_test_index(shared_index_root(tmp_path_factory))
    real = LoadedIndex.load(real_dir)
    rng = np.random.default_rng(7)
    corpus = perturbed(real.engine.histograms(np.arange(real.size)), N_SOURCES, rng)
    # rerank_factor 8: with the engine's default of 4 this corpus measured recall@10 = 0.971 (IVF, nlist 50,
    # nprobe 8); 8 measured 1.0. Reported to the engine's owner: the default may need raising.
    engine = SearchEngine.build(corpus, real.spec.weights_array(), kind="ivf", rerank_factor=RERANK_FACTOR)
    directory = tmp_path_factory.mktemp("svc-recall")
    classes = real.manifest.classes
    records = [
        SourceRecord(
            source_id=i,
            path=f"{i}.png",
            member=None,
            label=i % len(classes),
            class_name=classes[i % len(classes)],
            ext="png",
            nbytes=0,
        )
        for i in range(N_SOURCES)
    ]
    write_manifest(directory / "manifest.sqlite", records, classes)
    info = {**real.info, "size": N_SOURCES, "checksums": {"synthetic": "1"}}
    index = LoadedIndex(
        directory, info, real.spec, Manifest.open(directory / "manifest.sqlite"), engine, directory
    )
    real.close()

    port = free_port()
    app = create_app(Settings(port=port, redis_url="", max_k_plus_offset=100), index=index)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn sets this once the socket listens
        assert time.monotonic() < deadline and thread.is_alive(), "in-thread server did not start"
        time.sleep(0.02)  # between start checks, bounded by the deadline
    yield url, index, rng
    server.should_exit = True
    thread.join(timeout=10)


def test_ivf_index_is_really_approximate(base_url):
    _, index, _ = base_url
    assert index.engine.kind == "ivf" and index.size == N_SOURCES


def test_recall_at_10_against_exact(base_url):
    url, index, rng = base_url
    queries = perturbed(index.engine.histograms(rng.integers(0, N_SOURCES, 48)), N_QUERIES, rng)
    body = {
        "queries": [
            {"id": str(i), "descriptor": q.tolist(), "spec_hash": index.spec.spec_hash}
            for i, q in enumerate(queries)
        ],
        "k": K,
    }
    with httpx.Client(base_url=url, timeout=120) as client:
        approx = client.post("/v1/neighbors", json={**body, "exact": False})
        exact = client.post("/v1/neighbors", json={**body, "exact": True})
        info = client.get("/v1/index").json()
    assert approx.status_code == exact.status_code == 200
    assert info["index_kind"] == "ivf" and info["size"] == N_SOURCES
    hits = 0
    for a, e in zip(approx.json()["results"], exact.json()["results"], strict=True):
        assert len(e["neighbors"]) == K
        hits += len({n["source_id"] for n in a["neighbors"]} & {n["source_id"] for n in e["neighbors"]})
    recall = hits / (N_QUERIES * K)
    assert recall >= 0.99, recall
