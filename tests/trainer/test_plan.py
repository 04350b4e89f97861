"""The round plan: epochs without replacement, hard targets oversampled, every neighbor used before any
repeats, equal steps on every rank, deterministic augmentation, the mode-independent round length."""

from __future__ import annotations

from collections import Counter

import torch

from trainer.config import RunConfig
from trainer.rounds.plan import (
    Plan,
    cycle_own_lists,
    cycle_shared_pool,
    levels,
    shard_indices,
    target_order,
    uniforms,
)
from trainer.training.augment import crop_box, train_view


def test_epochs_draw_without_replacement_and_repeat_hard_targets_by_level():
    k = torch.tensor([5, 5, 15, 25])  # K0 = 5: levels 1, 1, 3, 5 -> an epoch list of 10
    lv = levels(k, 5)
    assert lv.tolist() == [1, 1, 3, 5]
    order = target_order(lv, 25, seed=1, rnd=0)
    for epoch in (order[:10], order[10:20]):  # every full epoch holds each target exactly level_i times
        assert Counter(epoch.tolist()) == {0: 1, 1: 1, 2: 3, 3: 5}
    assert len(order) == 25
    assert torch.equal(order, target_order(lv, 25, seed=1, rnd=0))
    assert not torch.equal(order, target_order(lv, 25, seed=1, rnd=1))


def test_plain_epochs_see_every_target_once():
    order = target_order(torch.ones(9, dtype=torch.long), 18, seed=3, rnd=2)
    assert sorted(order[:9].tolist()) == list(range(9)) == sorted(order[9:].tolist())


def test_each_target_cycles_through_its_whole_list_before_repeating():
    lists = [[10, 11, 12], [20, 21], [30]]
    order = torch.tensor([0, 1, 0, 2, 0, 1, 0, 1])
    src = cycle_own_lists(order, lists, ratio=2, seed=0, rnd=0)  # (8, 2)
    by_target: dict[int, list[int]] = {}
    for t, row in zip(order.tolist(), src.tolist(), strict=True):
        by_target.setdefault(t, []).extend(row)
    for t, used in by_target.items():
        n = len(lists[t])
        for start in range(0, len(used) - n + 1, n):  # each window of len(list) uses are all distinct
            assert sorted(used[start : start + n]) == sorted(lists[t])
        assert set(used) <= set(lists[t])


def test_shared_pool_is_used_evenly():
    src = cycle_shared_pool(10, list(range(100, 107)), ratio=2, seed=0, rnd=0)
    counts = Counter(src.flatten().tolist())
    assert set(counts) == set(range(100, 107)) and max(counts.values()) - min(counts.values()) <= 1


def test_uneven_target_count_gives_every_rank_the_same_steps():
    # n = 9 targets, world 2, batch 4: the old per-epoch sharding gave the ranks 2 and 1 batches.
    cfg = RunConfig("t", "http://x", "o", k0=2, batch_size=4)
    steps = cfg.round_steps(9, world=2)
    assert steps == -(-3 * 9 * 2 // (4 * 2))
    order = target_order(torch.ones(9, dtype=torch.long), steps * 8, seed=0, rnd=0)
    plan = Plan(order, torch.empty(len(order), 0, dtype=torch.long), steps, 4, 2)
    for step in range(steps):
        a, b = plan.batch(step, 0)[0], plan.batch(step, 1)[0]
        assert len(a) == len(b) == 4
    # Evaluation shards are padded the DistributedSampler way: equal sizes, covering every index.
    shards = [shard_indices(9, r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [5, 5] and set(torch.cat(shards).tolist()) == set(range(9))


def test_round_length_formula_and_overrides():
    cfg = RunConfig("t", "http://x", "o", k0=5, batch_size=32, source_passes=3, source_ratio=1)
    assert cfg.round_steps(1000) == -(-3 * 1000 * 5 // 32)
    assert RunConfig("t", "http://x", "o", k0=5, batch_size=32, source_ratio=2).round_steps(1000) == 235
    assert RunConfig("t", "http://x", "o", steps_per_round=7).round_steps(1000) == 7
    assert RunConfig("t", "http://x", "o", epochs_per_round=2, batch_size=10).round_steps(95) == 19


def test_augmentation_uniforms_are_fixed_per_step_and_rank_slices_of_one_draw():
    order = torch.arange(16)
    plan1 = Plan(order, order.view(16, 1), 2, 8, 1)
    plan2 = Plan(order, order.view(16, 1), 2, 4, 2)
    u = uniforms(5, 1, 1, plan1, 0)
    assert u.shape == (8, 2, 5) and torch.equal(u, uniforms(5, 1, 1, plan1, 0))
    assert torch.equal(torch.cat([uniforms(5, 1, 1, plan2, r) for r in range(2)]), u)
    assert not torch.equal(u, uniforms(5, 1, 0, plan1, 0))


def test_random_resized_crop_stays_inside_and_covers_the_scale_range():
    gen = torch.Generator().manual_seed(0)
    areas = []
    for u in torch.rand(500, 5, generator=gen):
        top, left, h, w = crop_box(40, 60, u, 0.35)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        areas.append(h * w / (40 * 60))
    assert min(areas) < 0.4 and max(areas) > 0.9
    image = torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8, generator=gen)
    view = train_view(image, torch.tensor([1.0, 0.5, 0.0, 0.0, 0.2]), 32, 0.35)  # flip: u[4] < 0.5
    assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
