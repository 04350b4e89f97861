"""Each target's ranked neighbor list as fetched so far: a prefix of its full ranking, deepened round by round
(``trainer.remote.selector`` asks for each new window). Saved in the checkpoint as plain values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class NeighborLists:
    """Each target's ranked source ids fetched so far (a prefix of its full ranking), their distances, every
    source's label, and the K_i vector each round used (the selection report redraws every round from it)."""

    ranked: list[list[int]]
    labels: dict[int, int] = field(default_factory=dict)  # source_id -> source class index
    exhausted: set[int] = field(default_factory=set)  # targets whose ranking ended (index smaller than K)
    distances: list[list[float]] | None = None  # parallel to ranked; NaN where a checkpoint predates them
    k_rounds: list[list[int]] = field(default_factory=list)  # k_rounds[r][i]: target i's K in round r

    def __post_init__(self) -> None:
        if self.distances is None:
            self.distances = [[math.nan] * len(r) for r in self.ranked]

    def selected(self, k: Sequence[int]) -> list[int]:
        """Distinct source ids within the current K_i prefixes, in first-seen order."""
        return list(dict.fromkeys(s for i, ki in enumerate(k) for s in self.ranked[i][:ki]))

    def record_round(self, rnd: int, k: Sequence[int]) -> None:
        """Remember round ``rnd``'s K vector (a round redone after a resume replaces its entry)."""
        del self.k_rounds[rnd:]
        self.k_rounds.append([int(ki) for ki in k])

    def prefix(self, i: int, k: int) -> list[tuple[int, float, int]]:
        """Target ``i``'s ``k`` nearest fetched sources as (source_id, distance, label), nearest first."""
        ranked, distances = self.ranked[i][:k], self.distances[i][:k]
        return [(s, d, self.labels[s]) for s, d in zip(ranked, distances, strict=True)]

    def to_state(self) -> dict:
        return {
            "ranked": self.ranked,
            "distances": self.distances,
            "labels": self.labels,
            "exhausted": sorted(self.exhausted),
            "k_rounds": self.k_rounds,
        }

    @classmethod
    def from_state(cls, state: dict) -> NeighborLists:
        """Also reads checkpoints written before distances and k_rounds were kept (NaN, no history)."""
        labels = {int(s): int(y) for s, y in state["labels"].items()}
        distances = state.get("distances")
        return cls(
            ranked=[list(r) for r in state["ranked"]],
            labels=labels,
            exhausted=set(state["exhausted"]),
            distances=[[float(d) for d in r] for r in distances] if distances is not None else None,
            k_rounds=[list(k) for k in state.get("k_rounds", [])],
        )
