"""The reservoir's compiled draws are numpy's draws (values and generator state), and the reservoir holds
what the sequential Algorithm R with numpy's ``integers`` holds (the edges of every earlier build)."""

from __future__ import annotations

import numpy as np
import pytest

from services import reservoir
from services.reservoir import Reservoir, draw_slots


def numpy_draws(rng, first, m, capacity):
    rest = np.arange(m)
    slots = rng.integers(0, first + rest + 1)
    keep = slots < capacity
    return slots[keep], rest[keep]


@pytest.mark.parametrize("seed", [0, 7])
def test_compiled_draws_equal_numpy_and_leave_the_same_state(seed):
    assert reservoir.njit is not None  # numba is installed: the compiled path is the one under test
    ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
    for first, m, capacity in [(0, 5, 3), (10, 7, 4), (200_000, 30_001, 200_000), (4_000_000_000, 999, 10**9),
                               (0xFFFFFFFE, 3, 10**10), (2**40, 5, 2**41)]:
        slots, items = draw_slots(ours, first, m, capacity)
        expected_slots, expected_items = numpy_draws(theirs, first, m, capacity)
        # draw_slots keeps the last item per slot; the rest must be exactly numpy's sequence
        last = {}
        for s, i in zip(expected_slots.tolist(), expected_items.tolist(), strict=True):
            last[s] = i
        assert dict(zip(slots.tolist(), items.tolist(), strict=True)) == last
        assert ours.bit_generator.state == theirs.bit_generator.state
    assert ours.integers(0, 10**9, 8).tolist() == theirs.integers(0, 10**9, 8).tolist()


class SequentialReservoir:
    """Algorithm R as the edge fit ran it before the compiled draws (numpy's integers, item by item)."""

    def __init__(self, dim, capacity, rng):
        self.values = np.empty((dim, capacity), np.float32)
        self.capacity, self.filled, self.seen, self.rng = capacity, 0, 0, rng

    def add(self, values):
        m = values.shape[1]
        take = min(self.capacity - self.filled, m)
        self.values[:, self.filled : self.filled + take] = values[:, :take]
        self.filled += take
        rest = np.arange(take, m)
        if rest.size:
            slots = self.rng.integers(0, self.seen + rest + 1)
            for slot, item in zip(slots.tolist(), rest.tolist(), strict=True):
                if slot < self.capacity:
                    self.values[:, slot] = values[:, item]
        self.seen += m


def test_reservoir_holds_what_sequential_algorithm_r_holds():
    ours = Reservoir(2, 700, np.random.default_rng(3))
    reference = SequentialReservoir(2, 700, np.random.default_rng(3))
    start = 0
    for m in (300, 500, 1, 2_000, 64, 5_000):
        chunk = np.arange(start, start + m, dtype=np.float32)
        ours.add(np.stack([chunk, -chunk]))
        reference.add(np.stack([chunk, -chunk]))
        start += m
    assert np.array_equal(ours.sample(), reference.values[:, : reference.filled])
