"""The two passes of a build over the images: fitting the bin edges on a seeded sample, and extracting shards.

On CPU, ``workers`` processes each decode and extract whole batches (``pool.py``); on a GPU, workers of a
torch DataLoader decode and the main process runs the extractor. Batches never cross a shard boundary and
always hold the same positions for a given corpus and settings (``workers.batch_plan``), so a resumed build,
or a build on Ray (``ray_runner.py``), feeds the extractor exactly the batches an uninterrupted local one
would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from retrieval_service.build.edges import fit_edges_in_processes
from retrieval_service.build.pool import describe_in_processes
from retrieval_service.build.shards import (
    DecodedBatch,
    Shard,
    SourceImages,
    make_loader,
    read_shard,
    shard_path,
    write_shard,
)
from retrieval_service.build.workers import ExtractionSetup, batch_plan, describe_batch, histograms_of
from retrieval_service.index.corpus import Corpus
from services.extract import DescriptorExtractor, fit_edges
from services.spec import DescriptorSpec

log = logging.getLogger("retrieval_service.build.builder")


def make_extractor(spec: DescriptorSpec, device: torch.device, conv_weights) -> DescriptorExtractor:
    """The build's extractor: on CPU the Gabor bank runs one thread per core (see ``cpu_threads``)."""
    if device.type == "cpu" and spec.bank == "gabor":
        return DescriptorExtractor(spec, device=device, workers=os.cpu_count() or 1)
    return DescriptorExtractor(spec, device=device, conv_weights=conv_weights)


@contextlib.contextmanager
def cpu_threads(spec: DescriptorSpec, device: torch.device) -> Iterator[None]:
    """Torch on one thread while a CPU Gabor extractor runs its own threads, restored afterwards.

    Measured: 16-20 CPU-ms/image this way against 35-38 with torch's intra-op threads
    (bench/results/extract.md). The conv bank is plain convolutions, which use intra-op threads well.
    """
    if device.type != "cpu" or spec.bank != "gabor":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_spec_edges(
    corpus: Corpus,
    spec0: DescriptorSpec,
    device: torch.device,
    conv_weights,
    edge_sample: int,
    seed: int,
    batch_size: int,
    workers: int,
) -> DescriptorSpec:
    """``spec0`` with equal-mass edges fitted on ``edge_sample`` candidates drawn with ``seed``.

    Unreadable sampled files are skipped here (extraction reports them).
    """
    rng = np.random.default_rng(seed)
    n = len(corpus.records)
    sample = np.sort(rng.choice(n, size=min(edge_sample, n), replace=False)).tolist()
    batches = [sample[i : i + batch_size] for i in range(0, len(sample), batch_size)]
    extractor = make_extractor(spec0, device, conv_weights)
    t = time.perf_counter()
    if device.type == "cpu" and workers > 0:  # the same edges, from every core (edges.py)
        setup = ExtractionSetup.of(spec0, device, conv_weights)
        edges = fit_edges_in_processes(
            setup, extractor, corpus.root, corpus.records, batches, spec0.bins, seed, workers
        )
    else:
        loader = make_loader(corpus.root, corpus.records, spec0.size, batches, workers)

        def images() -> Iterator[np.ndarray]:
            for batch in loader:
                if batch.ok.any():
                    yield batch.images.numpy()  # (n_ok, S, S, 3) uint8

        edges = fit_edges(extractor, images(), spec0.bins, seed=seed)  # (D, B-1)
    spec = spec0.with_edges(edges)
    log.info(
        "fitted %d x %d bin edges on %d sampled images in %.1f s (spec %s)",
        *edges.shape,
        len(sample),
        time.perf_counter() - t,
        spec.spec_hash[:12],
    )
    return spec


