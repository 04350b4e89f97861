"""Which source images a round uses, per ``--source-mode``, with equal budgets across modes.

- selective: each target's K_i nearest sources (a prefix of its ranking); a sample pairs a target with one.
- random: as many distinct source images as selective would use this round (its neighbor windows are still
  asked for, only to count them), drawn uniformly without replacement from the whole index (seeded; the pool
  only grows).
- all: every source image of the index; only the images the round's samples actually use are downloaded.
- none: no source images (plain fine-tuning of the target head and backbone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from services.client import RetrievalClient
from trainer.fetch import NeighborLists, QueryMaker, fetch_windows, source_labels


@dataclass
class SourceState:
    mode: str
    index_size: int
    lists: NeighborLists
    pool: list[int] = field(default_factory=list)  # random mode
    labels: dict[int, int] = field(default_factory=dict)  # labels of pool / all-mode ids
    in_use: int = 0

    def label(self, source_id: int) -> int:
        return self.lists.labels[source_id] if source_id in self.lists.labels else self.labels[source_id]

    def to_state(self) -> dict:
        return {
            "mode": self.mode,
            "index_size": self.index_size,
            "lists": self.lists.to_state(),
            "pool": self.pool,
            "labels": self.labels,
            "in_use": self.in_use,
        }

    @classmethod
    def from_state(cls, s: dict) -> SourceState:
        return cls(
            s["mode"],
            s["index_size"],
            NeighborLists.from_state(s["lists"]),
            list(s["pool"]),
            {int(a): int(b) for a, b in s["labels"].items()},
            s["in_use"],
        )


def seeded(seed: int, rnd: int, stream: int) -> torch.Generator:
    """A generator for (seed, round, purpose): independent of how the run was split or resumed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + rnd * 101 + stream)


def prepare_round(
    state: SourceState,
    client: RetrievalClient | None,
    queries: QueryMaker | None,
    k: torch.Tensor,
    metric: str,
    seed: int,
    rnd: int,
) -> None:
    """Rank 0: fetch this round's neighbor windows (and grow the random pool); sets ``state.in_use``."""
    if state.mode == "none":
        state.in_use = 0
        return
    if state.mode == "all":
        state.in_use = state.index_size
        return
    fetch_windows(client, queries, state.lists, k.tolist(), metric)
    selected = state.lists.selected(k.tolist())
    state.in_use = len(selected)
    if state.mode == "random" and len(state.pool) < state.in_use:
        have = set(state.pool)
        order = torch.randperm(state.index_size, generator=seeded(seed, rnd, 1)).tolist()
        fresh = [s for s in order if s not in have][: state.in_use - len(state.pool)]
        state.labels.update(source_labels(client, fresh, metric))
        state.pool.extend(fresh)


def picker(state: SourceState, k: torch.Tensor):
    """``pick(targets (S,), u (S,)) -> source ids (S,)`` for ``draw_plan``; None in mode none."""
    if state.mode == "none":
        return None
    if state.mode == "all":
        return lambda targets, u: (u * state.index_size).long().clamp_max(state.index_size - 1)
    if state.mode == "random":
        pool = torch.tensor(state.pool, dtype=torch.long)
        return lambda targets, u: pool[(u * len(pool)).long().clamp_max(len(pool) - 1)]

    ranked = state.lists.ranked
    if any(min(int(k[i]), len(ranked[i])) == 0 for i in range(len(ranked))):
        raise RuntimeError("a target image has no source neighbors: is the index empty?")

    def pick(targets: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(targets)
        for j, (t, uj) in enumerate(zip(targets.tolist(), u.tolist(), strict=True)):
            prefix = min(int(k[t]), len(ranked[t]))
            out[j] = ranked[t][min(int(uj * prefix), prefix - 1)]
        return out

    return pick


def needed_ids(state: SourceState, k: torch.Tensor, plan_source: torch.Tensor) -> list[int]:
    """Source ids this round downloads: the selected set (selective), the pool (random), the sampled ids
    (all)."""
    if state.mode == "selective":
        return state.lists.selected(k.tolist())
    if state.mode == "random":
        return list(state.pool)
    if state.mode == "all":
        return sorted(set(plan_source.tolist()))
    return []
