"""Pure ASGI middleware: request id + metrics, body deadline, body-size cap, and the /v1 guard (bearer auth,
rate limits).

They run before FastAPI parses anything, so an unauthenticated or oversized request is refused without its
body being read or validated (a malformed body from a caller without a token is a 401, not a 400).
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import time
import uuid
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval_service.api.state import ServiceState
from retrieval_service.api.stream import StreamAborted
from retrieval_service.shared_state.ratelimit import RateLimiter

log = logging.getLogger("retrieval_service")
CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer": never counted as a 500
# Set (in the request's own task) when a response was aborted on purpose, so uvicorn's complaint about the
# incomplete response, logged in that same task right after, is not a second error for one known event.
_aborted = contextvars.ContextVar("sjft_response_aborted", default=False)
_INCOMPLETE = "ASGI callable returned without completing response."


class AbortedResponseFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" for a response aborted on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_aborted.get() and record.getMessage() == _INCOMPLETE)


def quiet_deliberate_aborts() -> None:
    """Install ``AbortedResponseFilter`` on uvicorn's error logger (once per process)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, AbortedResponseFilter) for f in logger.filters):
        logger.addFilter(AbortedResponseFilter())


def _error_messages(status: int, code: str, message: str, details=None, headers=None) -> list[Message]:
    body = json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return [
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": body},
    ]


async def _send_error(send: Send, *args, **kwargs) -> None:
    for message in _error_messages(*args, **kwargs):
        await send(message)


class RequestContext:
    """Assigns a request id (echoed as X-Request-ID) and records count + latency per route template."""

    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        gone = completed = False

        async def _receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def _send(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self.app(scope, _receive, _send)
        except ClientDisconnect:
            gone = True  # the client left while its body was read: nobody to answer, nothing to log
        except StreamAborted:
            # Logged where it happened; returning without the final chunk makes uvicorn drop the connection.
            _aborted.set(True)
        except Exception:
            if not gone:
                raise
            log.info(
                "client left %s %s before the answer [request %s]", scope["method"], scope["path"], request_id
            )
        finally:
            route = scope.get("route")
            # Route templates, never raw paths: unmatched paths must not grow the label set without bound.
            name = getattr(route, "path", None) or "unmatched"
            if gone and not completed:  # a client leaving after a whole answer (a 413 it read) is no 499
                status = CLIENT_CLOSED
            self.state.metrics.observe(scope["method"], name, status, time.perf_counter() - started)
            self.state.metrics.redis_up.set(1 if self.state.redis.status_cached() == "ok" else 0)


class BodyTimeout:
    """408 when the request body has not fully arrived ``timeout_s`` after the request started.

    uvicorn bounds idle keep-alive connections but not a body that never comes (a large Content-Length, then
    silence, or a trickle): without this a stalled client holds a worker's request forever.
    """

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = timed_out = started = False

        async def _receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # waiting for a disconnect after the body is not a stall
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def _send(message: Message) -> None:
            nonlocal started
            # Whatever the app answers to the cut-short body is replaced by the 408, unless it had already
            # begun answering (BodyLimit's 413 goes out before it drains the body): that answer is finished.
            if started or not timed_out:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, _receive, _send)
        except Exception:
            if not timed_out:
                raise
        if timed_out and not started:
            message = f"the request body did not arrive within {self.timeout_s:g} s"
            await _send_error(
                send,
                408,
                "request_timeout",
                message,
                {"timeout_s": self.timeout_s},
                headers={"Connection": "close"},
            )


class BodyLimit:
    """413 when Content-Length or the bytes actually received exceed the limit: ``max_bytes``, or a smaller
    one for the paths in ``path_limits`` (prefix -> bytes; job records are small by design)."""

    DRAIN_BYTES = (
        16 * 1024 * 1024
    )  # read (and drop) at most this much more, so the 413 is not lost to a reset

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None):
        self.app, self.max_bytes = app, max_bytes
        self.path_limits = path_limits or {}

    def limit_of(self, path: str) -> int:
        limits = [v for prefix, v in self.path_limits.items() if path.startswith(prefix)]
        return min([self.max_bytes, *limits])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            message = f"request body of {int(declared):,} bytes exceeds the limit of {limit:,} bytes"
            await _refuse_declared(send, receive, message, limit, headers, self.DRAIN_BYTES)
            return
        received = 0
        more_body = True
        refused = False

        async def _receive() -> Message:
            nonlocal received, more_body, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more_body = message.get("more_body", False)
                if received > limit:
                    # Chunked bodies have no Content-Length: stop the app reading; the 413 is sent below.
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def _send(message: Message) -> None:
            if not refused:  # whatever the app answers to a body cut short is replaced by the 413
                await send(message)

        try:
            await self.app(scope, _receive, _send)
        except Exception:
            if not refused:
                raise
        if refused:
            await _drain(receive, more_body, self.DRAIN_BYTES)
            message = f"request body exceeds the limit of {limit:,} bytes"
            await _send_error(send, 413, "payload_too_large", message, {"limit": limit})


