"""Liveness, readiness and Prometheus metrics (open even when tokens are configured)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from retrieval_service.api.deps import StateDep
from services.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the index or Redis)."""
    return {"status": "alive"}


@router.get(
    "/readyz",
    responses={
        200: {"model": Readiness, "description": "the index is loaded (Redis may be degraded)"},
        503: {"model": Readiness, "description": "the index is loading or failed to load; see Retry-After"},
    },
)
def readyz(state: StateDep) -> JSONResponse:
    """200 once the index is loaded (status degraded while a configured Redis is unreachable); 503 before."""
    redis = state.redis.status()  # probes a down Redis at most every redis_retry_s
    state.metrics.redis_up.set(1 if redis == "ok" else 0)
    if state.ready is None:
        reason = state.load_error or "the index is still loading"
        body = {"status": "not_ready", "redis": redis, "reason": reason}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    status = "degraded" if redis == "unavailable" else "ok"
    return JSONResponse({"status": status, "redis": redis, "index_size": state.ready.index.size})


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
def metrics(state: StateDep) -> Response:
    """Prometheus text: requests and latency per route, cache hits/misses, queue depth, index size."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
