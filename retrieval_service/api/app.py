"""The app factory: settings, state, middleware, error handlers and routes; the lifespan loads the index."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from retrieval_service.api.deps import document_bearer
from retrieval_service.api.errors import install_error_handlers
from retrieval_service.api.middleware import (
    BodyLimit,
    BodyTimeout,
    Guard,
    JsonBody,
    RequestContext,
    quiet_deliberate_aborts,
)
from retrieval_service.api.responses import V1_COMMON, document_errors, error_responses
from retrieval_service.api.routes import catalog, health, jobs, neighbors, sources, ui
from retrieval_service.api.routes import index as index_routes
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import ServiceState
from retrieval_service.api.thumbnails import ThumbnailCache
from services.schemas import JOB_BODY_MAX


def create_app(settings: Settings | None = None, index=None) -> FastAPI:
    """The app; ``index`` adopts an already loaded LoadedIndex instead of reading ``index_dir``."""
    settings = settings or Settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_loading(index)
        yield
        state.close()

    app = FastAPI(
        title="SJFT retrieval service",
        version="1.0",
        summary="Nearest source images by low-level filter-bank histograms (Selective Joint Fine-Tuning).",
        lifespan=lifespan,
        # One file past the query limit, so the route (not the parser's 400) answers the 413 for it.
        form_limits={"max_files": settings.max_queries_per_request + 1},
    )
    app.state.sjft = state
    app.state.thumbnails = ThumbnailCache()
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(ui.router)  # the page holds no data: open like /healthz
    v1 = [Depends(document_bearer)]
    for module in (index_routes, neighbors, catalog, sources, jobs):
        app.include_router(module.router, dependencies=v1, responses=error_responses(*V1_COMMON))
    generate_openapi = app.openapi
    app.openapi = lambda: app.openapi_schema or document_errors(neighbors.document_models(generate_openapi()))
    # Added last = runs first: request id and metrics wrap everything; then the body deadline, auth (a caller
    # without a token gets its 401 before anything else), the JSON content type, and the body cap, all
    # before the body is parsed.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, path_limits={"/v1/jobs": JOB_BODY_MAX})
    app.add_middleware(
        JsonBody, routes=app.router.routes, multipart_paths=frozenset({"/v1/neighbors/upload"})
    )
    app.add_middleware(Guard, state=state)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestContext, state=state)
    logging.getLogger("retrieval_service").setLevel(settings.log_level.upper())
    quiet_deliberate_aborts()
    return app
