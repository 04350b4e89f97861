"""Neighbor windows from the service and the local content-addressed cache of source images.

Queries. The service cannot re-identify an uploaded image, and a later round needs the SAME ranked list
deeper. So the trainer fixes each target image's query once: by default (``query_mode`` auto with a Gabor
index) it computes the descriptor locally from ``GET /v1/spec`` with ``services.extract.DescriptorExtractor``
and sends ``descriptor`` + ``spec_hash`` (images never leave the machine; the descriptors are saved in the
run directory so a resumed run asks exactly the same questions). Otherwise (``image`` mode, or a conv index
whose weights the trainer lacks) it sends ``image_b64`` of the unchanged file bytes, which the service maps
to the same descriptor every time. Either way round m asks only for the new window [old K_i, new K_i) with
per-query ``offset``/``k``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.client import RetrievalClient, ServiceUnavailableError, encode_image
from services.fileio import atomic_write
from services.schemas import IndexInfo, Query
from services.spec import DescriptorSpec


def index_key(info: IndexInfo) -> str:
    """Identity of one built index (spec + build), naming its namespace in the shared cache."""
    build = hashlib.sha256(f"{info.spec_hash}|{info.size}|{info.created}".encode()).hexdigest()
    return f"{info.spec_hash[:16]}-{build[:12]}"


class QueryMaker:
    """The fixed query of each target image (see module docstring)."""

    def __init__(
        self, paths: Sequence[str], descriptors: np.ndarray | None = None, spec_hash: str | None = None
    ):
        self.paths = list(paths)
        self.descriptors = descriptors  # (N, D, B) float32 or None for image mode
        self.spec_hash = spec_hash

    @property
    def mode(self) -> str:
        return "image" if self.descriptors is None else "descriptor"

    def query(self, i: int, k: int, offset: int) -> Query:
        if self.descriptors is None:
            data = encode_image(Path(self.paths[i]).read_bytes())
            return Query(id=str(i), image_b64=data, k=k, offset=offset)
        return Query(
            id=str(i), descriptor=self.descriptors[i].tolist(), spec_hash=self.spec_hash, k=k, offset=offset
        )


def local_descriptors(
    spec_json: dict, paths: Sequence[str], threads: int = 2
) -> tuple[np.ndarray, str] | None:
    """(N, D, B) descriptors of ``paths`` under the service's spec, or None when this spec needs conv
    weights."""
    spec = DescriptorSpec.model_validate(spec_json)
    if spec.bank != "gabor":
        return None
    from services.extract import DescriptorExtractor  # heavy (filter bank); only needed here

    extractor = DescriptorExtractor(spec, device="cpu")
    chunks = [
        extractor.histograms_from_files(paths[s : s + 64], workers=threads) for s in range(0, len(paths), 64)
    ]
    return np.concatenate(chunks).astype(np.float32), spec.spec_hash


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


class SourceCache:
    """Content-addressed store shared by runs: ``objects/<sha[:2]>/<sha256>.<ext>`` holds the bytes and
    ``refs/<index_key>/<source_id>`` names the object. Both are written to a temporary file in the same
    directory and renamed (``os.replace``), so a killed download never leaves a partial or corrupt entry, and
    concurrent writers of the same object write identical bytes."""

    def __init__(self, root: str | Path, key: str):
        self.root = Path(root)
        self.refs = self.root / "refs" / key
        self.objects = self.root / "objects"
        self.refs.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)

    def _ref(self, source_id: int) -> Path:
        return self.refs / f"{int(source_id)}"

    def path(self, source_id: int) -> Path | None:
        """The cached file of ``source_id``, or None."""
        ref = self._ref(source_id)
        try:
            name = ref.read_text().strip()
        except FileNotFoundError:
            return None
        obj = self.objects / name[:2] / name
        return obj if obj.is_file() else None

    def has(self, source_id: int) -> bool:
        return self.path(source_id) is not None

    def put(self, source_id: int, ext: str, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}.{ext.lower() or 'bin'}"
        obj = self.objects / name[:2] / name
        if not obj.is_file():
            atomic_write(obj, data, fsync=False)
        atomic_write(self._ref(source_id), name.encode(), fsync=False)
        return obj


def download(
    client: RetrievalClient,
    ids: Sequence[int],
    cache: SourceCache,
    workers: int = 4,
    chunk: int = 256,
    retries: int = 3,
    backoff: float = 0.5,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Stream every id not yet in ``cache`` (``workers`` streams over id chunks); returns how many were
    fetched.

    A stream that breaks midway is retried for its remaining ids only, with exponential backoff; a service
    that stays away raises ``ServiceUnavailableError`` (what is cached stays cached, so a rerun resumes the
    download).
    """
    missing = [int(s) for s in dict.fromkeys(ids) if not cache.has(s)]
    if not missing:
        return 0
    bar = tqdm(total=len(missing), desc="sources", unit="img", disable=not progress, leave=False)

    def one(part: list[int]) -> None:
        remaining = list(part)
        for attempt in range(retries + 1):
            try:
                for source_id, ext, data in client.stream_sources(list(remaining)):
                    cache.put(source_id, ext, data)
                    remaining.remove(source_id)
                    bar.update(1)
                if remaining:
                    raise ServiceUnavailableError(
                        503, "stream_incomplete", f"stream ended without {remaining[:5]}"
                    )
                return
            except ServiceUnavailableError as exc:
                if attempt == retries or exc.code == "service_unavailable":
                    raise
                sleep(min(30.0, backoff * 2**attempt))

    parts = [missing[s : s + chunk] for s in range(0, len(missing), chunk)]
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for future in [pool.submit(one, p) for p in parts]:
                future.result()
    finally:
        bar.close()
    return len(missing)
