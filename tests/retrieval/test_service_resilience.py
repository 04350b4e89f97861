"""Rate limits and a Redis outage against the REAL server; a private redis-server is killed and restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port
from tests.retrieval.live_server import REPO, build_test_index, live_server, shared_index_root, wait_ready

LIMIT = 12
TOKEN_A, TOKEN_B = "token-a-" + uuid.uuid4().hex[:6], "token-b-" + uuid.uuid4().hex[:6]
PREFIX = f"sjft-test-{uuid.uuid4().hex[:12]}"


def start_redis(port: int, deadline_s: float = 15.0) -> subprocess.Popen:
    """A private redis-server (no persistence) on ``port``, answered PING before returning."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.02)  # between connection attempts, bounded by the deadline
    proc.kill()
    raise TimeoutError("redis-server did not answer")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_port():
    port = free_port()
    holder = {"proc": start_redis(port)}
    yield port, holder
    if holder["proc"].poll() is None:
        stop(holder["proc"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_port):
    port, _ = redis_port
    index_dir = build_test_index(shared_index_root(tmp_path_factory))
    log: Path = tmp_path_factory.mktemp("svc-res-log") / "server.log"
    env = {
        "SJFT_API_TOKENS": f"{TOKEN_A},{TOKEN_B}",
        "SJFT_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "SJFT_REDIS_PREFIX": PREFIX,
        "SJFT_REDIS_RETRY_S": "0.3",
        "SJFT_REDIS_TIMEOUT_S": "0.3",
    }
    with live_server(index_dir, log, redis_url=f"redis://127.0.0.1:{port}/0", env=env) as url:
        yield url, log


def client_for(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_rate_limit_429_with_retry_after_per_token(server):
    url, _ = server
    statuses = []
    with client_for(url, TOKEN_A) as a:
        # A fixed window may roll over mid-loop, so allow up to two windows' worth before the first 429.
        for _ in range(2 * LIMIT + 1):
            r = a.get("/v1/index")
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
    assert statuses[-1] == 429 and LIMIT <= statuses.count(200) <= 2 * LIMIT, statuses
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["code"] == "rate_limited" and str(LIMIT) in r.json()["error"]["message"]
    with client_for(url, TOKEN_B) as b:  # another token has its own budget; health is never limited
        assert b.get("/v1/index").status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200


def test_redis_outage_and_recovery(server, redis_port):
    url, log = server
    port, holder = redis_port
    body = {"queries": [{"id": "a", "source_id": 1}], "k": 5}
    direct = redis.Redis(port=port)
    with client_for(url, TOKEN_B) as c:
        assert c.get("/readyz").json() == {"status": "ok", "redis": "ok", "index_size": 48}
        before = c.post("/v1/jobs", json={"name": "before-outage"}).json()
        first = c.post("/v1/neighbors", json=body).json()
        assert c.post("/v1/neighbors", json=body).json()["cached"] is True

        stop(holder["proc"])  # Redis dies mid-run
        for _ in range(4):
            r = c.post("/v1/neighbors", json=body)
            assert r.status_code == 200 and r.json()["results"] == first["results"] and not r.json()["cached"]
        assert wait_ready(url, None, log, deadline_s=20, expect=("degraded",))["redis"] == "unavailable"
        during = c.post("/v1/jobs", json={"name": "during-outage"})
        assert during.status_code == 201
        during = during.json()
        ev = c.post(
            f"/v1/jobs/{before['job_id']}/events", json={"type": "round", "round": 0, "metrics": {"a": 1}}
        )
        assert ev.status_code == 200 and ev.json()["rounds"] == 1
        listed = {j["job_id"] for j in c.get("/v1/jobs").json()["jobs"]}
        assert {before["job_id"], during["job_id"]} <= listed
        assert c.get("/metrics").status_code == 200 and "sjft_redis_up 0.0" in c.get("/metrics").text

        holder["proc"] = start_redis(port)  # Redis returns (empty: it had no persistence)
        assert wait_ready(url, None, log, deadline_s=20, expect=("ok",))["redis"] == "ok"
        c.post("/v1/neighbors", json=body)
        again = c.post("/v1/neighbors", json=body).json()
        assert again["cached"] is True and again["results"] == first["results"]
        # The job registered during the outage was written back to Redis on reconnection.
        assert direct.exists(f"{PREFIX}:job:{during['job_id']}")
        got = c.get(f"/v1/jobs/{before['job_id']}").json()
        assert got["rounds"] == 1 and got["name"] == "before-outage"
    text = log.read_text()
    assert text.count("is unreachable") == 1, text[-3000:]  # the outage is logged once, not per request
    assert "reachable again" in text and "Traceback" not in text


def test_unloadable_index_is_503_not_a_crash(tmp_path):
    """A broken index: the process stays up, /healthz answers, /readyz and /v1 say 503 with the reason."""
    (tmp_path / "index.json").write_text("{not json")
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "retrieval_service", "serve", "--index", str(tmp_path), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "REDIS_URL": ""}, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(url + "/readyz", timeout=2)
                if "cannot load" in ready.text:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # between readiness probes, bounded by the deadline
        assert ready is not None and ready.status_code == 503, log.read_text()
        assert ready.json()["status"] == "not_ready" and "index.json" in ready.json()["reason"]
        assert httpx.get(url + "/healthz").status_code == 200
        r = httpx.get(url + "/v1/index")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
