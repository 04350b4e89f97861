"""Issue 10 hardening against a REAL server: complete Allow headers, failed-auth rate limit, bounded metric
labels, body deadlines (408) with raw sockets, one upload limit, client disconnects, the Redis URL check."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import free_port
from tests.retrieval.live_server import REPO, live_server

TOKEN = "tok-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT_S = 1.0
HEADER_TIMEOUT_S = 1.5
ENV = {
    "SJFT_API_TOKENS": TOKEN,
    "SJFT_AUTH_FAILURES_PER_MINUTE": "3",
    "SJFT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "SJFT_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "SJFT_MAX_QUERIES_PER_REQUEST": "3",
}


@pytest.fixture(scope="module")
def server(index_dir, redis_url, tmp_path_factory):
    """(base URL, log path) of a server with auth on, a tiny query limit and a 1 s body deadline."""
    log = tmp_path_factory.mktemp("svc-hardening-log") / "server.log"
    env = {**ENV, "SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}"}
    with live_server(index_dir, log, redis_url=redis_url, env=env) as url:
        yield url, log


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=30) as c:
        yield c


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def metric_samples(http, name: str = "sjft_http_requests_total") -> list[dict[str, str]]:
    text = http.get("/metrics").text
    # Greedy up to the last "} " of the line: route templates themselves contain braces.
    return [dict(re.findall(r'(\w+)="([^"]*)"', m)) for m in re.findall(rf"^{name}\{{(.*)\}} ", text, re.M)]


# ---------------------------------------------------------------- 405 + Allow


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("GET", "/v1/sources/stream", "POST"),
        ("GET", "/v1/sources/labels", "POST"),
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("PUT", "/v1/neighbors", "POST"),
        ("POST", "/v1/index", "GET"),
    ],
)
def test_wrong_method_is_a_405_with_a_complete_allow_header(http, method, path, allow):
    r = http.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


# ---------------------------------------------------------------- failed authentication is rate limited


def test_failed_authentication_is_rate_limited_per_address(server):
    base, _ = server
    bad = {"Authorization": "Bearer wrong"}
    statuses = [httpx.get(f"{base}/v1/index", headers=bad).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    r = httpx.get(f"{base}/v1/index", headers=bad)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["details"]["auth_failures_per_minute"] == 3
    assert httpx.get(f"{base}/v1/index", headers=AUTH).status_code == 200  # a valid token still passes


def test_failed_authentication_limit_holds_without_redis(index_dir, tmp_path):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = {**ENV, "SJFT_REDIS_TIMEOUT_S": "0.2"}
    with live_server(index_dir, tmp_path / "server.log", redis_url=dead_redis, env=env) as base:
        statuses = [httpx.get(f"{base}/v1/jobs").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


# ---------------------------------------------------------------- bounded metric labels


def test_metric_labels_stay_bounded_under_random_methods_and_paths(server, http):
    rng = random.Random(0)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=10) as c:
        for i in range(300):
            method = "".join(rng.choice(letters) for _ in range(rng.randint(3, 9)))
            path = f"/{uuid.uuid4().hex[:rng.randint(1, 12)]}/{i}" if i % 2 else f"/v1/sources/{i}x"
            c.request(method if i % 3 else "GET", path)
    samples = metric_samples(http)
    methods = {s["method"] for s in samples}
    routes = {s["route"] for s in samples}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods and "unmatched" in routes
    templates = [r for r in routes if r != "unmatched"]
    assert all("{" in r or r in KNOWN_STATIC for r in templates), routes
    assert len(samples) < 60


KNOWN_STATIC = {"/healthz", "/readyz", "/metrics", "/v1/index", "/v1/spec", "/v1/neighbors", "/v1/jobs",
                "/v1/neighbors/upload", "/v1/sources/stream", "/v1/sources/labels", "/v1/sources/sample",
                "/v1/sources/by-sha256", "/ui", "/openapi.json", "/docs"}


# ---------------------------------------------------------------- body deadlines


def raw_request(base: str, head: str) -> socket.socket:
    sock = socket.create_connection(address(base), timeout=10)
    sock.sendall(head.encode())
    return sock


def read_all(sock: socket.socket, deadline_s: float) -> bytes:
    """Everything the server sends until it closes (or the deadline passes)."""
    end = time.monotonic() + deadline_s
    data = b""
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def post_head(path: str, length: int) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )


def test_a_body_that_never_comes_is_answered_408_and_closed(server, http):
    base, log = server
    sock = raw_request(base, post_head("/v1/neighbors", 10_000_000))  # headers, then silence
    try:
        # Meanwhile the server keeps serving others.
        assert http.get("/v1/index").status_code == 200
        started = time.monotonic()
        reply = read_all(sock, deadline_s=BODY_TIMEOUT_S + 5)
        waited = time.monotonic() - started
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"request_timeout"' in reply and waited < BODY_TIMEOUT_S + 5
    assert "unhandled" not in log.read_text()


def test_a_trickling_body_is_cut_at_the_deadline(server):
    base, _ = server
    sock = raw_request(base, post_head("/v1/sources/labels", 1_000))
    reply = b""
    try:
        end = time.monotonic() + BODY_TIMEOUT_S + 5
        while time.monotonic() < end and not reply:
            try:
                sock.sendall(b" ")  # one byte at a time: each read arrives, the whole never does
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_a_trickling_request_head_is_closed_at_the_header_deadline(server, http):
    base, _ = server
    sock = raw_request(base, "GET /v1/index HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    closed, started = False, time.monotonic()
    try:
        while time.monotonic() - started < HEADER_TIMEOUT_S + 5:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header line now and then: data keeps arriving
            except OSError:
                closed = True
                break
            assert http.get("/v1/index").status_code == 200  # the server keeps serving others meanwhile
            sock.settimeout(0.3)
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    finally:
        sock.close()
    waited = time.monotonic() - started
    assert closed, f"a request head trickled for {waited:.1f} s and the connection stayed open"
    assert HEADER_TIMEOUT_S - 0.5 < waited < HEADER_TIMEOUT_S + 5


def test_a_keep_alive_connection_still_serves_requests_within_the_header_deadline(server):
    import http.client

    host, port = address(server[0])
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(3):  # three requests on one connection; the head deadline re-arms after each response
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b'{"status":"alive"}'
            time.sleep(HEADER_TIMEOUT_S / 3)  # idle between requests, within both deadlines
    finally:
        conn.close()


# ---------------------------------------------------------------- one query limit for JSON and uploads


def test_uploads_and_json_queries_share_the_limit_status_and_message(http, index_dir):
    data = next((index_dir.parent / "images").rglob("*.png")).read_bytes()
    json_err = http.post(
        "/v1/neighbors", json={"queries": [{"id": str(i), "source_id": i} for i in range(4)]}
    ).json()["error"]
    for n in (4, 6, 1005):  # 1005: past the multipart parser's own former default of 1,000 files
        files = [("files", (f"f{i}.png", data, "image/png")) for i in range(n)]
        r = http.post("/v1/neighbors/upload", files=files, data={"k": "2"})
        assert r.status_code == 413, (n, r.text)
        err = r.json()["error"]
        assert err["code"] == json_err["code"] == "payload_too_large"
        assert err["details"]["limit"] == json_err["details"]["limit"] == 3
        assert "in one request; the limit is 3: split the request" in err["message"]
    assert "in one request; the limit is 3: split the request" in json_err["message"]
    files = [("files", (f"f{i}.png", data, "image/png")) for i in range(3)]
    assert http.post("/v1/neighbors/upload", files=files, data={"k": "2"}).status_code == 200


# ---------------------------------------------------------------- client disconnects


def test_client_disconnects_are_not_errors(server, http):
    base, log = server
    # Mid-body: half a JSON body, then the socket closes.
    sock = raw_request(base, post_head("/v1/neighbors", 1000) + '{"queries": [')
    sock.close()
    # Mid-response: a streamed tar of many sources, one read, then close.
    body = '{"ids": [' + ", ".join(str(i % 48) for i in range(3)) + "]}"
    sock = raw_request(base, post_head("/v1/sources/stream", len(body)) + body)
    sock.recv(100)
    sock.close()
    deadline = time.monotonic() + 10
    statuses: set[str] = set()
    while time.monotonic() < deadline:  # the server records the request when it notices the disconnect
        statuses = {s["status"] for s in metric_samples(http) if s["route"] == "/v1/neighbors"}
        if "499" in statuses:
            break
        time.sleep(0.05)  # bounded by the deadline
    assert "499" in statuses and "500" not in statuses
    text = log.read_text()
    assert "unhandled" not in text and "Traceback" not in text


# ---------------------------------------------------------------- serve checks the Redis URL


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "localhost:6379"])
def test_serve_refuses_a_redis_url_of_another_scheme(index_dir, url):
    proc = subprocess.run(
        [sys.executable, "-m", "retrieval_service", "serve", "--index", str(index_dir), "--redis-url", url],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis://" in lines[0] and "REDIS_URL" in lines[0], proc.stderr
