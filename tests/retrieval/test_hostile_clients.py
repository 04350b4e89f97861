"""Issue 17 against a REAL server (auth on, real Redis): what a second hostile-client attack found.

Forwarded headers from an untrusted peer, bodies declared huge, lenient content types and numbers, RFC 9110's
``If-None-Match: *``, unbounded job records, and the OpenAPI of /readyz. No test here waits for a deadline:
the body deadline is set far beyond any socket timeout, so an answer that arrives at all arrived at once.
"""

from __future__ import annotations

import json
import socket
import uuid

import httpx
import pytest

from services.client import RetrievalClient
from services.schemas import JOB_BODY_MAX, JOB_CONFIG_MAX, JOB_METRICS_MAX, JobCreate
from tests.retrieval.live_server import live_server

TOKEN = "tok-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEVER_S = 3600  # body deadline: no 408 can arrive within the socket timeouts below
READ_TIMEOUT_S = 120


def _env(**extra: str) -> dict[str, str]:
    return {
        "SJFT_API_TOKENS": TOKEN,
        "SJFT_BODY_TIMEOUT_S": str(NEVER_S),
        "SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}",
        **extra,
    }


@pytest.fixture(scope="module")
def server(index_dir, redis_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with live_server(index_dir, log, redis_url=redis_url, env=_env()) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
        yield c


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


# ---------------------------------------------------------------- item 4: X-Forwarded-For


def _bad_token_statuses(base: str, forwarded: list[str]) -> list[int]:
    bad = {"Authorization": "Bearer wrong"}
    with httpx.Client(base_url=base, timeout=60) as c:
        return [c.get("/v1/index", headers={**bad, "X-Forwarded-For": f}).status_code for f in forwarded]


def test_forwarded_for_from_an_untrusted_peer_does_not_escape_the_failed_auth_limit(
    index_dir, redis_url, tmp_path
):
    env = _env(SJFT_AUTH_FAILURES_PER_MINUTE="3")
    with live_server(index_dir, tmp_path / "server.log", redis_url=redis_url, env=env) as base:
        assert _bad_token_statuses(base, ["10.0.0.1"] * 3) == [401] * 3
        # uvicorn used to believe X-Forwarded-For from loopback: every rotated address was a fresh client.
        assert _bad_token_statuses(base, [f"10.0.1.{i}" for i in range(5)]) == [429] * 5


def test_forwarded_for_from_a_configured_proxy_names_the_client(index_dir, redis_url, tmp_path):
    env = _env(SJFT_AUTH_FAILURES_PER_MINUTE="3", SJFT_TRUSTED_PROXIES="127.0.0.1")
    with live_server(index_dir, tmp_path / "server.log", redis_url=redis_url, env=env) as base:
        assert _bad_token_statuses(base, ["10.0.0.1"] * 4) == [401] * 3 + [429]
        assert _bad_token_statuses(base, ["10.0.0.2"]) == [401]  # another client behind the proxy


# ---------------------------------------------------------------- item 6: bodies declared too large


def _raw(base: str, head: str) -> bytes:
    """Send a request head (and no body), read the answer's head and body; the socket stays open."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def _declared(path: str, length: int, token: str | None = TOKEN) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )


def test_a_body_declared_too_large_is_413_before_any_of_it_arrives(server):
    reply = _raw(server, _declared("/v1/neighbors", 10**12))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in reply and b"1,000,000,000,000 bytes" in reply


def test_without_a_token_a_body_declared_too_large_is_401_first(server):
    reply = _raw(server, _declared("/v1/neighbors", 10**12, token=None))
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


def test_job_routes_take_small_bodies_only(server):
    reply = _raw(server, _declared("/v1/jobs", JOB_BODY_MAX + 1))
    assert reply.startswith(b"HTTP/1.1 413") and f"{JOB_BODY_MAX:,} bytes".encode() in reply, reply[:300]


# ---------------------------------------------------------------- item 8: lenient parsing


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"],
)
@pytest.mark.parametrize("path", ["/v1/sources/labels", "/v1/neighbors", "/v1/jobs"])
def test_json_routes_refuse_other_content_types_with_415(http, path, content_type):
    body = {"/v1/jobs": b'{"name": "x"}', "/v1/neighbors": b'{"queries": [{"id": "a", "source_id": 1}]}'}
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post(path, content=body.get(path, b'{"ids": [1]}'), headers=headers)
    err = _error(r, 415)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]


def test_json_content_types_and_the_project_client_are_accepted(http, server):
    r = http.post(
        "/v1/sources/labels",
        content=b'{"ids": [1]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    r = http.post(
        "/v1/sources/labels", content=b'{"ids": [1]}', headers={"Content-Type": "application/vnd.sjft+json"}
    )
    assert r.status_code == 200, r.text
    with RetrievalClient(server, token=TOKEN, retries=0) as client:
        assert [row.source_id for row in client.source_labels([2, 1])] == [2, 1]
        assert len(client.sample_sources(3, seed=1)) == 3 and len(list(client.stream_sources([0, 1]))) == 2
        assert client.neighbors_upload([("a.png", client.source(0))], k=2).results[0].id == "a.png"
        assert client.create_job(JobCreate(name="client")).job_id


def test_the_upload_route_takes_multipart_only(http):
    r = http.post("/v1/neighbors/upload", json={"files": []})
    assert "multipart/form-data" in _error(r, 415)["message"]


@pytest.mark.parametrize("exact", ["yes", "true", 1, 0, None])
def test_exact_must_be_a_json_boolean(http, exact):
    r = http.post("/v1/neighbors", json={"queries": [{"id": "a", "source_id": 1}], "exact": exact})
    err = _error(r, 422)
    assert any(e["loc"][-1] == "exact" for e in err["details"]), err


def test_exact_as_a_form_field_is_true_or_false(http, index_dir):
    data = next((index_dir.parent / "images").rglob("*.png")).read_bytes()
    files = [("files", ("a.png", data, "image/png"))]
    assert http.post("/v1/neighbors/upload", files=files, data={"exact": "true"}).status_code == 200
    r = http.post("/v1/neighbors/upload", files=files, data={"exact": "yes"})
    assert any(e["loc"][-1] == "exact" for e in _error(r, 422)["details"])


@pytest.mark.parametrize("text", ["1_0", "+1", "%201", "1%20", "01x", "-1", "１"])
def test_source_ids_in_paths_are_plain_digits(http, text):
    err = _error(http.get(f"/v1/sources/{text}"), 422)
    assert "source_id" in json.dumps(err["details"])


@pytest.mark.parametrize(
    ("path", "name"), [("/v1/sources/1?size=%2B32", "size"), ("/v1/jobs?limit=1_0", "limit")]
)
def test_query_integers_are_plain_digits(http, path, name):
    assert name in json.dumps(_error(http.get(path), 422)["details"])


@pytest.mark.parametrize("query", ["", "?size=32"])
def test_if_none_match_star_is_a_304_for_a_present_source(http, query):
    r = http.get(f"/v1/sources/1{query}", headers={"If-None-Match": "*"})
    assert r.status_code == 304 and r.headers["etag"] and not r.content


# ---------------------------------------------------------------- item 3: bounded job records


def test_job_config_over_its_bound_is_422_naming_config(http):
    config = {"blob": "x" * JOB_CONFIG_MAX}
    err = _error(http.post("/v1/jobs", json={"name": "big", "config": config}), 422)
    assert "config" in err["message"] and f"{JOB_CONFIG_MAX:,}" in err["message"]


def test_deeply_nested_job_config_is_422(http):
    nested: dict = {}
    for _ in range(40):
        nested = {"a": nested}
    err = _error(http.post("/v1/jobs", json={"name": "deep", "config": nested}), 422)
    assert "nested" in err["message"]


def test_round_events_are_bounded(http):
    job = http.post("/v1/jobs", json={"name": "rounds"}).json()
    events = f"/v1/jobs/{job['job_id']}/events"
    many = {"type": "round", "round": 0, "metrics": {"source_ids": list(range(10**6))}}
    assert _error(http.post(events, json=many), 413)["code"] == "payload_too_large"
    some = {"type": "round", "round": 0, "metrics": {"source_ids": list(range(3000))}}
    assert f"{JOB_METRICS_MAX:,}" in _error(http.post(events, json=some), 422)["message"]
    _error(http.post(events, json={"type": "log", "message": "m" * 10_001}), 422)
    shown = {"type": "round", "round": 0, "metrics": {"top1": 0.5, "source_ids": list(range(48))}}
    assert http.post(events, json=shown).status_code == 200


def test_job_listings_are_summaries_and_the_record_has_the_events(http):
    job = http.post("/v1/jobs", json={"name": "listed", "config": {"k0": 4}}).json()
    for r in range(3):
        event = {"type": "round", "round": r, "metrics": {"top1": 0.1 * r}, "message": "x" * 5000}
        assert http.post(f"/v1/jobs/{job['job_id']}/events", json=event).status_code == 200
    listing = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"]
    assert [j["job_id"] for j in listing] == [job["job_id"]]
    assert "events" not in listing[0] and listing[0]["rounds"] == 3 and listing[0]["config"] == {"k0": 4}
    full = http.get(f"/v1/jobs/{job['job_id']}").json()
    assert [e["round"] for e in full["events"]] == [0, 1, 2]


# ---------------------------------------------------------------- item 9: the contract of /readyz


def test_openapi_documents_the_503_of_readyz(http):
    responses = http.get("/openapi.json").json()["paths"]["/readyz"]["get"]["responses"]
    assert {"200", "503"} <= set(responses)
