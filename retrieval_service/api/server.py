"""Run the service under uvicorn: ``serve(**overrides)``, what ``python -m retrieval_service serve`` calls.

``workers`` > 1 (``--workers N`` / ``SJFT_WORKERS``): N uvicorn worker processes behind one listening socket.
uvicorn starts them from an import string, so each worker builds its own app with ``worker_app()`` from the
environment; ``serve`` first writes its overrides (CLI flags) there. What the workers share: the index files
(memory-mapped read-only: one copy in the page cache, not N; each worker holds only its FAISS candidate index
and the manifest connection) and Redis (result cache, job registry, rate limits: consistent whichever worker
answers). Without Redis each worker keeps its own jobs and limits in memory, so workers > 1 wants Redis.
Every response carries ``X-Worker-Pid``: which worker answered.
"""

from __future__ import annotations

import logging
import os

import uvicorn

from retrieval_service.api.app import create_app
from retrieval_service.api.protocol import HeadTimeoutH11Protocol
from retrieval_service.api.settings import Settings, SettingsError, load_settings

WORKER_APP = "retrieval_service.api.server:worker_app"
_ENV_NAMES = {"redis_url": "REDIS_URL"}  # every other field: SJFT_<FIELD>


class WorkerHeader:
    """ASGI wrapper adding ``X-Worker-Pid`` to every HTTP response (operators and tests see which worker
    answered)."""

    def __init__(self, app):
        self.app = app
        self._pid = str(os.getpid()).encode()

    def __getattr__(self, name):  # app.state, app.openapi, ...: the wrapped app's
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"x-worker-pid", self._pid)]}
            await send(message)

        return await self.app(scope, receive, tagged)


def check_workers(settings: Settings) -> None:
    """Refuse combinations that cannot work as the user expects; ``SettingsError`` says what to change.

    GPU and several workers: a FAISS GPU index lives in one process's GPU memory, so N workers would hold N
    copies of it (and N CUDA contexts). That is refused unless ``gpu_worker_copies`` says it is wanted.
    """
    if settings.workers > 1 and settings.device.startswith("cuda") and not settings.gpu_worker_copies:
        raise SettingsError(
            f"device {settings.device} with {settings.workers} workers would load {settings.workers} "
            "copies of the index onto the GPU: use --workers 1 (one GPU index, requests serialised on it), "
            "or set SJFT_GPU_WORKER_COPIES=1 to accept one copy per worker"
        )


def worker_env(overrides: dict) -> dict[str, str]:
    """The environment variables that carry ``overrides`` (field -> value) to worker processes."""
    env = {}
    for field, value in overrides.items():
        if value is None:
            continue
        name = _ENV_NAMES.get(field, f"SJFT_{field.upper()}")
        env[name] = str(int(value)) if isinstance(value, bool) else str(value)
    return env


def worker_app():
    """The app of one worker process (uvicorn factory): settings from the environment only."""
    settings = load_settings()
    HeadTimeoutH11Protocol.head_timeout_s = settings.header_timeout_s  # this process's connections
    return WorkerHeader(create_app(settings))


def serve(**overrides) -> None:
    """Serve until interrupted; ``overrides`` (index_dir, host, port, redis_url, workers, ...) beat the
    environment."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = load_settings(**overrides)
    check_workers(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("retrieval_service").info(
        "serving %s on %s:%d with %d worker(s) (redis: %s, auth: %s, rate limit: %s/min)",
        settings.index_dir,
        settings.host,
        settings.port,
        settings.workers,
        settings.redis_url or "off",
        "on" if settings.tokens else "off",
        settings.rate_limit_per_minute or "off",
    )
    if settings.workers > 1:
        os.environ.update(worker_env(overrides))  # the workers' only configuration channel
        app, factory = WORKER_APP, True
    else:
        app, factory = WorkerHeader(create_app(settings)), False
    HeadTimeoutH11Protocol.head_timeout_s = settings.header_timeout_s
    uvicorn.run(
        app,
        factory=factory,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        # Idle keep-alive connections are closed; a request head is capped at 64 KiB and must arrive within
        # header_timeout_s (protocol.py). A body that stalls is the BodyTimeout middleware's (408).
        http=HeadTimeoutH11Protocol,
        timeout_keep_alive=settings.keep_alive_s,
        # uvicorn believes X-Forwarded-For from loopback by default, so any local client could pick the
        # address the failed-auth and rate limits count: only configured proxies are believed.
        proxy_headers=bool(settings.trusted_proxies.strip()),
        forwarded_allow_ips=settings.trusted_proxies.strip() or "",
        h11_max_incomplete_event_size=64 * 1024,
    )
