"""The Redis connection, with outage handling: every caller degrades instead of failing.

``RedisState.run(fn)`` calls ``fn(client)`` and returns its result, or ``None`` when Redis is not configured,
is down, or fails mid-call. An outage is logged once (and its end once); while down, reconnection is tried at
most every ``retry_s`` seconds, so a dead Redis costs requests nothing but a clock read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import redis

log = logging.getLogger("retrieval_service.redis")

T = TypeVar("T")

# Replies of a server that is up but will not serve this client; redis-py maps some to their own classes and
# leaves the rest as a ResponseError carrying the server's code word.
_REFUSAL_CLASSES = (redis.exceptions.NoPermissionError, redis.exceptions.ReadOnlyError)
_REFUSAL_CODES = ("DENIED", "MISCONF", "NOAUTH")


def _is_refusal(exc: redis.ResponseError) -> bool:
    return isinstance(exc, _REFUSAL_CLASSES) or str(exc).startswith(_REFUSAL_CODES)
RedisStatus = Literal["ok", "unavailable", "disabled"]


class RedisState:
    """A sync redis-py client (used from worker threads) plus up/down bookkeeping."""

    def __init__(self, url: str, timeout_s: float = 0.5, retry_s: float = 2.0, clock=time.monotonic):
        self.url = url
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._up = False
        self._next_try = 0.0
        self._client: redis.Redis | None = None
        self._recover_callbacks: list[Callable[[], None]] = []
        if url:
            # Short timeouts: a request never hangs on Redis. No redis-py retries: we have our own cadence.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry_on_timeout=False,
                health_check_interval=0,
            )

    @property
    def configured(self) -> bool:
        return self._client is not None

    def status(self) -> RedisStatus:
        """``ok`` if the last contact worked (probing when due), ``unavailable`` if down, or ``disabled``."""
        if self._client is None:
            return "disabled"
        if not self._up:
            self.run(lambda c: c.ping())
        return "ok" if self._up else "unavailable"

    def status_cached(self) -> RedisStatus:
        """Like ``status`` but never touches the network (for per-request bookkeeping)."""
        if self._client is None:
            return "disabled"
        return "ok" if self._up else "unavailable"

    def run(self, fn: Callable[[redis.Redis], T]) -> T | None:
        """``fn(client)``, or ``None`` when Redis is unusable right now."""
        client = self._client
        if client is None:
            return None
        with self._lock:
            if not self._up and self._clock() < self._next_try:
                return None
        try:
            result = fn(client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._mark_down(exc)
            return None
        except redis.ResponseError as exc:
            # A server that answers but refuses us (protected mode, missing ACL permission, a read-only
            # replica, failed persistence) is as unusable as one that is down: degrade, do not answer 500.
            # Any other command error is a bug of ours and propagates.
            if not _is_refusal(exc):
                raise
            self._mark_down(exc)
            return None
        self._mark_up()
        return result

    def _mark_down(self, exc: Exception) -> None:
        with self._lock:
            was_up = self._up or self._next_try == 0.0
            self._up = False
            self._next_try = self._clock() + self.retry_s
        if was_up:
            log.warning(
                "Redis at %s is unreachable (%s); serving without cache, jobs kept in memory", self.url, exc
            )
        # Drop pooled sockets so the next attempt opens a fresh connection instead of reusing a dead one.
        try:
            self._client.connection_pool.disconnect()
        except (redis.RedisError, OSError):
            pass

    def _mark_up(self) -> None:
        with self._lock:
            if self._up:
                return
            recovered = self._next_try != 0.0
            self._up = True
            self._next_try = 0.0
        if recovered:
            log.warning("Redis at %s is reachable again", self.url)
        for callback in self._recover_callbacks:
            callback()

    def on_recover(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the noticing thread) whenever Redis becomes reachable, the first time too."""
        self._recover_callbacks.append(callback)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except (redis.RedisError, OSError):
                pass
