"""Rank 0's contact with the service before round 0: the index, the fixed target queries, the leak guard,
the job registration."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from services.client import ClientError, RetrievalClient, ServiceUnavailableError
from services.fileio import atomic_writer
from services.schemas import IndexInfo, JobCreate
from trainer.config import ConfigError, RunConfig
from trainer.fetch import QueryMaker, local_descriptors

DESCRIPTORS = "descriptors.npz"


def target_queries(
    cfg: RunConfig, client: RetrievalClient, info: IndexInfo, paths: list[str], out: Path
) -> QueryMaker:
    """The fixed queries of the target images, train then val (trainer/fetch.py docstring); descriptors
    persist in ``out`` so a resumed run asks exactly the same questions."""
    if cfg.query_mode == "image":
        return QueryMaker(paths)
    saved = out / DESCRIPTORS
    if saved.is_file():
        data = np.load(saved)
        if str(data["spec_hash"]) == info.spec_hash and len(data["descriptors"]) == len(paths):
            return QueryMaker(paths, data["descriptors"], info.spec_hash)
    computed = local_descriptors(client.spec(), paths, threads=max(1, cfg.fetch_workers))
    if computed is None:
        if cfg.query_mode == "descriptor":
            raise ConfigError("--query-mode descriptor needs a gabor index (a conv bank needs its weights)")
        return QueryMaker(paths)
    descriptors, spec_hash = computed
    if spec_hash != info.spec_hash:
        raise ConfigError(f"/v1/spec hashes to {spec_hash[:12]}, /v1/index says {info.spec_hash[:12]}")
    with atomic_writer(saved) as f:
        np.savez(f, descriptors=descriptors, spec_hash=np.array(spec_hash))
    return QueryMaker(paths, descriptors, spec_hash)


def register_job(cfg: RunConfig, client: RetrievalClient) -> str | None:
    """The job id on the service, or None when the service refuses job routes (a warning)."""
    try:
        name = cfg.job_name or f"sjft:{Path(cfg.out).name}"
        return client.create_job(JobCreate(name=name, target=cfg.target, config=cfg.to_dict())).job_id
    except ServiceUnavailableError:
        if cfg.source_mode != "none":
            raise
        print("warning: job not registered: the service is unavailable", file=sys.stderr)
    except ClientError as exc:
        print(f"warning: job not registered: {exc}", file=sys.stderr)
    return None
