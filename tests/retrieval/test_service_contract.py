"""The contract routes of issue 9/10 against a REAL server: labels, sample, by-sha256, max_per_source,
bounded strict ids, the OpenAPI that says so, and the typed client's methods for them."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter

import httpx
import pytest

from retrieval_service.index.manifest import Manifest
from services.client import RetrievalClient, ServiceUnavailableError
from services.schemas import Query
from tests.conftest import free_port
from tests.retrieval.live_server import live_server

TOKEN = "tok-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def base_url(index_dir, redis_url, tmp_path_factory):
    env = {"SJFT_API_TOKENS": TOKEN, "SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}"}
    log = tmp_path_factory.mktemp("svc-contract-log") / "server.log"
    with live_server(index_dir, log, redis_url=redis_url, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def client(base_url):
    with RetrievalClient(base_url, token=TOKEN, retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def manifest(index_dir):
    m = Manifest.open(index_dir / "manifest.sqlite")
    yield m
    m.close()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# ---------------------------------------------------------------- labels


def test_labels_in_request_order(http, client, manifest):
    ids = [47, 0, 5, 5, 23]
    body = http.post("/v1/sources/labels", json={"ids": ids}).json()
    records = manifest.get_many(ids)
    expected = [{"source_id": r.source_id, "label": r.label, "class_name": r.class_name} for r in records]
    assert body == {"labels": expected}
    assert [x.model_dump() for x in client.source_labels(ids)] == expected


def test_labels_unknown_id_is_a_404_naming_it(http):
    err = error_of(http.post("/v1/sources/labels", json={"ids": [1, 48, 99]}), 404)
    assert err["details"]["unknown_source_ids"] == [48, 99] and "48" in err["message"]


def test_client_labels_chunks_big_lists(client, monkeypatch):
    import services.client as client_module

    monkeypatch.setattr(client_module, "IDS_PER_CALL", 7)
    ids = list(range(48)) * 2
    assert [x.source_id for x in client.source_labels(ids)] == ids


# ---------------------------------------------------------------- sample


def test_sample_is_uniform_distinct_and_seeded(http, client):
    first = http.post("/v1/sources/sample", json={"n": 10, "seed": 7, "exclude": [0, 1, 2]}).json()["ids"]
    again = client.sample_sources(10, seed=7, exclude=[2, 1, 0, 0])
    other = client.sample_sources(10, seed=8, exclude=[0, 1, 2])
    assert first == again and first != other
    assert len(set(first)) == 10 and not set(first) & {0, 1, 2} and all(0 <= i < 48 for i in first)
    assert sorted(client.sample_sources(45, seed=1, exclude=[0, 1, 2])) == list(range(3, 48))
    # Uniform: over many seeds every id is drawn about equally often (48 ids, 24 per draw, 200 draws).
    counts = Counter(i for seed in range(200) for i in client.sample_sources(24, seed=seed))
    assert len(counts) == 48 and min(counts.values()) > 60 and max(counts.values()) < 140


def test_sample_more_than_available_is_a_422(http):
    err = error_of(http.post("/v1/sources/sample", json={"n": 46, "seed": 0, "exclude": [0, 1, 2]}), 422)
    assert err["details"] == {"n": 46, "available": 45}


# ---------------------------------------------------------------- by-sha256


def test_by_sha256_finds_exact_duplicates(http, client, manifest, index_dir):
    record = manifest.get(3)
    data = (index_dir.parent / "images" / record.path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    missing = "0" * 64
    body = http.post("/v1/sources/by-sha256", json={"sha256": [digest, missing]}).json()
    assert body == {"matches": {digest: [3]}}
    assert client.sources_by_sha256([digest.upper(), missing]) == {digest: [3]}


def test_by_sha256_uses_an_index_and_old_manifests_still_answer(index_dir, tmp_path):
    import shutil
    import sqlite3

    m = Manifest.open(index_dir / "manifest.sqlite")
    plan = m._conn.execute("EXPLAIN QUERY PLAN SELECT source_id FROM sources WHERE sha256 IN (?)", ["x"])
    assert "sources_sha256" in " ".join(str(row) for row in plan.fetchall())
    sha = m.get(0).sha256
    m.close()
    old = tmp_path / "manifest.sqlite"
    shutil.copy(index_dir / "manifest.sqlite", old)
    with sqlite3.connect(old) as conn:
        conn.execute("DROP INDEX sources_sha256")
    legacy = Manifest.open(old)
    assert legacy.by_sha256([sha]) == {sha: [0]}
    legacy.close()


def test_by_sha256_refuses_what_is_not_a_hash(http):
    err = error_of(http.post("/v1/sources/by-sha256", json={"sha256": ["abc"]}), 422)
    assert err["details"][0]["loc"] == ["body", "sha256", 0]


# ---------------------------------------------------------------- max_per_source


def ids_of(body: dict) -> list[list[int]]:
    return [[n["source_id"] for n in r["neighbors"]] for r in body["results"]]


def capped(http, queries, k, offset=0, cap=1, **extra) -> dict:
    body = {"queries": queries, "k": k, "offset": offset, "max_per_source": cap, **extra}
    r = http.post("/v1/neighbors", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_max_per_source_caps_and_everyone_gets_k(http):
    queries = [{"id": f"q{i}", "source_id": 4} for i in range(5)]  # identical: every query wants the same
    body = capped(http, queries, k=6, cap=2)
    lists = ids_of(body)
    assert all(len(x) == 6 for x in lists)
    assert max(Counter(i for x in lists for i in x).values()) == 2
    for r in body["results"]:
        keys = [(n["distance"], n["source_id"]) for n in r["neighbors"]]
        assert keys == sorted(keys)
    plain = http.post("/v1/neighbors", json={"queries": queries, "k": 6}).json()
    assert max(Counter(i for x in ids_of(plain) for i in x).values()) == 5


def test_max_per_source_windows_concatenate(http):
    queries = [{"id": f"q{i}", "source_id": s} for i, s in enumerate([4, 5, 12, 4])]
    whole = ids_of(capped(http, queries, k=12))
    first = ids_of(capped(http, queries, k=5))
    rest = ids_of(capped(http, queries, k=7, offset=5))
    assert [a + b for a, b in zip(first, rest, strict=True)] == whole


def test_max_per_source_is_part_of_the_cache_key(http):
    queries = [{"id": f"q{i}", "source_id": 4} for i in range(3)]
    one = capped(http, queries, k=4, cap=1)
    again = capped(http, queries, k=4, cap=1)
    three = capped(http, queries, k=4, cap=3)
    assert again["cached"] and ids_of(again) == ids_of(one)
    assert not three["cached"] and ids_of(three) != ids_of(one)
    # The same query in another request set is another cache entry: its capped list depends on the set.
    alone = capped(http, queries[:1], k=4, cap=1)
    assert not alone["cached"]


def test_client_max_per_source(client):
    queries = [Query(id=f"q{i}", source_id=4) for i in range(4)]
    response = client.neighbors(queries, k=3, max_per_source=1)
    ids = [n.source_id for r in response.results for n in r.neighbors]
    assert len(ids) == 12 and len(set(ids)) == 12


def test_max_per_source_on_upload(http, index_dir, manifest):
    data = (index_dir.parent / "images" / manifest.get(0).path).read_bytes()
    files = [("files", (f"f{i}.png", data, "image/png")) for i in range(3)]
    r = http.post("/v1/neighbors/upload", files=files, data={"k": "4", "max_per_source": "1"})
    assert r.status_code == 200, r.text
    ids = [i for x in ids_of(r.json()) for i in x]
    assert len(ids) == 12 and len(set(ids)) == 12


def test_index_reports_capabilities(http):
    caps = http.get("/v1/index").json()["capabilities"]
    assert {"max_per_source", "sources.labels", "sources.sample", "sources.by_sha256"} <= set(caps)


# ---------------------------------------------------------------- bounded, strict ids


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 2**63}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 2**64}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 2**53}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 1}], "exclude_source_ids": [2**63]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 1}], "offset": 2**63}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 1, "offset": 2**63}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": False}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 1, "k": True}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": "1"}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 1, "image_b64": None}]}),
        ("/v1/neighbors", {"queries": [{"id": "a", "source_id": 1}], "max_per_source": 0}),
        ("/v1/sources/stream", {"ids": [2**63]}),
        ("/v1/sources/stream", {"ids": [True]}),
        ("/v1/sources/labels", {"ids": [2**64]}),
        ("/v1/sources/sample", {"n": 1, "seed": 2**63}),
        ("/v1/sources/sample", {"n": True, "seed": 0}),
        ("/v1/sources/sample", {"n": 1.5, "seed": 0}),
        ("/v1/sources/sample", {"n": 1, "seed": 0, "exclude": [-1]}),
    ],
)
def test_out_of_range_or_boolean_ids_are_a_422(http, path, body):
    err = error_of(http.post(path, json=body), 422)
    assert err["code"] == "validation_error" and err["details"]


def test_huge_path_id_is_a_422(http):
    assert http.get(f"/v1/sources/{2**63}").status_code == 422
    assert http.get(f"/v1/sources/{2**64}/descriptor").status_code == 422


def test_openapi_states_bounds_strictness_and_query_shapes(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    query = schemas["Query"]
    assert [sorted(s["required"]) for s in query["oneOf"]] == [
        ["image_b64"],
        ["descriptor", "spec_hash"],
        ["source_id"],
    ]
    assert query["properties"]["source_id"] == {
        **query["properties"]["source_id"],
        "type": "integer",
        "minimum": 0,
        "exclusiveMaximum": 2**53,
    }
    exclude = schemas["NeighborsRequest"]["properties"]["exclude_source_ids"]["items"]
    assert exclude["exclusiveMaximum"] == 2**53
    assert schemas["StreamRequest"]["properties"]["ids"]["items"]["exclusiveMaximum"] == 2**53


def test_openapi_documents_every_error_status_with_the_error_body(http):
    spec = http.get("/openapi.json").json()
    neighbors = spec["paths"]["/v1/neighbors"]["post"]["responses"]
    for status in ("400", "401", "404", "413", "422", "429", "503"):
        schema = neighbors[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert {"401", "429", "503"} <= set(responses), f"{method} {path}"
            for status, entry in responses.items():
                if status.startswith(("4", "5")):
                    ref = entry["content"]["application/json"]["schema"]["$ref"]
                    # /readyz answers its status body (Readiness) with the 503 by design: probes read it.
                    want = "/Readiness" if (path, status) == ("/readyz", "503") else "/ErrorBody"
                    assert ref.endswith(want), f"{method} {path} {status}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]


# ---------------------------------------------------------------- the client logs its retries


def test_client_logs_each_retry(caplog):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a real connection refusal
    with RetrievalClient(dead, retries=2, backoff=0.01, sleep=lambda s: None) as c:
        with caplog.at_level(logging.WARNING, logger="services.client"):
            with pytest.raises(ServiceUnavailableError):
                c.index_info()
    lines = [r.getMessage() for r in caplog.records if r.name == "services.client"]
    assert len(lines) == 2
    assert "attempt 1/3" in lines[0] and "attempt 2/3" in lines[1]
    assert "ConnectError" in lines[0] and "/v1/index" in lines[0] and "retrying in 0.0" in lines[0]
