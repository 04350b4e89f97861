"""k-nearest source images by divergence, for JSON queries or uploaded image files."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import pydantic_core
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from retrieval_service.api.deps import ReadyDep, StateDep
from retrieval_service.api.errors import InvalidRequest, LimitExceeded
from retrieval_service.api.queries import (
    Resolved,
    check_limits,
    check_query_count,
    fill_descriptors,
    image_query,
    resolve_queries,
)
from retrieval_service.api.responses import error_responses
from retrieval_service.api.state import Ready, ServiceState
from services.schemas import (
    K_MAX,
    OFFSET_MAX,
    QUERIES_MAX,
    FormBool,
    Metric,
    NeighborsRequest,
    NeighborsResponse,
    text_int,
)

router = APIRouter(prefix="/v1", tags=["neighbors"])

_ERRORS = error_responses(400, 404, 413, 422, 429, 503)


# The body is parsed by pydantic's JSON parser in a worker thread, not by FastAPI (json.loads on the loop):
# 256 descriptor queries are ~4 MB of JSON, whose parsing dominated the HTTP overhead. Documented here.
_RAW_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NeighborsRequest"}}},
    }
}


@router.post("/neighbors", response_model=NeighborsResponse, responses=_ERRORS, openapi_extra=_RAW_JSON_BODY)
async def neighbors(request: Request, state: StateDep, ready: ReadyDep) -> Response:
    """Nearest source images of each query (image, descriptor or source id), by distance then source_id."""
    started = time.perf_counter()
    raw = await request.body()
    return await run_in_threadpool(_neighbors, raw, state, ready, started)


def _neighbors(raw: bytes, state: ServiceState, ready: Ready, started: float) -> Response:
    body = parse_json_body(NeighborsRequest, raw)
    s = state.settings
    check_limits(body, s.max_queries_per_request, s.max_k_plus_offset)
    spec = ready.index.spec
    resolved = resolve_queries(
        body,
        ready.spec_hash,
        spec.dim,
        spec.bins,
        s.max_image_pixels,
        ready.index.size,
        stored=ready.index.engine.histograms,
    )
    exclude, cap = body.exclude_source_ids, body.max_per_source
    return _answer(state, ready, resolved, body.metric, body.exact, exclude, started, cap)


def parse_json_body(model: type[BaseModel], raw: bytes):
    """``model`` from raw JSON; errors become the same 422 (or 400 for bad JSON) as FastAPI's own parsing."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from exc


def document_models(schema: dict) -> dict:
    """Add the models of raw-parsed bodies to an OpenAPI schema's components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    model_schema = NeighborsRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(model_schema.pop("$defs", {}))
    components["NeighborsRequest"] = model_schema
    return schema


@router.post("/neighbors/upload", response_model=NeighborsResponse, responses=_ERRORS)
def neighbors_upload(
    state: StateDep,
    ready: ReadyDep,
    files: Annotated[
        list[UploadFile], File(min_length=1, description="Image files; each file name is its result id.")
    ],
    k: Annotated[text_int(ge=1, le=K_MAX), Form(description="Neighbors per image.")] = 10,
    offset: Annotated[
        text_int(ge=0, le=OFFSET_MAX), Form(description="Skip this many of the best neighbors.")
    ] = 0,
    metric: Annotated[Metric, Form(description="js or skl.")] = "js",
    exact: Annotated[
        FormBool, Form(description="Full scan instead of the two-stage search (true or false).")
    ] = False,
    # Typed int (not int | None): a form field cannot carry null, so the schema must not offer it.
    max_per_source: Annotated[
        text_int(ge=1, le=QUERIES_MAX), Form(description="A source goes to at most this many files.")
    ] = None,
) -> Response:
    """Nearest source images of each uploaded file (multipart field ``files``); result ids are file names."""
    started = time.perf_counter()
    s = state.settings
    # The same limit, status and message as JSON queries (the multipart parser stops one file past it).
    check_query_count(len(files), s.max_queries_per_request, "files")
    if k + offset > s.max_k_plus_offset:
        raise LimitExceeded(f"k + offset = {k + offset} exceeds the limit {s.max_k_plus_offset}")
    names = [f.filename or f"file{i}" for i, f in enumerate(files)]
    if len(set(names)) != len(names):
        raise InvalidRequest("uploaded file names must be unique: they are the result ids", {"files": names})
    resolved = [
        image_query(name, f.file.read(), k, offset, s.max_image_pixels, f"file {name!r}")
        for name, f in zip(names, files, strict=True)
    ]
    return _answer(state, ready, resolved, metric, exact, [], started, max_per_source)


def _answer(
    state: ServiceState,
    ready: Ready,
    resolved: list[Resolved],
    metric: str,
    exact: bool,
    exclude: list[int],
    started: float,
    max_per_source: int | None = None,
) -> Response:
    size, max_pixels = ready.index.spec.size, state.settings.max_image_pixels

    def _prepare(misses: list[Resolved]) -> None:
        def extract(batch):
            return state.extractor().histograms(batch)

        fill_descriptors(misses, size, max_pixels, extract, state.decode_gate)  # decodes bounded by the gate

    results, cached = ready.searcher.search(resolved, metric, exact, exclude, _prepare, max_per_source)
    labels = ready.index.manifest.all_labels()  # (N,) int32, cached by the manifest
    classes = ready.index.manifest.classes
    out = []
    for q, (dist, ids) in zip(resolved, results, strict=True):
        order = np.lexsort((ids, dist))  # by distance, ties by source_id (the contract)
        dist, ids = dist[order], ids[order]
        neighbors = [
            {"source_id": i, "distance": d, "label": lab, "class_name": classes[lab]}
            for i, d, lab in zip(ids.tolist(), dist.tolist(), labels[ids].tolist(), strict=True)
        ]
        out.append({"id": q.id, "neighbors": neighbors})
    took_ms = (time.perf_counter() - started) * 1000.0
    # Serialised directly (Rust encoder): validating 25,600 Neighbor models would cost more than the search.
    body = {"results": out, "spec_hash": ready.spec_hash, "took_ms": round(took_ms, 3), "cached": cached}
    return Response(pydantic_core.to_json(body), media_type="application/json")
