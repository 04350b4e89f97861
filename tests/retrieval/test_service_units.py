"""Service parts against the real Redis (and an unreachable one): cache, jobs, rate limit, tar, settings."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest

from retrieval_service.api.settings import Settings
from retrieval_service.api.stream import stream_tar, tar_header
from retrieval_service.shared_state.cache import ResultCache, exclusions_digest
from retrieval_service.shared_state.connection import RedisState
from retrieval_service.shared_state.jobs import JobRegistry
from retrieval_service.shared_state.ratelimit import RateLimiter
from services.schemas import JobCreate, JobEvent
from tests.conftest import free_port


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_settings_read_documented_env_names_and_overrides_win(monkeypatch):
    monkeypatch.setenv("SJFT_PORT", "9123")
    monkeypatch.setenv("SJFT_API_TOKENS", "a, b,,c")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("HOST", "0.0.0.0")  # a generic variable must not leak into our settings
    s = Settings()
    assert (s.port, s.host, s.redis_url) == (9123, "127.0.0.1", "redis://example:6379/1")
    assert s.tokens == frozenset({"a", "b", "c"})
    assert Settings(port=1234, redis_url="").port == 1234
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")


def test_cache_round_trip_is_exact_and_keys_separate_windows(redis_url, redis_namespace):
    cache = ResultCache(RedisState(redis_url), redis_namespace, "idx", "f" * 64, ttl_s=60)
    dist = np.array([0.0, 0.125, 1e-7], dtype=np.float32)
    ids = np.array([3, 1, 2**40], dtype=np.int64)
    key = cache.key("js", False, "digest", 3, 0, exclusions_digest([5, 2, 5]))
    assert key != cache.key("js", False, "digest", 3, 1, exclusions_digest([5, 2, 5]))
    assert exclusions_digest([5, 2, 5]) == exclusions_digest([2, 5]) != exclusions_digest([2])
    assert cache.get_many([key]) == [None]
    cache.set_many([(key, dist, ids)])
    (got,) = cache.get_many([key])
    assert got[0].tobytes() == dist.tobytes() and got[1].tobytes() == ids.tobytes()


def test_cache_is_a_no_op_when_redis_is_unreachable():
    cache = ResultCache(RedisState(dead_redis_url(), timeout_s=0.2), "p", "idx", "0" * 64, ttl_s=60)
    cache.set_many([("k", np.zeros(1, np.float32), np.zeros(1, np.int64))])
    assert cache.get_many(["k"]) == [None]


def test_outage_is_logged_once_and_retries_are_spaced(caplog):
    now = [0.0]
    state = RedisState(dead_redis_url(), timeout_s=0.2, retry_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="retrieval_service.redis"):
        calls = []
        for _ in range(5):
            assert state.run(lambda c: calls.append(1) or c.ping()) is None
        assert len(calls) == 1  # one real attempt; the others are skipped until retry_s passes
        now[0] = 6.0
        assert state.run(lambda c: calls.append(1) or c.ping()) is None
        assert len(calls) == 2
    assert sum("unreachable" in r.message for r in caplog.records) == 1
    assert state.status() == "unavailable"
    assert RedisState("").status() == "disabled"


def test_jobs_registry_in_redis(redis_url, redis_namespace):
    jobs = JobRegistry(RedisState(redis_url), redis_namespace)
    job = jobs.create(JobCreate(name="flowers", target="/data/flowers", config={"k0": 10}))
    assert job.status == "registered"
    after = jobs.add_event(job.job_id, JobEvent(type="round", round=0, metrics={"acc": 0.5}))
    assert (after.status, after.rounds, after.last_metrics) == ("running", 1, {"acc": 0.5})
    jobs.add_event(job.job_id, JobEvent(type="status", status="finished"))
    # A second registry (another replica) sees the same job through Redis.
    other = JobRegistry(RedisState(redis_url), redis_namespace).get(job.job_id)
    assert other.status == "finished" and [e.type for e in other.events] == ["round", "status"]
    assert [j.job_id for j in jobs.list()] == [job.job_id]
    assert jobs.get("0" * 32) is None and jobs.add_event("0" * 32, JobEvent(type="log", message="x")) is None


def test_jobs_fall_back_to_memory_and_flush_when_redis_returns(redis_url, redis_namespace):
    state = RedisState(dead_redis_url(), timeout_s=0.2, retry_s=0.01)
    jobs = JobRegistry(state, redis_namespace)
    job = jobs.create(JobCreate(name="offline"))
    jobs.add_event(job.job_id, JobEvent(type="round", round=0, metrics={"acc": 0.25}))
    assert jobs.get(job.job_id).rounds == 1 and [j.job_id for j in jobs.list()] == [job.job_id]
    # Redis "comes back": point the same state at the live server; the next call flushes the job.
    live = RedisState(redis_url)
    state._client = live._client
    state._next_try = 0.0
    assert state.status() == "ok"
    stored = JobRegistry(RedisState(redis_url), redis_namespace).get(job.job_id)
    assert stored is not None and stored.rounds == 1 and stored.last_metrics == {"acc": 0.25}


def test_rate_limit_fixed_window(redis_url, redis_namespace):
    now = [120.0]
    limiter = RateLimiter(RedisState(redis_url), redis_namespace, per_minute=3, clock=lambda: now[0])
    assert [limiter.check("tok") for _ in range(3)] == [0, 0, 0]
    now[0] = 150.0
    assert limiter.check("tok") == 30  # refused until the window ends at 180 s
    assert limiter.check("other") == 0  # callers are counted separately
    now[0] = 180.0
    assert limiter.check("tok") == 0  # a new window
    offline = RateLimiter(RedisState(dead_redis_url(), timeout_s=0.2), "p", per_minute=1, clock=lambda: 0.0)
    assert (offline.check("x"), offline.check("x") > 0) == (0, True)  # the local fallback still limits


def test_stream_tar_members_in_order_and_bytes_equal():
    files = {7: b"\x89PNG" + bytes(range(256)) * 3, 2: b"j" * 1000, 9: b""}
    order = [(9, "png"), (7, ".PNG"), (2, "jpg"), (7, "png")]
    blob = b"".join(stream_tar(order, lambda i: io.BytesIO(files[i])))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
        got = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert got == [("9.png", b""), ("7.png", files[7]), ("2.jpg", files[2]), ("7.png", files[7])]


@pytest.mark.parametrize("name,size", [("0", 0), ("17.png", 2520), ("123456789.jpeg", 10**9)])
def test_tar_header_matches_tarfile(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    assert tar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT)
