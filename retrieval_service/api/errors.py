"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``, mapped in one place.

Core errors (``services.errors``) keep their ``code``; the service adds the HTTP-only ones below. Unknown
errors are logged with a request id and answered as a generic 500 that leaks nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.errors import (
    DescriptorError,
    ImageDecodeError,
    IndexIntegrityError,
    SJFTError,
    SpecMismatchError,
    WeightsError,
)

log = logging.getLogger("retrieval_service")


class APIError(SJFTError):
    """An error answered with ``status``; ``details`` is any JSON-able context for the caller."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if code is not None:
            self.code = code  # a more specific code than the class's, e.g. invalid_base64


class NotFound(APIError):
    status, code = 404, "not_found"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class ImageTooLarge(APIError):
    status, code = 413, "image_too_large"


class Conflict(APIError):
    """The request is fine but the server's state conflicts with it (e.g. a source changed on disk)."""

    status, code = 409, "conflict"


class LimitExceeded(APIError):
    """A value the schema allows but this deployment does not (e.g. k + offset)."""

    status, code = 422, "limit_exceeded"


class InvalidRequest(APIError):
    status, code = 422, "invalid_request"


class Overloaded(APIError):
    status, code = 429, "overloaded"


class NotReady(APIError):
    status, code = 503, "not_ready"


# Core errors are all the caller's mistake once they reach a route (bad bytes, bad descriptor, other spec).
CORE_STATUS: dict[type[SJFTError], int] = {
    ImageDecodeError: 422,
    DescriptorError: 422,
    SpecMismatchError: 422,
    WeightsError: 422,
    IndexIntegrityError: 503,
}


def error_response(status: int, code: str, message: str, details: Any = None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _status_of(exc: SJFTError) -> int:
    if isinstance(exc, APIError):
        return exc.status
    for kind, status in CORE_STATUS.items():
        if isinstance(exc, kind):
            return status
    return 400


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Drop pydantic's "input"/"ctx"/"url": the input may be a megabyte of base64, ctx may hold exceptions.
    return [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "not_ready",
}


def allowed_methods(request: Request) -> str:
    """Every method some route accepts on this path (Starlette names only the first matching route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the one error shape."""

    @app.exception_handler(SJFTError)
    async def _sjft(request: Request, exc: SJFTError) -> JSONResponse:
        details = getattr(exc, "details", None)
        headers = getattr(exc, "headers", None)
        return error_response(_status_of(exc), exc.code, str(exc), details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "the request body is not valid JSON", errors)
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return error_response(422, "validation_error", f"invalid request: {summary}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            # Starlette's multipart parser stopped one file past the limit: the same 413 as the route's.
            limit = request.app.state.sjft.settings.max_queries_per_request
            message = f"more than {limit} files in one request; the limit is {limit}: split the request"
            return error_response(413, "payload_too_large", message, {"files": limit + 1, "limit": limit})
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), None, headers or None)

    @app.exception_handler(json.JSONDecodeError)
    async def _json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, "malformed_json", f"the request body is not valid JSON: {exc.msg}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        log.error(
            "unhandled error in %s %s [request %s]",
            request.method,
            request.url.path,
            request_id,
            exc_info=exc,
        )
        return error_response(
            500,
            "internal_error",
            f"internal error; quote request id {request_id} when reporting it",
            None,
            {"X-Request-ID": request_id},
        )
