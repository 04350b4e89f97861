"""Approximate answers over HTTP keep recall@10 >= 0.99 against exact ones on a 2,000-image IVF index.

The corpus is 2,016 real PNG files (24 texture classes: six kinds at four scales, tests/imagegen.py),
indexed by the real build (forced to an IVF candidate index, engine defaults otherwise) and served by the
real ``serve`` subprocess. The queries are 100 other images of the same kinds, sent as image files, so the
whole path runs: decode, extraction under the index's spec, two-stage search against the exact scan.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.imagegen import TEXTURE_KINDS, write_image_folder
from tests.retrieval.live_server import live_server

SCALES = (3.0, 5.0, 8.0, 13.0)
PER_CLASS, N_QUERIES, K = 84, 100, 10
CLASSES = {f"{kind}_{int(scale)}": (kind, scale) for kind in TEXTURE_KINDS for scale in SCALES}


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    from retrieval_service.build.builder import build_index

    root = tmp_path_factory.mktemp("recall")
    write_image_folder(root / "corpus", CLASSES, per_class=PER_CLASS, size=32, seed=1)
    build_index(root / "corpus", root / "index", size=32, kind="ivf", workers=0, progress=False)
    queries = write_image_folder(root / "queries", CLASSES, per_class=5, size=32, seed=2)
    files = [path for paths in queries.values() for path in paths][:N_QUERIES]
    with live_server(root / "index", root / "server.log", redis_url=redis_url) as url:
        yield url, files


def test_the_index_is_a_2000_image_ivf_index(served):
    url, _ = served
    info = httpx.get(f"{url}/v1/index", timeout=30).json()
    assert info["index_kind"] == "ivf" and info["size"] == len(CLASSES) * PER_CLASS >= 2000


def test_recall_at_10_against_exact(served):
    url, files = served
    queries = [{"id": p.name, "image_b64": base64.b64encode(p.read_bytes()).decode()} for p in files]
    with httpx.Client(base_url=url, timeout=300) as client:
        approx = client.post("/v1/neighbors", json={"queries": queries, "k": K, "exact": False})
        exact = client.post("/v1/neighbors", json={"queries": queries, "k": K, "exact": True})
    assert approx.status_code == exact.status_code == 200, (approx.text[:300], exact.text[:300])
    hits = 0
    for a, e in zip(approx.json()["results"], exact.json()["results"], strict=True):
        assert a["id"] == e["id"] and len(e["neighbors"]) == K
        hits += len({n["source_id"] for n in a["neighbors"]} & {n["source_id"] for n in e["neighbors"]})
    recall = hits / (len(files) * K)
    assert recall >= 0.99, recall