def pending_shards(shard_dir: Path, n: int, shard_size: int, dim: int, bins: int) -> tuple[list[tuple], int]:
    """([(index, start, stop)] of the shards still to extract, number of shards already finished)."""
    n_shards = -(-n // shard_size)
    pending = []
    for i in range(n_shards):
        start, stop = i * shard_size, min((i + 1) * shard_size, n)
        if read_shard(shard_path(shard_dir, i), start, stop, dim, bins) is None:
            pending.append((i, start, stop))
    resumed = n_shards - len(pending)
    if resumed:
        log.info("resuming: %d of %d shards already finished", resumed, n_shards)
    return pending, resumed


def _described(
    corpus: Corpus, spec: DescriptorSpec, device: torch.device, conv_weights, batches, workers: int
) -> Iterator[tuple[DecodedBatch, np.ndarray]]:
    """(batch, float32 (n_ok, D, B)) per batch, in order. CPU: ``workers`` processes that decode and
    extract (0: this process); GPU: ``workers`` decoding processes feed the one extractor on the device."""
    if device.type == "cpu" and workers > 0:
        setup = ExtractionSetup.of(spec, device, conv_weights)
        yield from describe_in_processes(setup, corpus.root, corpus.records, batches, workers)
        return
    extractor = make_extractor(spec, device, conv_weights)
    if device.type == "cpu":
        images = SourceImages(corpus.root, corpus.records, spec.size)
        for positions in batches:
            yield describe_batch(extractor, images, positions)
        return
    for batch in make_loader(corpus.root, corpus.records, spec.size, batches, workers):
        yield batch, histograms_of(extractor, batch)


def extract_shards(
    corpus: Corpus,
    spec: DescriptorSpec,
    shard_dir: Path,
    device: torch.device,
    conv_weights,
    shard_size: int,
    batch_size: int,
    workers: int,
    progress: bool,
) -> tuple[int, int]:
    """Write every missing shard; returns (images processed in this run, shards found finished)."""
    n = len(corpus.records)
    n_shards = -(-n // shard_size)
    pending, resumed = pending_shards(shard_dir, n, shard_size, spec.dim, spec.bins)
    if not pending:
        return 0, resumed
    batches = [chunk for _, start, stop in pending for chunk in batch_plan(start, stop, batch_size)]
    total = sum(stop - start for _, start, stop in pending)
    bar = tqdm(
        total=total, unit="img", desc="extract", disable=not progress, dynamic_ncols=True, smoothing=0.05
    )
    t0, done, skipped = time.perf_counter(), 0, 0
    queue = iter(pending)
    index, start, stop = next(queue)
    parts: list[DecodedBatch] = []
    hists: list[np.ndarray] = []
    for batch, hist in _described(corpus, spec, device, conv_weights, batches, workers):
        parts.append(batch)
        hists.append(hist)  # (n_ok, D, B)
        done += len(batch.positions)
        skipped += int((~batch.ok).sum())
        bar.update(len(batch.positions))
        bar.set_postfix(skipped=skipped, refresh=False)
        if batch.positions[-1] == stop - 1:  # the shard's last batch: batches never straddle shards
            write_shard(shard_path(shard_dir, index), Shard.from_batches(parts, hists, spec.dim, spec.bins))
            rate = done / (time.perf_counter() - t0)
            log.info(
                "shard %d/%d written (%d images, %d unreadable so far): %.1f img/s, ETA %.0f s",
                index + 1,
                n_shards,
                stop - start,
                skipped,
                rate,
                (total - done) / rate,
            )
            parts, hists = [], []
            index, start, stop = next(queue, (None, None, None))
    bar.close()
    return done, resumed


def load_shards(shard_dir: Path, n_candidates: int, shard_size: int, dim: int, bins: int) -> Shard:
    """All shards joined in candidate order; a missing or damaged one is an error (just written)."""
    shards = []
    for i in range(-(-n_candidates // shard_size)):
        start, stop = i * shard_size, min((i + 1) * shard_size, n_candidates)
        shard = read_shard(shard_path(shard_dir, i), start, stop, dim, bins)
        if shard is None:
            raise RuntimeError(f"shard {shard_path(shard_dir, i)} is missing or damaged after extraction")
        shards.append(shard)
    return Shard(*(np.concatenate([getattr(s, name) for s in shards]) for name in Shard.__dataclass_fields__))
