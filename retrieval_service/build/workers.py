"""The unit of extraction work, identical in every runner: a batch of candidate positions -> decoded
metadata + float32 (n_ok, D, B) histograms, and a whole shard -> its shard file.

Every runner (in-process, one process per core, Ray tasks) calls these functions on the same batches
(``batch_plan``: ``batch_size`` positions, never crossing a shard boundary), and each extractor processes
one batch's readable images in chunks of ``chunk_size`` on one torch thread. The arithmetic per image is
therefore the same wherever it runs, and so are the histograms, byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval_service.build.shards import DecodedBatch, Shard, SourceImages, collate, write_shard
from retrieval_service.index.corpus import SourceRecord
from services.extract import DescriptorExtractor
from services.spec import DescriptorSpec


def batch_plan(start: int, stop: int, batch_size: int) -> list[list[int]]:
    """Positions ``start..stop-1`` in consecutive batches of ``batch_size`` (the last one shorter)."""
    return [list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size)]


@dataclass(frozen=True)
class ExtractionSetup:
    """What a worker needs besides the candidates: picklable, so it travels to processes and Ray tasks."""

    spec_json: str
    size: int
    device: str = "cpu"
    conv_weights: str | None = None

    @classmethod
    def of(cls, spec: DescriptorSpec, device: torch.device | str, conv_weights) -> ExtractionSetup:
        return cls(spec.canonical_json(), spec.size, str(device), str(conv_weights) if conv_weights else None)


_EXTRACTORS: dict[ExtractionSetup, DescriptorExtractor] = {}  # one per worker process and setup


def worker_extractor(setup: ExtractionSetup) -> DescriptorExtractor:
    """This process's extractor for ``setup`` (built once): single-threaded, as every runner's is."""
    if setup not in _EXTRACTORS:
        if torch.device(setup.device).type == "cpu":
            torch.set_num_threads(1)  # one process per core: intra-op threads would only contend
        spec = DescriptorSpec.model_validate_json(setup.spec_json)
        _EXTRACTORS.clear()
        _EXTRACTORS[setup] = DescriptorExtractor(spec, device=setup.device, conv_weights=setup.conv_weights)
    return _EXTRACTORS[setup]


def describe_batch(
    extractor: DescriptorExtractor, images: SourceImages, positions: Sequence[int]
) -> tuple[DecodedBatch, np.ndarray]:
    """Decode ``positions`` (unreadable ones are marked, never raised) and histogram the readable ones."""
    batch = collate([images[p] for p in positions])
    return batch, histograms_of(extractor, batch)


def sample_batch(
    extractor: DescriptorExtractor,
    images: SourceImages,
    positions: Sequence[int],
    expected_ok: np.ndarray,
    columns: Sequence[np.ndarray],
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The edge fit's unit of work (``edges.py``): decode ``positions``, then per chunk of the readable images
    and per block (``DescriptorExtractor.sample_values``, in ``fit_edges`` order), the values at that
    call's ``columns``: (ok flags, [float32 (d, len(columns[k]))]); values None when the readable images
    are not the ``expected_ok`` ones the columns were planned for."""
    batch = collate([images[p] for p in positions])
    if not np.array_equal(batch.ok, expected_ok):
        return batch.ok, None
    chunk, pixels = extractor.chunk_size, batch.images.numpy()
    blocks = len(columns) // max(1, -(-len(pixels) // chunk))  # calls per chunk
    picked = [
        values
        for c, start in enumerate(range(0, len(pixels), chunk))
        for values in extractor.picked_values(
            pixels[start : start + chunk], columns[c * blocks : (c + 1) * blocks]
        )
    ]
    return batch.ok, picked


def histograms_of(extractor: DescriptorExtractor, batch: DecodedBatch) -> np.ndarray:
    """float32 (n_ok, D, B) of a decoded batch (an empty array when nothing in it was readable)."""
    spec = extractor.spec
    if not batch.ok.any():
        return np.empty((0, spec.dim, spec.bins), np.float32)
    return extractor.histograms(batch.images.numpy())


def iter_shard_batches(
    extractor: DescriptorExtractor, images: SourceImages, start: int, stop: int, batch_size: int
) -> Iterator[tuple[DecodedBatch, np.ndarray]]:
    for positions in batch_plan(start, stop, batch_size):
        yield describe_batch(extractor, images, positions)


def run_shard(
    setup: ExtractionSetup,
    root: str,
    records: Sequence[SourceRecord],
    start: int,
    batch_size: int,
    path: str,
) -> dict:
    """Extract the shard whose candidates are ``records`` (positions ``start..``) and write it to ``path``
    atomically; returns ``{"path", "images", "unreadable", "pid"}``. A worker killed midway leaves no shard
    file, so running it again (a retry, or a resumed build) is always safe."""
    extractor = worker_extractor(setup)
    images = PositionedImages(Path(root), list(records), setup.size, range(start, start + len(records)))
    parts, hists = [], []
    for batch, hist in iter_shard_batches(extractor, images, start, start + len(records), batch_size):
        parts.append(batch)
        hists.append(hist)
    spec = extractor.spec
    shard = Shard.from_batches(parts, hists, spec.dim, spec.bins)
    write_shard(Path(path), shard)
    return {"path": path, "images": len(records), "unreadable": int((~shard.ok).sum()), "pid": os.getpid()}


class PositionedImages(SourceImages):
    """``SourceImages`` over some of the corpus's records, still addressed by global candidate positions."""

    def __init__(self, root: Path, records: list[SourceRecord], size: int, positions: Sequence[int]):
        super().__init__(root, records, size)
        self._row = {p: i for i, p in enumerate(positions)}

    def __getitem__(self, pos: int):
        return (pos, *super().__getitem__(self._row[pos])[1:])
