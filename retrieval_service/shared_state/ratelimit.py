"""Fixed-window rate limit per caller (token, or client IP when auth is off), shared by replicas via Redis.

One counter per caller per minute: ``INCR`` + ``EXPIRE`` in one round trip. While Redis is down, each process
counts on its own (the limit then holds per replica rather than globally, which beats no limit at all).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time

from retrieval_service.shared_state.connection import RedisState

WINDOW_S = 60


class RateLimiter:
    """``check(caller)`` -> seconds to wait (0 when the request may proceed)."""

    def __init__(self, state: RedisState, prefix: str, per_minute: int, clock=time.time):
        self.state = state
        self.per_minute = per_minute
        self._prefix = prefix
        self._clock = clock
        self._lock = threading.Lock()
        self._local: dict[tuple[str, int], int] = {}

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def check(self, caller: str) -> int:
        if not self.enabled:
            return 0
        now = self._clock()
        window = int(now // WINDOW_S)
        # Hash the caller: keys must not contain bearer tokens in clear.
        who = hashlib.sha256(caller.encode()).hexdigest()[:24]
        key = f"{self._prefix}:rl:{who}:{window}"

        def _incr(client) -> int:
            pipe = client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, WINDOW_S + 5)
            return int(pipe.execute()[0])

        count = self.state.run(_incr)
        if count is None:
            count = self._incr_local(who, window)
        if count <= self.per_minute:
            return 0
        return max(1, math.ceil((window + 1) * WINDOW_S - now))

    def _incr_local(self, who: str, window: int) -> int:
        with self._lock:
            for stale in [k for k in self._local if k[1] < window]:
                del self._local[stale]
            count = self._local.get((who, window), 0) + 1
            self._local[(who, window)] = count
            return count
