"""Which source images a round uses, per ``--source-mode``, with the budgets of the paper's baselines.

- selective: each target's K_i nearest sources (a prefix of its ranking, leaked ids excluded, hub control
  ``max_per_source`` passed to the service).
- random: as many distinct sources as selective uses in the same round: read from the selective run's
  metrics.jsonl (``--match-pool``), else counted by asking the neighbor windows for the ids only. The pool is
  drawn by the service's ``sample_sources`` (seeded, leaked ids excluded) and only grows, round by round.
- all: the whole corpus streamed: ids come from ``sample_sources`` in chunks, each corpus epoch without
  replacement, and a round takes the next ``steps * global_batch * source_ratio`` of them.
- none: no sources at all (plain fine-tuning: no resampling by K, no source head, no service).

Labels of random/all ids come from the service by id (``source_labels``), never from a self-query. Neighbor
lists deepen by windows: round m asks only for [old K_i, new K_i) with per-query ``offset``/``k``
(``fetch_windows``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from services.client import RetrievalClient
from trainer.remote.queries import QueryMaker
from trainer.rounds.neighbors import NeighborLists
from trainer.rounds.plan import POOL, STREAM, seed_int
from trainer.rounds.selection import SourceState

STREAM_CHUNK = 8192  # ids per sample_sources call of the all-mode stream


def fetch_windows(
    client: RetrievalClient,
    queries: QueryMaker,
    lists: NeighborLists,
    new_k: Sequence[int],
    metric: str,
    exclude: Sequence[int] = (),
    max_per_source: int | None = None,
) -> int:
    """Extend every target's list to ``new_k[i]`` by asking only for [len(list), new_k[i]); returns queries
    sent. ``exclude`` (leaked ids) must stay the same for the whole run, or the prefixes would not chain."""
    todo = [
        (i, len(lists.ranked[i]), int(ki) - len(lists.ranked[i]))
        for i, ki in enumerate(new_k)
        if ki > len(lists.ranked[i]) and i not in lists.exhausted
    ]
    if not todo:
        return 0
    batch = [queries.query(i, k=k, offset=offset) for i, offset, k in todo]
    # Hub control only when asked for: a service without the field keeps working.
    hubs = {"max_per_source": max_per_source} if max_per_source is not None else {}
    response = client.neighbors(
        batch, k=max(k for _, _, k in todo), metric=metric, exclude_source_ids=list(exclude), **hubs
    )
    by_id = {r.id: r.neighbors for r in response.results}
    for i, _, k in todo:
        found = by_id[str(i)]
        lists.ranked[i].extend(n.source_id for n in found)
        lists.distances[i].extend(float(n.distance) for n in found)
        lists.labels.update((n.source_id, n.label) for n in found)
        if len(found) < k:
            lists.exhausted.add(i)
    return len(todo)


def matched_pool_sizes(run_dir: str) -> list[int]:
    """Per-round ``sources_in_use`` of a (selective) run, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [int(r["sources_in_use"]) for r in sorted(rows, key=lambda r: r["round"])]


@dataclass
class Selector:
    """Rank 0's side of source selection: talks to the service, mutates ``state``."""

    state: SourceState
    client: RetrievalClient | None
    queries: QueryMaker | None
    metric: str
    seed: int
    max_per_source: int | None = None
    pool_sizes: list[int] | None = None  # random mode with --match-pool

    def _windows(self, k: torch.Tensor) -> None:
        fetch_windows(
            self.client,
            self.queries,
            self.state.lists,
            k.tolist(),
            self.metric,
            exclude=self.state.leaked,
            max_per_source=self.max_per_source,
        )

    def select(self, rnd: int, k: torch.Tensor, stream_need: int) -> None:
        """This round's selection; sets ``state.in_use`` (all mode: after the plan, see ``trained_on``)."""
        mode = self.state.mode
        if mode == "selective":
            self._windows(k)
            self.state.in_use = len(self.state.lists.selected(k.tolist()))
        elif mode == "random":
            self._grow_pool(rnd, self._random_budget(rnd, k))
        elif mode == "all":
            self._fill_stream(stream_need)

    def _random_budget(self, rnd: int, k: torch.Tensor) -> int:
        if self.pool_sizes:
            return self.pool_sizes[min(rnd, len(self.pool_sizes) - 1)]
        self._windows(k)  # asked only to count the distinct ids selective would use
        return len(self.state.lists.selected(k.tolist()))

    def _grow_pool(self, rnd: int, budget: int) -> None:
        state = self.state
        budget = min(budget, state.index_size - len(state.leaked))
        if budget > len(state.pool):
            fresh = self.client.sample_sources(
                budget - len(state.pool), seed_int(self.seed, rnd, POOL), exclude=state.leaked + state.pool
            )
            self._learn_labels(fresh)
            state.pool.extend(int(s) for s in fresh)
        state.in_use = len(state.pool)

    def _fill_stream(self, need: int) -> None:
        state = self.state
        epoch_size = state.index_size - len(state.leaked)
        while len(state.stream) < need:
            if len(state.stream_drawn) >= epoch_size:
                state.stream_epoch, state.stream_drawn = state.stream_epoch + 1, []
            n = min(STREAM_CHUNK, epoch_size - len(state.stream_drawn))
            seed = seed_int(self.seed, state.stream_epoch, STREAM, len(state.stream_drawn))
            chunk = [
                int(s) for s in self.client.sample_sources(n, seed, exclude=state.leaked + state.stream_drawn)
            ]
            state.stream_drawn.extend(chunk)
            state.stream.extend(chunk)
        self._learn_labels([s for s in dict.fromkeys(state.stream[:need]) if s not in state.labels])

    def _learn_labels(self, ids: list[int]) -> None:
        for start in range(0, len(ids), STREAM_CHUNK):
            for row in self.client.source_labels(ids[start : start + STREAM_CHUNK]):
                self.state.labels[int(row.source_id)] = int(row.label)
