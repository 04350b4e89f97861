"""Neighbor windows never refetch; the source cache is content-addressed and atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from services.client import ServiceUnavailableError
from services.schemas import Neighbor, NeighborsResponse, QueryResult
from trainer.remote.fetch import SourceCache, download
from trainer.remote.queries import QueryMaker
from trainer.remote.selector import fetch_windows
from trainer.rounds.neighbors import NeighborLists

SPEC_HASH = "0" * 64


class RankingClient:
    """Answers windows of a fixed per-query ranking (source ids 100*i + r) and records what was asked."""

    def __init__(self, size: int = 10_000):
        self.asked: list[tuple[str, int, int]] = []
        self.size = size

    def neighbors(self, queries, k, metric="js", **_):
        results = []
        for q in queries:
            if q.source_id is not None:  # label lookup: the source finds itself
                found = [Neighbor(source_id=q.source_id, distance=0.0, label=q.source_id % 7, class_name="c")]
            else:
                self.asked.append((q.id, q.offset, q.k))
                base = 100 * int(q.id)
                found = [
                    Neighbor(source_id=base + r, distance=r / 10, label=r % 3, class_name="c")
                    for r in range(q.offset, q.offset + q.k)
                ]
            results.append(QueryResult(id=q.id, neighbors=found))
        return NeighborsResponse(results=results, spec_hash=SPEC_HASH, took_ms=0.0)


def descriptor_queries(n: int) -> QueryMaker:
    return QueryMaker([f"t{i}" for i in range(n)], torch.full((n, 2, 2), 0.5).numpy(), SPEC_HASH)


def test_windows_extend_without_refetching():
    client, lists = RankingClient(), NeighborLists([[] for _ in range(3)])
    queries = descriptor_queries(3)
    fetch_windows(client, queries, lists, [2, 2, 2], "js")
    fetch_windows(client, queries, lists, [10, 2, 4], "js")
    assert fetch_windows(client, queries, lists, [10, 2, 4], "js") == 0  # nothing new: no request
    assert client.asked == [("0", 0, 2), ("1", 0, 2), ("2", 0, 2), ("0", 2, 8), ("2", 2, 2)]
    assert lists.ranked[0] == list(range(10)) and lists.ranked[2] == [200, 201, 202, 203]
    every = [s for r in lists.ranked for s in r]
    assert len(every) == len(set(every))  # each neighbor fetched exactly once
    assert lists.labels[7] == 1


def test_cache_is_content_addressed_and_shared(tmp_path: Path):
    a, b = SourceCache(tmp_path, "idx-a"), SourceCache(tmp_path, "idx-b")
    pa = a.put(5, "png", b"bytes")
    pb = b.put(9, "png", b"bytes")
    assert pa == pb and pa.name.endswith(".png") and a.path(5) == pa
    assert a.path(9) is None and b.path(5) is None  # ids are per index


def test_killed_write_leaves_no_entry(tmp_path: Path, monkeypatch):
    cache = SourceCache(tmp_path, "idx")

    def crash(*args):
        raise KeyboardInterrupt  # as if killed between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put(1, "jpg", b"x" * 1000)
    monkeypatch.undo()
    assert cache.path(1) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # temp files removed too


class StreamClient:
    def __init__(self, break_after: int | None = None):
        self.requests: list[list[int]] = []
        self.break_after = break_after

    def stream_sources(self, ids):
        self.requests.append(list(ids))
        for n, s in enumerate(ids):
            if self.break_after is not None and n == self.break_after:
                self.break_after = None
                raise ServiceUnavailableError(503, "stream_broken", "connection lost")
            yield s, "png", f"img{s}".encode()


def test_download_skips_cached_and_retries_only_the_rest(tmp_path: Path):
    cache = SourceCache(tmp_path, "idx")
    cache.put(2, "png", b"img2")
    client = StreamClient(break_after=2)
    slept = []
    n = download(client, [1, 2, 3, 4, 5, 1], cache, workers=1, chunk=10, progress=False, sleep=slept.append)
    assert n == 4
    assert client.requests == [[1, 3, 4, 5], [4, 5]]
    assert len(slept) == 1
    assert all(cache.path(s).read_bytes() == f"img{s}".encode() for s in (1, 2, 3, 4, 5))
    assert download(client, [1, 3], cache, progress=False) == 0 and len(client.requests) == 2
