"""Every route of the REAL server (subprocess, real Redis): results, cache, sources, stream, jobs, auth."""

from __future__ import annotations

import base64
import io
import tarfile
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from retrieval_service.index.manifest import Manifest
from services.spec import DescriptorSpec
from tests.retrieval.live_server import live_server

TOKEN = "tok-" + uuid.uuid4().hex[:8]
LIMITS = {
    "SJFT_MAX_QUERIES_PER_REQUEST": "64",
    "SJFT_MAX_K_PLUS_OFFSET": "40",
    "SJFT_MAX_BODY_BYTES": str(2 * 1024 * 1024),
    "SJFT_MAX_IMAGE_PIXELS": str(4_000_000),
    "SJFT_MAX_STREAM_IDS": "100",
}


@pytest.fixture(scope="module")
def base_url(index_dir, redis_url, tmp_path_factory):
    env = {
        "SJFT_API_TOKENS": f"other-token,{TOKEN}",
        "SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}",
        **LIMITS,
    }
    log = tmp_path_factory.mktemp("svc-api-log") / "server.log"
    with live_server(index_dir, log, redis_url=redis_url, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def manifest(index_dir):
    m = Manifest.open(index_dir / "manifest.sqlite")
    yield m
    m.close()


def source_file(index_dir: Path, manifest: Manifest, source_id: int) -> Path:
    record = manifest.get(source_id)
    return index_dir.parent / "images" / record.path


def neighbors(client, **body) -> dict:
    r = client.post("/v1/neighbors", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def ids_of(result: dict) -> list[int]:
    return [n["source_id"] for n in result["neighbors"]]


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok" and ready.json()["redis"] == "ok"
    neighbors(client, queries=[{"id": "m", "source_id": 1}], k=3)
    text = client.get("/metrics").text
    assert 'sjft_http_requests_total{method="POST",route="/v1/neighbors",status="200"}' in text
    assert 'sjft_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/neighbors"}' in text
    assert "sjft_index_size 48.0" in text and "sjft_search_queue_depth" in text
    assert "sjft_cache_hits_total" in text and "sjft_cache_misses_total" in text


def test_index_info_and_spec(client):
    info = client.get("/v1/index").json()
    assert info["size"] == 48 and info["bank"] == "gabor" and info["bins"] == 8
    assert info["classes"] == sorted(["stripes", "checker", "dots", "noise", "rings", "blobs"])
    assert info["metrics"] == ["js", "skl"] and info["index_kind"] and info["created"]
    spec = DescriptorSpec.model_validate(client.get("/v1/spec").json())
    assert spec.spec_hash == info["spec_hash"] and spec.dim == info["dim"]


def test_neighbors_by_source_descriptor_and_image_agree(client, index_dir, manifest):
    by_id = neighbors(client, queries=[{"id": "s", "source_id": 11}], k=8)["results"][0]
    assert by_id["id"] == "s" and len(by_id["neighbors"]) == 8
    first = by_id["neighbors"][0]
    assert first["source_id"] == 11 and first["distance"] == pytest.approx(0.0, abs=1e-6)
    record = manifest.get(first["source_id"])
    assert (first["label"], first["class_name"]) == (record.label, record.class_name)
    keys = [(n["distance"], n["source_id"]) for n in by_id["neighbors"]]
    assert keys == sorted(keys)  # by distance, ties by source_id

    info = client.get("/v1/index").json()
    desc = client.get("/v1/sources/11/descriptor").json()
    assert desc["source_id"] == 11 and desc["spec_hash"] == info["spec_hash"]
    assert np.allclose(np.sum(desc["descriptor"], axis=1), 1.0, atol=1e-2)
    by_desc = neighbors(
        client, queries=[{"id": "d", "descriptor": desc["descriptor"], "spec_hash": info["spec_hash"]}], k=8
    )["results"][0]
    assert ids_of(by_desc) == ids_of(by_id)

    image = base64.b64encode(source_file(index_dir, manifest, 11).read_bytes()).decode()
    by_image = neighbors(client, queries=[{"id": "i", "image_b64": image}], k=8)["results"][0]
    assert ids_of(by_image)[0] == 11 and by_image["neighbors"][0]["distance"] < 1e-3


def test_per_query_windows_exclusions_metrics_and_exact(client):
    res = neighbors(
        client, queries=[{"id": "a", "source_id": 3}, {"id": "b", "source_id": 3, "k": 3, "offset": 2}], k=5
    )["results"]
    assert [r["id"] for r in res] == ["a", "b"]
    assert ids_of(res[1]) == ids_of(res[0])[2:5]
    excluded = ids_of(res[0])[:2]
    res_ex = neighbors(client, queries=[{"id": "a", "source_id": 3}], k=3, exclude_source_ids=excluded)[
        "results"
    ]
    assert ids_of(res_ex[0]) == ids_of(res[0])[2:5]
    approx = neighbors(client, queries=[{"id": "a", "source_id": 20}], k=10, metric="skl")["results"][0]
    exact = neighbors(client, queries=[{"id": "a", "source_id": 20}], k=10, metric="skl", exact=True)[
        "results"
    ][0]
    assert ids_of(approx) == ids_of(exact)
    js = neighbors(client, queries=[{"id": "a", "source_id": 20}], k=10, exact=True)["results"][0]
    assert [n["distance"] for n in js["neighbors"]] != [n["distance"] for n in exact["neighbors"]]
    # A window past the end of the index answers what exists.
    tail = neighbors(client, queries=[{"id": "t", "source_id": 0}], k=10, offset=30)["results"][0]
    assert len(tail["neighbors"]) == 10
    short = neighbors(
        client, queries=[{"id": "t", "source_id": 0}], k=20, offset=20, exclude_source_ids=list(range(10))
    )["results"][0]
    assert len(short["neighbors"]) == 48 - 10 - 20


def test_cache_hit_is_identical_and_faster(client, index_dir, manifest):
    # Image queries: a hit skips decoding and extraction, the dominant cost.
    queries = [
        {
            "id": f"q{i}",
            "image_b64": base64.b64encode(source_file(index_dir, manifest, i).read_bytes()).decode(),
        }
        for i in range(48)
    ]
    salt = uuid.uuid4().int % 1000 + 100  # an exclusion no earlier test used: the first call is a miss
    body = {"queries": queries, "k": 10, "exclude_source_ids": [salt]}
    miss = neighbors(client, **body)
    hits = [neighbors(client, **body) for _ in range(3)]
    assert miss["cached"] is False and all(h["cached"] for h in hits)
    assert all(h["results"] == miss["results"] for h in hits)
    best_hit = min(h["took_ms"] for h in hits)
    assert best_hit < miss["took_ms"] / 2, (best_hit, miss["took_ms"])
    # A mixed request (one new query) is answered, not marked cached.
    mixed = neighbors(
        client, queries=[*queries[:3], {"id": "new", "source_id": 40}], k=10, exclude_source_ids=[salt]
    )
    assert mixed["cached"] is False and mixed["results"][:3] == miss["results"][:3]


def test_upload_matches_json_images(client, index_dir, manifest):
    paths = [source_file(index_dir, manifest, i) for i in (5, 30)]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = client.post("/v1/neighbors/upload", files=files, data={"k": "4", "metric": "js"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["id"] for res in results] == [p.name for p in paths]
    assert [ids_of(res)[0] for res in results] == [5, 30]
    dup = client.post("/v1/neighbors/upload", files=[files[0], files[0]])
    assert dup.status_code == 422 and "unique" in dup.json()["error"]["message"]


def test_source_bytes_etag_and_304(client, index_dir, manifest):
    path = source_file(index_dir, manifest, 7)
    r = client.get("/v1/sources/7")
    assert r.status_code == 200 and r.content == path.read_bytes()
    assert r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{manifest.get(7).sha256}"'
    again = client.get("/v1/sources/7", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_stream_is_a_tar_in_request_order(client, index_dir, manifest):
    ids = [17, 0, 47, 17, 3]
    with client.stream("POST", "/v1/sources/stream", json={"ids": ids}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        assert "content-length" not in r.headers  # streamed, not buffered
        blob = r.read()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert [name for name, _ in members] == [f"{i}.png" for i in ids]
    for (_, data), i in zip(members, ids, strict=True):
        assert data == source_file(index_dir, manifest, i).read_bytes()
    bad = client.post("/v1/sources/stream", json={"ids": [1, 48, 2]})
    assert bad.status_code == 404 and "48" in bad.json()["error"]["message"]
    too_many = client.post("/v1/sources/stream", json={"ids": [0] * 101})
    assert too_many.status_code == 413


def test_job_registry(client):
    created = client.post(
        "/v1/jobs", json={"name": "flowers-sjft", "target": "/data/flowers", "config": {"k0": 5}}
    )
    assert created.status_code == 201
    job = created.json()
    assert job["status"] == "registered" and job["config"] == {"k0": 5}
    r = client.post(
        f"/v1/jobs/{job['job_id']}/events", json={"type": "round", "round": 0, "metrics": {"acc": 0.4}}
    )
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["rounds"] == 1
    client.post(f"/v1/jobs/{job['job_id']}/events", json={"type": "status", "status": "finished"})
    got = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert got["status"] == "finished" and got["last_metrics"] == {"acc": 0.4} and len(got["events"]) == 2
    assert job["job_id"] in [j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]]
    missing = client.get(f"/v1/jobs/{'0' * 32}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/v1/jobs/../../etc/passwd").status_code in (404, 422)
    bad_event = client.post(f"/v1/jobs/{job['job_id']}/events", json={"type": "explode"})
    assert bad_event.status_code == 422 and "type" in bad_event.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"bearer{TOKEN}"},
    ],
)
def test_auth_required_on_v1(base_url, headers):
    for method, path in (("GET", "/v1/index"), ("POST", "/v1/neighbors"), ("GET", "/v1/jobs")):
        r = httpx.request(method, base_url + path, headers=headers, content=b"{not json")
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"].startswith(
            "Bearer"
        )


def test_open_routes_and_openapi_docs(base_url):
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(base_url + path).status_code == 200, path
    schema = httpx.get(base_url + "/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/neighbors",
        "/v1/neighbors/upload",
        "/v1/sources/{source_id}",
        "/v1/sources/stream",
        "/v1/jobs",
        "/v1/jobs/{job_id}/events",
        "/v1/index",
        "/v1/spec",
    ):
        assert path in paths
        for op in paths[path].values():
            assert op.get("description") or op.get("summary"), path
    query = schema["components"]["schemas"]["Query"]["properties"]
    assert all(field.get("description") for field in query.values())
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
