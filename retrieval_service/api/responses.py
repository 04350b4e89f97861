"""OpenAPI ``responses`` entries for the error statuses a route can answer, all with the one error body."""

from __future__ import annotations

from typing import Any

from services.schemas import ErrorBody

ERROR_TEXT = {
    400: "malformed request body (not JSON, not multipart)",
    401: "missing or invalid bearer token (when tokens are configured)",
    404: "unknown source_id or job_id",
    405: "method not allowed on this path (see the Allow header)",
    408: "the request body did not arrive in time",
    413: "request body, image or list over the deployment's limit",
    415: "the body is not sent as application/json (multipart/form-data for uploads)",
    422: "a field is missing, of the wrong type, out of bounds or inconsistent",
    429: "rate limited (also after repeated failed authentication) or search queue full; see Retry-After",
    503: "the index is not loaded (yet); see Retry-After",
}

# What the middleware may answer on any /v1 route, before the route itself runs.
V1_COMMON = (401, 408, 413, 429)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``{status: {"model": ErrorBody, "description": ...}}`` for ``responses=`` of a route or router."""
    return {status: {"model": ErrorBody, "description": ERROR_TEXT[status]} for status in statuses}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI schema's error answers true for every operation, whoever wrote the route.

    FastAPI documents its own 422 body (``HTTPValidationError``); ours is ``ErrorBody``. Every /v1 operation
    may also answer 503 (index not loaded) and, with a request body, 400 (malformed body) and 415 (a body
    of another content type).
    """
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.setdefault("ErrorBody", body)
    components.update(components["ErrorBody"].pop("$defs", {}))
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            wanted = {"422"}
            if path.startswith("/v1/"):
                wanted.add("503")
                if "requestBody" in operation:
                    wanted.update(("400", "415"))
            if "422" not in responses and not operation.get("parameters") and "requestBody" not in operation:
                wanted.discard("422")
            for status in wanted:
                entry = responses.setdefault(status, {"description": ERROR_TEXT[int(status)]})
                entry["content"] = {"application/json": {"schema": ref}}
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema
