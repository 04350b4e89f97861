"""Jobs outlive cache pressure and Redis restarts: a private ``redis-server`` per test, really started.

The shared test Redis cannot be filled or restarted, so each test runs its own server on a free port with a
tiny ``maxmemory`` (eviction) or AOF (restart), and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from retrieval_service.shared_state.cache import ResultCache
from retrieval_service.shared_state.connection import RedisState
from retrieval_service.shared_state.jobs import JobRegistry
from services.schemas import JobCreate, JobEvent
from tests.conftest import free_port

READY_DEADLINE_S = 20.0

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


@contextlib.contextmanager
def redis_server(directory: Path, port: int, *args: str) -> Iterator[str]:
    """A redis-server on ``port`` with its files in ``directory``; yields its URL once it answers PING."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    cmd += ["--save", "", *args]
    log = open(directory / "redis.log", "ab")  # noqa: SIM115 - closed after the process ends
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            if proc.poll() is not None:
                tail = (directory / "redis.log").read_text()[-2000:]
                pytest.fail(f"redis-server exited with {proc.returncode}: {tail}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not answer PING in time")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)  # a bounded wait on the child, not a sleep
        yield url
    finally:
        client.close()
        proc.kill()  # like a crash: nothing is saved on the way out
        proc.wait(timeout=10)
        log.close()


def _jobs(url: str, prefix: str = "sjft", retention_s: int = 3600) -> JobRegistry:
    return JobRegistry(RedisState(url, timeout_s=2.0), prefix, retention_s)


def test_cache_pressure_evicts_cache_keys_never_jobs(tmp_path):
    port = free_port()
    pressure = ("--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru")  # as docker-compose.yml
    with redis_server(tmp_path / "r", port, *pressure) as url:
        jobs = _jobs(url)
        created = [jobs.create(JobCreate(name=f"job-{i}", config={"k0": i})) for i in range(40)]
        for job in created[:20]:
            jobs.add_event(job.job_id, JobEvent(type="round", round=0, metrics={"acc": 0.5}))
        cache = ResultCache(RedisState(url, timeout_s=2.0), "sjft", "idx", "f" * 64, ttl_s=3600)
        dist, ids = np.zeros(500, np.float32), np.arange(500, dtype=np.int64)  # 6 KB per entry
        keys = [cache.key("js", False, f"q{i}", 500, 0, "-") for i in range(3000)]  # ~18 MB > 4 MB
        for start in range(0, len(keys), 100):
            cache.set_many([(key, dist, ids) for key in keys[start : start + 100]])
        client = redis.Redis.from_url(url)
        assert client.info("stats")["evicted_keys"] > 0, "the test must put Redis under memory pressure"
        cached = sum(v is not None for v in cache.get_many(keys))
        assert cached < len(keys)  # cache entries were evicted...
        listed = {j.job_id: j for j in _jobs(url).list()}  # ...every job survives (a fresh replica's view)
        assert set(listed) == {j.job_id for j in created}
        assert all(listed[j.job_id].rounds == 1 for j in created[:20])
        assert client.ttl(f"sjft:job:{created[0].job_id}") == -1  # a live job never expires


@pytest.mark.parametrize("appendonly", ["yes", "no"])
def test_jobs_survive_a_restart_with_aof(tmp_path, appendonly):
    port = free_port()
    aof = ("--appendonly", appendonly, "--appendfsync", "always")
    with redis_server(tmp_path / "r", port, *aof) as url:
        created = [_jobs(url).create(JobCreate(name=f"run-{i}")) for i in range(146)]
    with redis_server(tmp_path / "r", port, *aof) as url:  # killed above, started again on the same files
        listed = {j.job_id for j in _jobs(url).list(limit=1000)}
    if appendonly == "yes":
        assert listed == {j.job_id for j in created}
    else:  # the control: without AOF a restart loses them, so the assertion above can fail
        assert listed == set()


def test_ended_jobs_expire_after_retention_running_ones_do_not(redis_url, redis_namespace):
    jobs = _jobs(redis_url, redis_namespace, retention_s=600)
    client = redis.Redis.from_url(redis_url)
    running = jobs.create(JobCreate(name="running"))
    jobs.add_event(running.job_id, JobEvent(type="round", round=0))
    done = jobs.create(JobCreate(name="done"))
    jobs.add_event(done.job_id, JobEvent(type="status", status="finished"))
    key = f"{redis_namespace}:job:{{}}"
    assert client.ttl(key.format(running.job_id)) == -1
    assert 590 <= client.ttl(key.format(done.job_id)) <= 600
    assert 590 <= client.ttl(key.format(done.job_id) + ":events") <= 600
    # Its keys expired: the listing drops it and prunes the index (not resurrected from any memory copy).
    client.delete(key.format(done.job_id), key.format(done.job_id) + ":events")
    old = jobs._memory[done.job_id]
    jobs._memory[done.job_id] = old.model_copy(update={"updated": "2000-01-01T00:00:00+00:00"})
    assert [j.job_id for j in jobs.list()] == [running.job_id]
    assert client.zscore(f"{redis_namespace}:jobs", done.job_id) is None
    client.delete(key.format(running.job_id), key.format(running.job_id) + ":events")
    client.delete(f"{redis_namespace}:jobs")


def test_a_redis_that_refuses_us_degrades_instead_of_raising(tmp_path):
    """A server that answers but refuses (here: the default user stripped of every command, as an ACL
    mistake would; protected mode's DENIED is the same case) counts as unavailable: /readyz says degraded and
    requests go on without the cache, where it used to surface as an unhandled error (HTTP 500)."""
    with redis_server(tmp_path / "refusing", free_port()) as url:
        admin = redis.Redis.from_url(url)
        admin.execute_command("ACL", "SETUSER", "default", "on", "nopass", "-@all", "+acl")
        with pytest.raises(redis.exceptions.NoPermissionError):
            admin.ping()  # the refusal is real
        state = RedisState(url, timeout_s=2.0, retry_s=0.0)
        assert state.status() == "unavailable"
        assert state.run(lambda c: c.get("anything")) is None
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        assert state.status() == "ok"  # and it recovers once the server serves again
        with pytest.raises(redis.ResponseError):
            state.run(lambda c: c.execute_command("NO-SUCH-COMMAND"))  # our own mistakes still surface
