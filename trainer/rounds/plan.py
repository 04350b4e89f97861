"""A round's sample plan: which target images each optimizer step trains on, and which sources go with them.

A round is ``steps`` optimizer steps in every source mode (RunConfig.round_steps). Each step takes
``global_batch = batch_size * world`` target images and ``source_ratio`` source images per target image:

- Targets are drawn in epochs WITHOUT replacement: each epoch is a permutation of an epoch list in which
  target i appears level_i = round(K_i / K0) times (hard targets oversampled, as the official code does;
  level 1 everywhere in mode none or with fixed K). Epochs run back to back until the round's steps are
  filled.
- Each target cycles through a permutation of its own source list (selective: its K_i nearest neighbors),
  so every neighbor is used once before any is used again; random mode cycles one permutation of the pool;
  all mode takes the corpus stream in order.
- Step s of the round holds rows [s * global_batch, (s + 1) * global_batch); rank r takes the r-th
  ``batch_size`` slice. The plan length is a multiple of world * batch_size by construction, so every rank
  runs the same number of steps (DDP never waits on a rank that ran out).

Every random draw comes from a generator seeded by (seed, round, purpose, index): the plan is identical
whether the run is resumed, sharded or split differently over threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Purposes of the seeded generators (never reuse one for two things).
TARGET_EPOCH, SOURCE_CYCLE, AUGMENT, POOL, STREAM = range(5)


def generator_for(name: str) -> torch.Generator:
    """A torch generator seeded by the sha256 of ``name``: independent streams for distinct names."""
    digest = hashlib.sha256(name.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def seeded(seed: int, rnd: int, purpose: int, index: int = 0) -> torch.Generator:
    """A generator for (seed, round, purpose, index), independent of every other such tuple."""
    return generator_for(f"{seed}:{rnd}:{purpose}:{index}")


def seed_int(seed: int, rnd: int, purpose: int, index: int = 0) -> int:
    """A 31-bit integer seed for (seed, round, purpose, index), for services that take an int seed."""
    digest = hashlib.sha256(f"{seed}:{rnd}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & (2**31 - 1)


def levels(k: torch.Tensor, k0: int) -> torch.Tensor:
    """level_i = round(K_i / K0), at least 1: how often target i appears in one epoch list."""
    return torch.clamp((k.double() / k0).round().long(), min=1)


def target_order(level: torch.Tensor, total: int, seed: int, rnd: int) -> torch.Tensor:
    """(total,) target indices: permutations of the epoch list (i repeated level_i times), back to back."""
    epoch_list = torch.repeat_interleave(torch.arange(len(level)), level)
    parts, have, epoch = [], 0, 0
    while have < total:
        perm = torch.randperm(len(epoch_list), generator=seeded(seed, rnd, TARGET_EPOCH, epoch))
        parts.append(epoch_list[perm])
        have += len(epoch_list)
        epoch += 1
    return torch.cat(parts)[:total]


def cycle_own_lists(
    order: torch.Tensor, lists: Sequence[Sequence[int]], ratio: int, seed: int, rnd: int
) -> torch.Tensor:
    """(S, ratio) source ids: the j-th use of target t takes the next entries of a permutation of lists[t],
    wrapping around only after the whole list was used."""
    gen = seeded(seed, rnd, SOURCE_CYCLE)
    cycles = [[lst[p] for p in torch.randperm(len(lst), generator=gen).tolist()] for lst in lists]
    cursor = [0] * len(lists)
    out: list[int] = []
    for t in order.tolist():
        cyc = cycles[t]
        if not cyc:
            raise RuntimeError(f"target image {t} has no source neighbors: is the index empty?")
        out.extend(cyc[(cursor[t] + q) % len(cyc)] for q in range(ratio))
        cursor[t] += ratio
    return torch.tensor(out, dtype=torch.long).view(len(order), ratio)


def cycle_shared_pool(count: int, pool: Sequence[int], ratio: int, seed: int, rnd: int) -> torch.Tensor:
    """(count, ratio) source ids cycling one permutation of ``pool``: each id used once before any repeat."""
    if not pool:
        raise RuntimeError("the random source pool is empty: is the index empty?")
    perm = torch.tensor(pool, dtype=torch.long)[torch.randperm(len(pool), generator=seeded(seed, rnd, POOL))]
    reps = -(-count * ratio // len(perm))
    return perm.repeat(reps)[: count * ratio].view(count, ratio)


@dataclass
class Plan:
    """One round's rows in step order: ``steps * global_batch`` of them."""

    target: torch.Tensor  # (S,) long, index into the target training list
    source: torch.Tensor  # (S, R) long source ids; R = 0 without sources
    steps: int
    batch_size: int  # per rank
    world: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def rows(self, step: int, rank: int) -> slice:
        lo = step * self.global_batch + rank * self.batch_size
        return slice(lo, lo + self.batch_size)

    def batch(self, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets (b,), sources (b, R)) of this rank at ``step``."""
        rows = self.rows(step, rank)
        return self.target[rows], self.source[rows]

    def source_ids(self) -> list[int]:
        """Distinct source ids the round trains on, in first-use order."""
        return list(dict.fromkeys(self.source.flatten().tolist()))


def uniforms(seed: int, rnd: int, step: int, plan: Plan, rank: int) -> torch.Tensor:
    """(b, 1 + R, 5) augmentation uniforms of this rank's rows at ``step`` (augment.py), drawn for the
    whole global batch so they do not depend on the number of ranks' split."""
    per_row = 1 + plan.source.shape[1]
    u = torch.rand(plan.global_batch, per_row, 5, generator=seeded(seed, rnd, AUGMENT, step))
    return u[rank * plan.batch_size : (rank + 1) * plan.batch_size]


def shard_indices(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of range(n), padded by wrapping around as DistributedSampler does: every rank gets
    ceil(n / world) indices."""
    per_rank = -(-n // world)
    padded = torch.arange(per_rank * world) % n
    return padded[rank::world]
