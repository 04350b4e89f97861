"""Shard extraction as Ray tasks: one task per missing shard, written by the worker, assembled by the driver.

Each task runs ``workers.run_shard``: it reads its candidates from the corpus and writes
``<out>.partial/shards/shard-NNNNN.npz`` atomically, so the corpus root and the output directory must be
the same paths on every node (shared storage). The driver only plans, waits and assembles; the
histograms are byte-identical to a local build's because every runner does the same per-batch work.

Failure model: a worker killed mid-task (node lost, OOM, ``kill -9``) leaves no shard file, and Ray runs
the task again (``max_retries``). An exception inside a task is a bug or a bad environment and is not
retried; the build stops with a ``BuildError`` after the other shards finish, and those are kept, so
running the same command again resumes from them (like an interrupted local build).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from retrieval_service.build.extraction import pending_shards
from retrieval_service.build.shards import shard_path
from retrieval_service.build.staging import BuildError
from retrieval_service.build.workers import ExtractionSetup, run_shard
from retrieval_service.index.corpus import Corpus
from services.spec import DescriptorSpec

log = logging.getLogger("retrieval_service.build.builder")

LOCAL = "local"  # --ray without an address: start a Ray instance on this machine for the build


def extract_shards_on_ray(
    corpus: Corpus,
    spec: DescriptorSpec,
    shard_dir: Path,
    conv_weights,
    shard_size: int,
    batch_size: int,
    address: str,
    progress: bool,
    *,
    cpus: int | None = None,
    gpus_per_task: float = 0.0,
    max_retries: int = 3,
    shard_fn: Callable[..., dict] | None = None,
) -> tuple[int, int]:
    """Write every missing shard with Ray tasks; returns (images processed, shards found finished).

    ``address``: ``"local"`` (a private instance with ``cpus`` CPUs, shut down afterwards), ``"auto"``
    (the cluster this machine belongs to) or a cluster address (``host:6379``, ``ray://host:10001``).
    An already-initialised Ray (e.g. a test's) is used as it is. ``gpus_per_task`` > 0 runs the
    extractors on the workers' GPUs. ``shard_fn`` (default: this module's ``run_shard``) is the task body.
    """
    ray = _import_ray()
    pending, resumed = pending_shards(shard_dir, len(corpus.records), shard_size, spec.dim, spec.bins)
    if not pending:
        return 0, resumed
    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address, cpus)
    try:
        args = (corpus, spec, shard_dir, conv_weights, batch_size, pending, progress)
        return _run(ray, *args, gpus_per_task, max_retries, shard_fn or run_shard), resumed
    finally:
        if started_here:
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise BuildError("--ray needs the ray package: pip install 'sjft[ray]'") from exc
    return ray


def _connect(ray, address: str, cpus: int | None) -> None:
    try:
        if address == LOCAL:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BuildError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    log.info("Ray: %s", ray.cluster_resources())


def _run(ray, corpus, spec, shard_dir, conv_weights, batch_size, pending, progress, gpus, retries, shard_fn):
    device = "cuda" if gpus > 0 else "cpu"
    setup = ExtractionSetup.of(spec, device, Path(conv_weights).absolute() if conv_weights else None)
    task = ray.remote(shard_fn).options(num_cpus=1, num_gpus=gpus, max_retries=retries)
    root = str(Path(corpus.root).absolute())
    refs = {}
    for index, start, stop in pending:
        path = str(shard_path(shard_dir.absolute(), index))
        ref = task.remote(setup, root, corpus.records[start:stop], start, batch_size, path)
        refs[ref] = (index, stop - start)
    total = sum(n for _, n in refs.values())
    bar = tqdm(total=total, unit="img", desc="extract (ray)", disable=not progress, dynamic_ncols=True)
    t0, done, failures, waiting = time.perf_counter(), 0, [], list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        index, n = refs[ready[0]]
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as exc:  # task raised, or its worker died more than max_retries times
            failures.append(f"shard {index}: {str(exc).strip().splitlines()[-1]}")
            log.error("shard %d failed on Ray: %s", index, exc)
            continue
        done += n
        bar.update(n)
        rate = done / (time.perf_counter() - t0)
        log.info("shard %d written by pid %s (%d unreadable): %.1f img/s", index, result["pid"],
                 result["unreadable"], rate)
    bar.close()
    if failures:
        raise BuildError(
            f"{len(failures)} of {len(refs)} shards failed on Ray ({failures[0]}); the finished ones are "
            "kept: run the same command again to resume"
        )
    return done
