"""The seeded reservoir of the edge fit (Algorithm R), and its plan from the number of values per call alone.

Item t (0-based, over all values one reservoir has seen) replaces slot j ~ U{0..t} if j < capacity: one
bounded draw per value, ~230 M of them for the build's default fit (2,000 images at 224 px), which is what
made that fit slow (numpy draws with per-item bounds at ~40 ns each). With numba installed, the same draws
come from a compiled copy of numpy's own generator (PCG64, XSL-RR output, numpy's 32-bit Lemire bounded
integers, its 32-bit half-word buffer) at ~5-10 ns, reading and writing the ``Generator``'s state: the same
numbers, in the same order, leaving the same state (``tests/services/test_reservoir.py`` asserts both).
Bounds of 2^32 - 1 and more (over 4 billion values per reservoir) take numpy's own call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

try:  # optional: numpy's Generator gives the same draws, slower
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the core extra
    njit = None

_U64 = (1 << 64) - 1
_LARGEST_32 = 0xFFFFFFFE  # numpy's 32-bit Lemire path covers bounds up to here (0xFFFFFFFF is a plain draw)


def _mulhi(a, b):
    """High 64 bits of the 128-bit product of two uint64."""
    lo32 = np.uint64(0xFFFFFFFF)
    a_lo, a_hi, b_lo, b_hi = a & lo32, a >> np.uint64(32), b & lo32, b >> np.uint64(32)
    lo_lo, hi_lo, lo_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi
    cross = (lo_lo >> np.uint64(32)) + (hi_lo & lo32) + lo_hi
    return (hi_lo >> np.uint64(32)) + (cross >> np.uint64(32)) + a_hi * b_hi


def _draw_slots(state, first, m, capacity):
    """For items t = first .. first+m-1: j = U{0..t} as numpy's ``integers(0, t + 1)`` draws it; returns
    (slots j < capacity, the last item - first drawing each). ``state`` uint64[6] (state hi/lo, inc hi/lo,
    has_uint32, uinteger) is read and updated."""
    s_hi, s_lo, i_hi, i_lo, has, spare = state[0], state[1], state[2], state[3], state[4], state[5]
    m_hi, m_lo = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)  # PCG64's multiplier
    lo32, zero, one = np.uint64(0xFFFFFFFF), np.uint64(0), np.uint64(1)
    slots = np.empty(m, np.int64)
    items = np.empty(m, np.int64)
    kept = 0
    for k in range(m):
        bound = np.uint64(first + k)  # inclusive
        if bound == zero:
            j = zero
        else:
            excl = bound + one
            while True:
                if has != zero:  # numpy's next_uint32 hands out the high half it kept last time
                    has, r32 = zero, spare
                else:  # PCG64 step (128-bit LCG), then the XSL-RR output
                    lo = s_lo * m_lo
                    hi = _mulhi(s_lo, m_lo) + s_hi * m_lo + s_lo * m_hi
                    new_lo = lo + i_lo
                    s_hi = hi + i_hi + (one if new_lo < lo else zero)
                    s_lo = new_lo
                    x, rot = s_hi ^ s_lo, s_hi >> np.uint64(58)
                    out = (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))
                    has, spare, r32 = one, out >> np.uint64(32), out & lo32
                product = r32 * excl  # Lemire: accept unless the low half falls in the biased sliver
                low = product & lo32
                if low < excl and low < (lo32 - bound) % excl:
                    continue
                j = product >> np.uint64(32)
                break
        if j < np.uint64(capacity):
            slots[kept], items[kept] = np.int64(j), k
            kept += 1
    state[0], state[1], state[4], state[5] = s_hi, s_lo, has, spare
    taken = np.zeros(capacity, np.bool_)
    last_slots, last_items = np.empty(kept, np.int64), np.empty(kept, np.int64)
    unique = 0
    for q in range(kept - 1, -1, -1):  # the last item drawing a slot is the one that stays in it
        if not taken[slots[q]]:
            taken[slots[q]] = True
            last_slots[unique], last_items[unique] = slots[q], items[q]
            unique += 1
    return last_slots[:unique], last_items[:unique]


if njit is not None:
    _mulhi = njit(inline="always", cache=True)(_mulhi)
    _draw_slots = njit(nogil=True, cache=True)(_draw_slots)


def _compiled_state(rng: np.random.Generator) -> np.ndarray | None:
    state = rng.bit_generator.state
    if njit is None or state.get("bit_generator") != "PCG64":
        return None
    s, inc = state["state"]["state"], state["state"]["inc"]
    return np.array([s >> 64, s & _U64, inc >> 64, inc & _U64, state["has_uint32"], state["uinteger"]],
                    dtype=np.uint64)


def draw_slots(rng: np.random.Generator, first: int, m: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots, items): for item t = first + i (i < m), j = ``rng.integers(0, t + 1)``; each slot j <
    capacity once, with the last i that drew it. Exactly numpy's draws, compiled when possible."""
    state = _compiled_state(rng) if m and first + m - 1 <= _LARGEST_32 else None
    if state is None:
        rest = np.arange(m)
        slots = rng.integers(0, first + rest + 1)
        keep = slots < capacity
        slots, items = slots[keep], rest[keep]
        last = slots.size - 1 - np.unique(slots[::-1], return_index=True)[1]
        return slots[last], items[last]
    slots, items = _draw_slots(state, first, m, capacity)
    full = rng.bit_generator.state
    full["state"]["state"] = (int(state[0]) << 64) | int(state[1])
    full["has_uint32"], full["uinteger"] = int(state[4]), int(state[5])
    rng.bit_generator.state = full
    return slots, items