async def _refuse_declared(
    send: Send, receive: Receive, message: str, limit: int, headers: dict, drain: int
) -> None:
    """413 for a body declared too large, answered at once (before any of the body arrives), then drained.

    The whole answer goes out first (Content-Length, Connection: close) and only the final empty chunk waits
    for the drain: a client that declared a terabyte and sends nothing has its 413 at once instead of after
    the body deadline, and one that is sending gets the answer without a reset (closing with unread input
    makes TCP reset the reply). A client waiting for ``100 Continue`` has sent nothing: no drain.
    """
    close = {"Connection": "close"}
    start, body = _error_messages(413, "payload_too_large", message, {"limit": limit}, close)
    await send(start)
    await send({**body, "more_body": True})
    if headers.get(b"expect", b"").lower() != b"100-continue":
        await _drain(receive, True, drain)
    await send({"type": "http.response.body", "body": b""})


async def _drain(receive: Receive, more_body: bool, max_bytes: int) -> None:
    """Read what the client still sends (bounded): closing with unread input makes TCP reset the reply."""
    drained = 0
    while more_body and drained < max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        more_body = message.get("more_body", False)


class JsonBody:
    """415 for a /v1 request body that is not declared JSON (``application/json`` or ``*/*+json``).

    FastAPI would read such a body as bytes and answer a puzzling 422; worse, a body sent as ``text/plain``
    or a form is what a cross-origin page can send without a CORS preflight. The multipart routes
    (``multipart_paths``) take ``multipart/form-data`` instead.
    """

    METHODS = frozenset({"POST", "PUT", "PATCH"})

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], multipart_paths: frozenset[str] = frozenset()
    ):
        self.app, self.routes, self.multipart_paths = app, routes, multipart_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in self.METHODS or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if not any(route.matches(scope)[0] is Match.FULL for route in self.routes):
            await self.app(scope, receive, send)  # no such route for this method: the router's 404 / 405
            return
        raw = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        media = raw.split(";", 1)[0].strip().lower()
        multipart = scope["path"] in self.multipart_paths
        wanted = "multipart/form-data" if multipart else "application/json"
        json_suffix = not multipart and media.startswith("application/") and media.endswith("+json")
        # A url-encoded form is still a form: the route then names what it lacks (files) with a 422.
        plain_form = multipart and media == "application/x-www-form-urlencoded"
        if media == wanted or json_suffix or plain_form:
            await self.app(scope, receive, send)
            return
        message = f"send the body as Content-Type: {wanted} (got {raw[:100] or 'no content type'})"
        await _send_error(send, 415, "unsupported_media_type", message, {"expected": wanted})


class Guard:
    """On /v1/*: bearer-token auth when tokens are configured, then the per-caller rate limit."""

    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state
        self.tokens = [t.encode() for t in state.settings.tokens]
        # Failed authentications per client address: Redis-shared like the request limit, counted in memory
        # while Redis is down.
        s = state.settings
        self.auth_failures = RateLimiter(
            state.redis, f"{s.redis_prefix}:authfail", s.auth_failures_per_minute
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        caller = None
        if self.tokens:
            caller = self._token(scope)
            if caller is None:
                address = (scope.get("client") or ("unknown", 0))[0]
                wait = await run_in_threadpool(self.auth_failures.check, f"ip:{address}")
                if wait:
                    limit = self.auth_failures.per_minute
                    await _send_error(
                        send,
                        429,
                        "rate_limited",
                        f"more than {limit} failed authentications per minute from {address}; "
                        f"retry in {wait} s",
                        {"auth_failures_per_minute": limit, "retry_after_s": wait},
                        headers={"Retry-After": str(wait)},
                    )
                    return
                await _send_error(
                    send,
                    401,
                    "unauthorized",
                    "missing or invalid bearer token: send 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": 'Bearer realm="sjft"'},
                )
                return
        if self.state.limiter.enabled:
            who = f"token:{caller}" if caller else f"ip:{(scope.get('client') or ('unknown', 0))[0]}"
            wait = await run_in_threadpool(self.state.limiter.check, who)
            if wait:
                limit = self.state.limiter.per_minute
                await _send_error(
                    send,
                    429,
                    "rate_limited",
                    f"rate limit of {limit} requests per minute reached; retry in {wait} s",
                    {"limit_per_minute": limit, "retry_after_s": wait},
                    headers={"Retry-After": str(wait)},
                )
                return
        await self.app(scope, receive, send)

    def _token(self, scope: Scope) -> str | None:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        token = token.strip()
        # Compare against every token in constant time: timing must not reveal a prefix match.
        matched = [t for t in self.tokens if hmac.compare_digest(t, token)]
        return matched[0].decode() if matched else None
