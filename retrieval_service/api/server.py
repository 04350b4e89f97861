"""Run the service under uvicorn: ``serve(**overrides)``, what ``python -m retrieval_service serve`` calls."""

from __future__ import annotations

import logging

import uvicorn

from retrieval_service.api.app import create_app
from retrieval_service.api.settings import load_settings


def serve(**overrides) -> None:
    """Serve until interrupted; ``overrides`` (index_dir, host, port, redis_url, ...) beat the environment."""
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("retrieval_service").info(
        "serving %s on %s:%d (redis: %s, auth: %s, rate limit: %s/min)",
        settings.index_dir,
        settings.host,
        settings.port,
        settings.redis_url or "off",
        "on" if settings.tokens else "off",
        settings.rate_limit_per_minute or "off",
    )
    app = create_app(settings)
    # One worker: the index is memory-mapped, so replicas are separate processes sharing the page cache.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        # Idle keep-alive connections are closed; request headers are capped at 64 KiB. A body that stalls is
        # the BodyTimeout middleware's (408).
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=64 * 1024,
    )
