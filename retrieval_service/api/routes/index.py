"""What the loaded index is: its size, classes and spec (so clients can compute descriptors themselves)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from retrieval_service.api.deps import ReadyDep
from services.divergence import METRICS
from services.schemas import IndexInfo

router = APIRouter(prefix="/v1", tags=["index"])

# Optional features a client may test for before relying on them (older services lack the field).
CAPABILITIES = ["max_per_source", "sources.labels", "sources.sample", "sources.by_sha256"]


@router.get("/index", response_model=IndexInfo)
def index_info(ready: ReadyDep) -> IndexInfo:
    """Size, spec hash, bank, descriptor shape, classes and supported metrics of the served index."""
    index = ready.index
    info = index.info
    return IndexInfo(
        size=index.size,
        spec_hash=ready.spec_hash,
        bank=index.spec.bank,
        dim=index.spec.dim,
        bins=index.spec.bins,
        classes=index.manifest.classes,
        metrics=list(METRICS),
        index_kind=str(getattr(index.engine, "kind", None) or info.get("index_kind") or "flat"),
        created=str(info.get("created", "")),
        code_version=str(info.get("code_version", "")),
        capabilities=list(CAPABILITIES),
    )


@router.get("/spec", responses={200: {"content": {"application/json": {}}}})
def spec(ready: ReadyDep) -> Response:
    """The descriptor spec as canonical JSON (its SHA-256 is spec_hash)."""
    return Response(ready.index.spec.canonical_json(), media_type="application/json")
