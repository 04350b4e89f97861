"""Source selection per mode against a real service: random pools (seeded, growing, leak-free, labelled by
id, sized by --match-pool), the all-mode corpus stream (epochs without replacement), selective windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.client import RetrievalClient
from trainer.remote.queries import QueryMaker
from trainer.remote.selector import Selector, matched_pool_sizes
from trainer.rounds.neighbors import NeighborLists
from trainer.rounds.selection import SourceState, consume_stream, pair_sources


@pytest.fixture(scope="module")
def client(service):
    with RetrievalClient(service) as c:
        yield c


def state(mode: str, size: int, n: int = 3, leaked=()) -> SourceState:
    return SourceState(mode, size, NeighborLists([[] for _ in range(n)]), leaked=list(leaked))


def test_random_pool_is_seeded_grows_and_skips_leaked_ids(client):
    size = client.index_info().size
    a, b = state("random", size, leaked=[0, 1, 2]), state("random", size, leaked=[0, 1, 2])
    for s in (a, b):
        sel = Selector(s, client, None, "js", seed=4, pool_sizes=[10, 16])
        sel.select(0, torch.full((3,), 2), 0)
    assert a.pool == b.pool and len(set(a.pool)) == 10 == a.in_use
    first = list(a.pool)
    Selector(a, client, None, "js", seed=4, pool_sizes=[10, 16]).select(1, torch.full((3,), 2), 0)
    assert a.pool[:10] == first and len(set(a.pool)) == 16 and not set(a.pool) & {0, 1, 2}
    by_route = {r.source_id: r.label for r in client.source_labels(a.pool)}
    assert all(a.label(s) == by_route[s] for s in a.pool)


def test_all_mode_streams_corpus_epochs_without_replacement(client):
    size = client.index_info().size
    s = state("all", size, leaked=[5])
    need = size + 7  # more than one corpus epoch
    Selector(s, client, None, "js", seed=1).select(0, torch.full((3,), 2), need)
    epoch = s.stream[: size - 1]
    assert sorted(epoch) == [i for i in range(size) if i != 5]  # every id once, the leaked one never
    assert 5 not in s.stream[size - 1 :] and len(set(s.stream[size - 1 : need])) == 8
    drawn = len(s.stream)
    source = pair_sources(s, torch.zeros(need, dtype=torch.long), torch.full((3,), 2), 1, 1, 0)
    assert source.flatten().tolist() == s.stream[:need]
    consume_stream(s, source)
    assert s.in_use == size - 1 and len(s.stream) == drawn - need  # trained-on ids leave the stream
    assert all(i in s.labels for i in source.flatten().tolist())


def test_selective_windows_exclude_leaked_ids(client, index_dir: Path, small_target: Path):
    from trainer.remote.queries import local_descriptors

    paths = sorted(str(p) for p in (small_target / "train").rglob("*.png"))
    desc, spec_hash = local_descriptors(client.spec(), paths)
    queries = QueryMaker(paths, desc, spec_hash)
    free = state("selective", 48, n=len(paths))
    Selector(free, client, queries, "js", seed=0).select(0, torch.full((len(paths),), 3), 0)
    top = free.lists.ranked[0][0]
    guarded = state("selective", 48, n=len(paths), leaked=[top])
    Selector(guarded, client, queries, "js", seed=0).select(0, torch.full((len(paths),), 3), 0)
    assert all(top not in r for r in guarded.lists.ranked) and len(guarded.lists.ranked[0]) == 3


def test_match_pool_reads_a_runs_pool_sizes(tmp_path: Path):
    rows = [{"round": 1, "sources_in_use": 30}, {"round": 0, "sources_in_use": 12}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert matched_pool_sizes(str(tmp_path)) == [12, 30]