class Slots:
    """Where Algorithm R puts each value of a stream: ``capacity`` slots, one shared random generator.

    The choice depends only on how many values each call brings, never on the values, so it can be
    planned before they exist (``reservoir_picks``: the build's workers then send only the values that stay).
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.filled, self.seen, self.rng = capacity, 0, 0, rng

    def assign(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The next call's m values: (slots, items), each slot once, item = the value's column in the call."""
        take = min(self.capacity - self.filled, m)
        dest, src = np.arange(self.filled, self.filled + take), np.arange(take)
        if m > take:
            slots, items = draw_slots(self.rng, self.seen + take, m - take, self.capacity)
            # Sequential Algorithm R: the last item drawing a slot stays there (draw_slots keeps only it),
            # also over the values this call's fill put in that slot.
            items = items + take
            kept = np.ones(take, bool)
            kept[slots[(slots >= self.filled) & (slots < self.filled + take)] - self.filled] = False
            dest, src = np.concatenate([dest[kept], slots]), np.concatenate([src[kept], items])
        self.filled += take
        self.seen += m
        return dest, src


class Reservoir:
    """Uniform random sample (without replacement) of at most ``capacity`` values per filter of one block.

    One slot choice (``Slots``) is shared by all filters of the block (each filter's sample is still
    uniform over its own values).
    """

    def __init__(self, dim: int, capacity: int, rng: np.random.Generator):
        self.values = np.empty((dim, capacity), dtype=np.float32)  # (D_l, cap): the only per-filter storage
        self.slots = Slots(capacity, rng)

    def add(self, values: np.ndarray) -> None:
        """values (D_l, m)."""
        dest, src = self.slots.assign(values.shape[1])
        self.values[:, dest] = values[:, src]

    def sample(self) -> np.ndarray:
        return self.values[:, : self.slots.filled]


def reservoir_picks(
    calls: Sequence[tuple[int, int]], capacity: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[int, int]]:
    """``fit_edges``'s reservoirs planned from the calls alone: calls = (block row, number of values) per
    ``add`` in ``fit_edges`` order -> (per call (slots, columns) of its values that are in the final
    reservoir, filled slots per block row). Filling ``reservoir[row][:, slots] = values[:, columns]`` for
    every call gives ``fit_edges``'s reservoirs exactly (the generator is drawn in the same order)."""
    rng = np.random.default_rng(seed)
    slots: dict[int, Slots] = {}
    owners: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # row -> (call, column) of each slot
    for k, (row, m) in enumerate(calls):
        if row not in slots:
            slots[row] = Slots(capacity, rng)
            owners[row] = (np.full(capacity, -1, np.int64), np.zeros(capacity, np.int64))
        dest, src = slots[row].assign(m)
        owners[row][0][dest], owners[row][1][dest] = k, src
    empty = np.empty(0, np.int64)
    picks = [(empty, empty)] * len(calls)
    for row, (call, column) in owners.items():
        filled = np.arange(slots[row].filled)
        order = filled[np.argsort(call[filled], kind="stable")]  # slots grouped by the call that fills them
        bounds = np.flatnonzero(np.diff(call[order])) + 1
        for group in np.split(order, bounds):
            if group.size:
                picks[int(call[group[0]])] = (group, column[group])
    return picks, {r: s.filled for r, s in slots.items()}
