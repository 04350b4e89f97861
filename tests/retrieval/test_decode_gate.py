"""DecodeGate: slots and memory budget bound concurrent decodes; overflow is a 429, never a pile-up."""

from __future__ import annotations

import threading

import pytest

from retrieval_service.api.decoding import DecodeGate, release_free_memory
from retrieval_service.api.errors import Overloaded

MB = 1 << 20


def _blocked_admit(gate: DecodeGate, cost: int, entered: threading.Event, leave: threading.Event) -> None:
    with gate.admit(cost):
        entered.set()
        leave.wait(10)


def test_budget_makes_a_second_large_decode_wait_until_the_first_ends():
    gate = DecodeGate(slots=4, budget_bytes=100 * MB, max_waiting=8, wait_s=10)
    first_in, first_out = threading.Event(), threading.Event()
    second_in, second_out = threading.Event(), threading.Event()
    a = threading.Thread(target=_blocked_admit, args=(gate, 80 * MB, first_in, first_out))
    a.start()
    assert first_in.wait(10)
    b = threading.Thread(target=_blocked_admit, args=(gate, 80 * MB, second_in, second_out))
    b.start()
    with gate._cond:  # the second is queued, not running: 80 + 80 MB > the 100 MB budget
        assert gate._cond.wait_for(lambda: gate.waiting == 1, timeout=10)
    assert not second_in.is_set() and gate.active == 1
    first_out.set()
    assert second_in.wait(10)
    second_out.set()
    a.join(10), b.join(10)
    assert gate.peak_in_flight_bytes == 80 * MB and gate.in_flight_bytes == 0 and gate.active == 0


def test_an_image_over_the_whole_budget_runs_alone():
    gate = DecodeGate(slots=2, budget_bytes=10 * MB, max_waiting=0, wait_s=10)
    with gate.admit(500 * MB):
        assert gate.in_flight_bytes == 10 * MB  # charged the whole budget: nothing else fits meanwhile
        with pytest.raises(Overloaded) as info:
            with gate.admit(1):  # max_waiting=0: no queue at all
                pass
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"


def test_slots_bound_small_decodes_and_a_full_queue_is_refused():
    gate = DecodeGate(slots=1, budget_bytes=1000 * MB, max_waiting=1, wait_s=10)
    entered, leave = threading.Event(), threading.Event()
    holder = threading.Thread(target=_blocked_admit, args=(gate, MB, entered, leave))
    holder.start()
    assert entered.wait(10)
    waiter = threading.Thread(target=_blocked_admit, args=(gate, MB, threading.Event(), leave))
    waiter.start()
    with gate._cond:
        assert gate._cond.wait_for(lambda: gate.waiting == 1, timeout=10)
    with pytest.raises(Overloaded, match="already waiting"):
        with gate.admit(MB):
            pass
    leave.set()
    holder.join(10), waiter.join(10)
    assert gate.active == 0


def test_wait_has_a_deadline():
    gate = DecodeGate(slots=1, budget_bytes=MB, max_waiting=4, wait_s=0.01)
    with gate.admit(MB), pytest.raises(Overloaded, match="no decode slot"):
        with gate.admit(MB):
            pass


def test_malloc_trim_is_available_on_glibc():
    assert release_free_memory() in (True, False)
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert release_free_memory() is True


def test_decodes_past_the_waiting_memory_are_refused_at_once():
    """Issue 17, item 2: a burst of huge images queued until the 30 s wait ran out, then got its 429 anyway.
    Past ``max_waiting_bytes`` of estimates already waiting, the 429 comes at once (wait_s is an hour here:
    a refusal that waited would never come)."""
    gate = DecodeGate(slots=1, budget_bytes=100 * MB, max_waiting=64, wait_s=3600, max_waiting_bytes=150 * MB)
    entered, leave = threading.Event(), threading.Event()
    holder = threading.Thread(target=_blocked_admit, args=(gate, 90 * MB, entered, leave))
    holder.start()
    assert entered.wait(10)
    waiter = threading.Thread(target=_blocked_admit, args=(gate, 90 * MB, threading.Event(), leave))
    waiter.start()
    with gate._cond:
        assert gate._cond.wait_for(lambda: gate.waiting == 1, timeout=10)
    with pytest.raises(Overloaded, match="MB of image decodes are already waiting") as info:
        with gate.admit(90 * MB):  # 90 + 90 MB waiting > 150 MB
            pass
    assert info.value.headers["Retry-After"] == "1" and gate.waiting == 1
    leave.set()
    holder.join(10), waiter.join(10)
    assert gate.waiting == 0 and gate.waiting_bytes == 0 and gate.active == 0
