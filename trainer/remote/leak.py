"""Leakage guard: source images that duplicate a target train or val image are never trained on.

Two tests, before round 0, over every target image (train and val):
- the same bytes: the sha256 of each target file, looked up with ``sources_by_sha256``;
- a near copy: each target's ``leak_k`` nearest sources, kept when the divergence is below ``leak_threshold``
  (an identical image gives 0 up to float16 storage of the histograms; a re-encoded or resized copy a few
  1e-4 under JS; distinct images of the same texture class are far above 1e-3).
The union is excluded in every mode (``exclude_source_ids`` in neighbor queries, ``exclude`` in sampling),
saved as ``leaked.json`` in the run dir, counted in every metrics row and reported to the job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.client import RetrievalClient
from services.fileio import atomic_write, file_sha256
from trainer.remote.queries import QueryMaker

LEAKED = "leaked.json"
_BATCH = 512  # queries per neighbors request


@dataclass(frozen=True)
class LeakReport:
    ids: list[int]  # sorted, distinct
    same_bytes: int  # ids found by hash
    near_copy: int  # ids found by divergence (may overlap same_bytes)

    def to_json(self) -> dict:
        return {"ids": self.ids, "same_bytes": self.same_bytes, "near_copy": self.near_copy}


def same_bytes(client: RetrievalClient, paths: Sequence[str]) -> set[int]:
    """Source ids whose file has the same sha256 as one of ``paths``."""
    hashes = sorted({file_sha256(p) for p in paths})
    found: set[int] = set()
    for start in range(0, len(hashes), _BATCH):
        for ids in client.sources_by_sha256(hashes[start : start + _BATCH]).values():
            found.update(int(s) for s in ids)
    return found


def near_copies(
    client: RetrievalClient, queries: QueryMaker, k: int, threshold: float, metric: str
) -> set[int]:
    """Source ids within ``threshold`` of any query among the ``k`` nearest."""
    found: set[int] = set()
    n = len(queries.paths)
    for start in range(0, n, _BATCH):
        batch = [queries.query(i, k=k, offset=0) for i in range(start, min(n, start + _BATCH))]
        for result in client.neighbors(batch, k=k, metric=metric).results:
            found.update(nb.source_id for nb in result.neighbors if nb.distance < threshold)
    return found


def find_leaks(
    client: RetrievalClient, queries: QueryMaker, k: int, threshold: float, metric: str
) -> LeakReport:
    """The leak report of every image ``queries`` covers (target train + val)."""
    by_hash = same_bytes(client, queries.paths)
    by_distance = near_copies(client, queries, k, threshold, metric)
    return LeakReport(sorted(by_hash | by_distance), len(by_hash), len(by_distance))


def save_leaks(out: Path, report: LeakReport) -> None:
    atomic_write(out / LEAKED, json.dumps(report.to_json(), indent=1) + "\n")
