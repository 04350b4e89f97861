"""Questions about the source set as a whole: labels of many ids, a seeded uniform sample, ids by file hash.

The trainer's random/all modes label sources without a search, its random baseline draws the same number of
sources as selection would, and its leakage guard finds exact byte duplicates of target images.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from retrieval_service.api.deps import ReadyDep
from retrieval_service.api.errors import InvalidRequest, NotFound
from retrieval_service.api.responses import error_responses
from services.schemas import (
    SampleRequest,
    SampleResponse,
    Sha256Request,
    Sha256Response,
    SourceIdsRequest,
    SourceLabel,
    SourceLabelsResponse,
)

router = APIRouter(prefix="/v1/sources", tags=["sources"])


@router.post(
    "/labels", response_model=SourceLabelsResponse, responses=error_responses(400, 404, 413, 422, 503)
)
def source_labels(body: SourceIdsRequest, ready: ReadyDep) -> SourceLabelsResponse:
    """Label and class name of each source id, in request order; any unknown id is a 404 naming it."""
    ids = np.asarray(body.ids, dtype=np.int64)
    size = ready.index.size
    unknown = ids[ids >= size].tolist()
    if unknown:
        raise NotFound(
            f"unknown source_id {', '.join(map(str, unknown[:20]))}: this index has ids 0..{size - 1}",
            {"unknown_source_ids": unknown[:1000]},
        )
    labels = ready.index.manifest.all_labels()[ids].tolist()
    classes = ready.index.manifest.classes
    return SourceLabelsResponse(
        labels=[
            SourceLabel(source_id=i, label=lab, class_name=classes[lab])
            for i, lab in zip(body.ids, labels, strict=True)
        ]
    )


def draw_sample(size: int, n: int, seed: int, exclude: list[int]) -> list[int]:
    """``n`` distinct ids of ``range(size)`` minus ``exclude``, uniformly; the same for the same arguments.

    numpy's ``Generator(PCG64(seed))`` is stable across numpy versions for ``choice`` without replacement
    over the same population (the population is sorted, so the order of ``exclude`` does not matter).
    """
    excluded = np.asarray(exclude, dtype=np.int64)
    population = np.setdiff1d(np.arange(size, dtype=np.int64), excluded[excluded < size])
    if n > len(population):
        raise InvalidRequest(
            f"cannot draw {n} distinct sources: only {len(population)} remain after the exclusions",
            {"n": n, "available": int(len(population))},
            code="not_enough_sources",
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.choice(population, size=n, replace=False).tolist()


@router.post("/sample", response_model=SampleResponse, responses=error_responses(400, 413, 422, 503))
def sample_sources(body: SampleRequest, ready: ReadyDep) -> SampleResponse:
    """n distinct source ids drawn uniformly from the index minus ``exclude``; the same for the same seed."""
    return SampleResponse(ids=draw_sample(ready.index.size, body.n, body.seed, body.exclude))


@router.post("/by-sha256", response_model=Sha256Response, responses=error_responses(400, 413, 422, 503))
def sources_by_sha256(body: Sha256Request, ready: ReadyDep) -> Sha256Response:
    """Source ids whose file bytes have each SHA-256 (exact duplicates); unknown hashes are left out."""
    return Sha256Response(matches=ready.index.manifest.by_sha256(body.sha256))
