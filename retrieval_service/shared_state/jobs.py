"""Job registry: training jobs register, report events, and are listed, so a shared service shows who uses it.

Redis layout (under ``<prefix>:``): ``job:<id>`` hash (name, target, status, created, updated, rounds,
last_metrics, config; JSON where structured), ``job:<id>:events`` list of JSON events (capped), ``jobs``
sorted set of ids scored by creation time. While Redis is down, jobs live in this process's memory and are
written back when it returns (last writer wins for a job changed elsewhere meanwhile).

Retention: a registered or running job's keys carry NO TTL, so a Redis run with ``volatile-*`` eviction
never evicts them (only TTL'd cache and rate-limit keys go); a finished, failed or cancelled job's keys get
a TTL of ``retention_s`` (``SJFT_JOB_RETENTION_S``, default 7 days) and its id leaves ``jobs`` lazily, when a
listing finds it gone.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime

import redis

from retrieval_service.shared_state.connection import RedisState
from services.schemas import Job, JobCreate, JobEvent, JobSummary

MAX_EVENTS = 500  # per job, the most recent: a runaway reporter must not grow a key forever
DEFAULT_RETENTION_S = 7 * 24 * 3600
ENDED = frozenset({"finished", "failed", "cancelled"})  # statuses after which a job only waits to expire


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def apply_event(job: Job, event: JobEvent, now: str) -> Job:
    """The job after ``event``: round events count rounds and start a registered job; status events set it."""
    update: dict = {"updated": now}
    if event.type == "round":
        update["rounds"] = job.rounds + 1
        update["last_metrics"] = dict(event.metrics)
        if job.status == "registered":
            update["status"] = "running"
    if event.status is not None:
        update["status"] = event.status
    events = [*job.events, event][-MAX_EVENTS:]
    return job.model_copy(update={**update, "events": events})


class JobRegistry:
    """Jobs in Redis, with an in-memory fallback that is flushed back on reconnection."""

    def __init__(self, state: RedisState, prefix: str, retention_s: int = DEFAULT_RETENTION_S):
        self.state = state
        self._prefix = prefix
        self.retention_s = retention_s
        self._lock = threading.Lock()
        self._memory: dict[str, Job] = {}  # every job this process wrote; authoritative only for dirty ids
        self._dirty: set[str] = set()  # ids changed while Redis was unusable
        state.on_recover(self.flush)

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    @property
    def _zset(self) -> str:
        return f"{self._prefix}:jobs"

    def create(self, spec: JobCreate) -> Job:
        now = _now()
        job = Job(
            job_id=uuid.uuid4().hex,
            name=spec.name,
            target=spec.target,
            status="registered",
            created=now,
            updated=now,
            config=spec.config,
        )
        self._store(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            if job_id in self._dirty:
                return self._memory[job_id]
        found = self.state.run(lambda c: self._read(c, job_id))
        if isinstance(found, Job):
            return found
        with self._lock:
            job = self._memory.get(job_id)
        if job is not None and found is False:
            if self._expired(job):
                with self._lock:
                    self._memory.pop(job_id, None)  # retention is over: not a loss to repair
                return None
            self._store(job)  # Redis lost it (restarted without persistence): write our copy back
        return job

    def _expired(self, job: Job) -> bool:
        return job.status in ENDED and time.time() - _score(job.updated) >= self.retention_s

    def list(self, limit: int = 200) -> list[JobSummary]:
        """Most recently created first, without their events (a listing stays small; ``get`` has them)."""
        ids = self.state.run(lambda c: [i.decode() for i in c.zrevrange(self._zset, 0, limit - 1)])
        stored = self.state.run(lambda c: self._read_summaries(c, ids)) if ids else {}
        jobs: dict[str, JobSummary] = {}
        gone = []
        for job_id in ids or []:
            summary = (stored or {}).get(job_id)
            if summary is None:  # dirty, Redis lost it, or expired: the full path decides (and repairs)
                job = self.get(job_id)
                summary = _summary(job) if job is not None else None
            if summary is not None:
                jobs[job_id] = summary
            else:
                gone.append(job_id)
        if gone:  # ended jobs past their retention: their keys expired, the index entry goes now
            self.state.run(lambda c: c.zrem(self._zset, *gone))
        with self._lock:
            for job_id, job in self._memory.items():
                if job_id in self._dirty or ids is None:
                    jobs[job_id] = _summary(job)
        return sorted(jobs.values(), key=lambda j: j.created, reverse=True)[:limit]

    def _read_summaries(self, client: redis.Redis, ids: list[str]) -> dict[str, JobSummary]:
        with self._lock:
            dirty = set(self._dirty)
        wanted = [i for i in ids if i not in dirty]
        pipe = client.pipeline(transaction=False)
        for job_id in wanted:
            pipe.hgetall(self._key(job_id))
        found = zip(wanted, pipe.execute(), strict=True)
        return {job_id: _from_hash(job_id, fields, [], JobSummary) for job_id, fields in found if fields}

    def add_event(self, job_id: str, event: JobEvent) -> Job | None:
        """Append ``event``; ``None`` when there is no such job."""
        now = _now()
        with self._lock:
            if job_id in self._dirty:
                job = apply_event(self._memory[job_id], event, now)
                self._memory[job_id] = job
                return job
        result = self.state.run(lambda c: self._append_redis(c, job_id, event, now))
        if isinstance(result, Job):
            with self._lock:
                self._memory[job_id] = result
            return result
        # Redis is down (None) or lost the job (False): continue from our own copy, if we have one.
        with self._lock:
            job = self._memory.get(job_id)
        if job is None:
            return None
        job = apply_event(job, event, now)
        self._store(job)
        return job

    def flush(self) -> None:
        """Write jobs changed during an outage back to Redis (called when Redis becomes reachable)."""
        with self._lock:
            pending = [self._memory[i] for i in self._dirty]
        for job in pending:
            if self.state.run(lambda c, job=job: self._write(c, job)) is not None:
                with self._lock:
                    if self._memory.get(job.job_id) is job:
                        self._dirty.discard(job.job_id)

    # --- Redis side ---------------------------------------------------------------------------------------

    def _store(self, job: Job) -> None:
        with self._lock:
            self._memory[job.job_id] = job
        if self.state.run(lambda c: self._write(c, job)) is None:
            with self._lock:
                self._dirty.add(job.job_id)

    def _write(self, client: redis.Redis, job: Job) -> bool:
        key = self._key(job.job_id)
        pipe = client.pipeline(transaction=True)
        pipe.delete(key, f"{key}:events")
        pipe.hset(key, mapping=_to_hash(job))
        if job.events:
            pipe.rpush(f"{key}:events", *[e.model_dump_json() for e in job.events])
        pipe.zadd(self._zset, {job.job_id: _score(job.created)})
        self._retain(pipe, key, job.status)
        pipe.execute()
        return True

    def _retain(self, pipe: redis.client.Pipeline, key: str, status: str) -> None:
        """TTL on an ended job's keys; none on a live one (so volatile-* eviction never takes it)."""
        for name in (key, f"{key}:events"):
            if status in ENDED:
                pipe.expire(name, self.retention_s)
            else:
                pipe.persist(name)

    def _read(self, client: redis.Redis, job_id: str) -> Job | bool:
        key = self._key(job_id)
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.lrange(f"{key}:events", 0, -1)
        fields, events = pipe.execute()
        if not fields:
            return False
        return _from_hash(job_id, fields, events)

    def _append_redis(self, client: redis.Redis, job_id: str, event: JobEvent, now: str) -> Job | bool:
        key = self._key(job_id)
        holder: dict[str, Job | bool] = {}

        def _update(pipe: redis.client.Pipeline) -> None:
            # Optimistic transaction (WATCH): replicas reporting on one job never lose each other's events.
            fields = pipe.hgetall(key)
            if not fields:
                holder["job"] = False
                return
            job = _from_hash(job_id, fields, [])
            updated = apply_event(job, event, now)
            pipe.multi()
            pipe.hset(key, mapping={k: v for k, v in _to_hash(updated).items() if k != "created"})
            pipe.rpush(f"{key}:events", event.model_dump_json())
            pipe.ltrim(f"{key}:events", -MAX_EVENTS, -1)
            self._retain(pipe, key, updated.status)
            holder["job"] = updated

        client.transaction(_update, key)
        if holder["job"] is False:
            return False
        return self._read(client, job_id)


def _score(created: str) -> float:
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return time.time()


def _to_hash(job: Job) -> dict[str, str]:
    return {
        "name": job.name,
        "target": json.dumps(job.target),
        "status": job.status,
        "created": job.created,
        "updated": job.updated,
        "rounds": str(job.rounds),
        "last_metrics": json.dumps(job.last_metrics),
        "config": json.dumps(job.config),
    }


def _summary(job: Job) -> JobSummary:
    return JobSummary.model_validate(job.model_dump(exclude={"events"}))


def _from_hash(job_id: str, fields: dict[bytes, bytes], events: list[bytes], kind=Job):
    f = {k.decode(): v.decode() for k, v in fields.items()}
    extra = {"events": [JobEvent.model_validate_json(e) for e in events]} if kind is Job else {}
    return kind(
        job_id=job_id,
        name=f["name"],
        target=json.loads(f.get("target", "null")),
        status=f["status"],
        created=f["created"],
        updated=f["updated"],
        rounds=int(f.get("rounds", 0)),
        last_metrics=json.loads(f.get("last_metrics", "{}")),
        config=json.loads(f.get("config", "{}")),
        **extra,
    )
