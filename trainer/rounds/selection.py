"""What a round's source selection is, as data: the state of every ``--source-mode`` (neighbor lists, pool,
stream, leaked ids), and how a round pairs targets with sources.

Pure: nothing here talks to the service or reads files (the asking is ``trainer.remote``). The state is saved
in the checkpoint as plain values (``to_state``), so checkpoints do not depend on where these classes live.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer.rounds.neighbors import NeighborLists
from trainer.rounds.plan import cycle_own_lists, cycle_shared_pool


@dataclass
class SourceState:
    """Everything a round's source selection depends on; saved in the checkpoint."""

    mode: str
    index_size: int
    lists: NeighborLists
    leaked: list[int] = field(default_factory=list)
    pool: list[int] = field(default_factory=list)  # random mode
    labels: dict[int, int] = field(default_factory=dict)  # labels of pool / streamed ids
    stream: list[int] = field(default_factory=list)  # all mode: drawn, not yet trained on
    stream_epoch: int = 0
    stream_drawn: list[int] = field(default_factory=list)  # all mode: ids drawn in the current corpus epoch
    in_use: int = 0

    def label(self, source_id: int) -> int:
        return self.lists.labels[source_id] if source_id in self.lists.labels else self.labels[source_id]

    def to_state(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "lists"}
        return {**state, "lists": self.lists.to_state()}

    @classmethod
    def from_state(cls, s: dict) -> SourceState:
        fields = {k: v for k, v in s.items() if k != "lists"}
        fields["labels"] = {int(a): int(b) for a, b in s["labels"].items()}
        return cls(lists=NeighborLists.from_state(s["lists"]), **fields)


def pair_sources(
    state: SourceState, order: torch.Tensor, k: torch.Tensor, ratio: int, seed: int, rnd: int
) -> torch.Tensor:
    """(S, ratio) source ids for the targets in ``order`` (rounds/plan.py docstring); (S, 0) in mode none."""
    if state.mode == "none":
        return torch.empty(len(order), 0, dtype=torch.long)
    if state.mode == "selective":
        lists = [r[: int(ki)] for r, ki in zip(state.lists.ranked, k.tolist(), strict=True)]
        return cycle_own_lists(order, lists, ratio, seed, rnd)
    if state.mode == "random":
        return cycle_shared_pool(len(order), state.pool, ratio, seed, rnd)
    need = len(order) * ratio
    if len(state.stream) < need:
        raise RuntimeError(f"all-mode stream holds {len(state.stream)} ids, the round needs {need}")
    return torch.tensor(state.stream[:need], dtype=torch.long).view(len(order), ratio)


def consume_stream(state: SourceState, plan_source: torch.Tensor) -> None:
    """All mode: the round's ids leave the stream; ``in_use`` = the distinct ids actually trained on."""
    if state.mode == "all":
        used = plan_source.numel()
        state.in_use = len(set(state.stream[:used]))
        state.stream = state.stream[used:]


def needed_ids(state: SourceState, k: torch.Tensor, plan_source: torch.Tensor) -> list[int]:
    """Source ids this round downloads: the selected set (selective), the pool (random), the round's stream
    (all)."""
    if state.mode == "selective":
        return state.lists.selected(k.tolist())
    if state.mode == "random":
        return list(state.pool)
    return list(dict.fromkeys(plan_source.flatten().tolist()))
