"""Admission of image decodes: a bounded number at once and a bounded estimate of memory, then memory back.

A small compressed PNG can decode to 160 MB (40 Mpx x 4 bytes): without a bound, a burst of such queries
multiplies that by the number of server threads. Each decode asks :class:`DecodeGate` for its estimated peak
(``services.images.decode_cost``); it waits while ``slots`` decodes run or the estimates in flight would pass
``budget_bytes`` (one image over the whole budget runs alone). Beyond ``max_waiting`` waiters, or when the
estimates already waiting pass ``max_waiting_bytes``, the caller gets 429 ``overloaded`` with Retry-After AT
ONCE: a burst of huge images used to queue until ``wait_s`` (30 s) ran out and then get its 429 anyway.
``wait_s`` stays as the backstop.

glibc keeps freed heap pages of its per-thread arenas, so RSS stayed high after a burst; after a large decode
the gate calls ``malloc_trim(0)`` to hand them back to the OS (a no-op elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Iterator

from retrieval_service.api.errors import Overloaded

log = logging.getLogger("retrieval_service")

TRIM_AFTER_BYTES = 32 << 20  # decodes estimated above this give their freed pages back on release


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim  # glibc only; musl and macOS have none
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return freed heap pages of every malloc arena to the OS; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def _usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class DecodeGate:
    """At most ``slots`` decodes and ``budget_bytes`` of estimated decode memory at once; thread-safe."""

    def __init__(
        self,
        slots: int,
        budget_bytes: int,
        max_waiting: int,
        wait_s: float,
        max_waiting_bytes: int | None = None,
    ):
        if slots < 1 or budget_bytes < 1 or max_waiting < 0 or wait_s <= 0:
            raise ValueError("slots, budget_bytes and wait_s must be positive, max_waiting >= 0")
        self.slots, self.budget_bytes = slots, budget_bytes
        self.max_waiting, self.wait_s = max_waiting, wait_s
        # Default: what the budget can work off in a few turns; a deeper queue would mostly wait to time out.
        self.max_waiting_bytes = 2 * budget_bytes if max_waiting_bytes is None else max_waiting_bytes
        self.waiting_bytes = 0
        self._cond = threading.Condition()
        self.active = 0
        self.in_flight_bytes = 0
        self.waiting = 0
        self.peak_in_flight_bytes = 0  # for tests and benchmarks: the bound actually reached

    @classmethod
    def from_settings(cls, settings) -> DecodeGate:
        slots = settings.decode_slots or _usable_cores()
        return cls(
            slots,
            settings.decode_memory_mb << 20,
            settings.max_waiting_decodes,
            settings.decode_wait_s,
            settings.decode_queue_mb << 20,
        )

    def _fits(self, cost: int) -> bool:
        if self.active == 0:
            return True  # an image over the whole budget still runs, alone
        return self.active < self.slots and self.in_flight_bytes + cost <= self.budget_bytes

    @contextlib.contextmanager
    def admit(self, cost: int, what: str = "image") -> Iterator[None]:
        """Hold a decode slot and ``cost`` bytes of the budget for the ``with`` body; 429 when overloaded."""
        cost = min(max(int(cost), 0), self.budget_bytes)
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            if not self._fits(cost):
                if self.waiting >= self.max_waiting:
                    raise Overloaded(
                        f"{what}: {self.waiting} image decodes are already waiting; retry shortly",
                        {"waiting_decodes": self.waiting, "limit": self.max_waiting},
                        headers={"Retry-After": "1"},
                    )
                if self.waiting and self.waiting_bytes + cost > self.max_waiting_bytes:
                    raise Overloaded(
                        f"{what}: {self.waiting_bytes >> 20} MB of image decodes are already waiting; "
                        "retry shortly",
                        {
                            "waiting_decode_mb": self.waiting_bytes >> 20,
                            "limit_mb": self.max_waiting_bytes >> 20,
                        },
                        headers={"Retry-After": "1"},
                    )
                self.waiting += 1
                self.waiting_bytes += cost
                self._cond.notify_all()  # lets observers (tests, metrics) see the queue grow
                try:
                    while not self._fits(cost):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise Overloaded(
                                f"{what}: no decode slot within {self.wait_s:g} s; retry shortly",
                                {"wait_s": self.wait_s},
                                headers={"Retry-After": "1"},
                            )
                        self._cond.wait(left)
                finally:
                    self.waiting -= 1
                    self.waiting_bytes -= cost
            self.active += 1
            self.in_flight_bytes += cost
            self.peak_in_flight_bytes = max(self.peak_in_flight_bytes, self.in_flight_bytes)
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self.in_flight_bytes -= cost
                self._cond.notify_all()
            if cost >= TRIM_AFTER_BYTES:
                release_free_memory()
