"""FastAPI dependencies: the service state and the loaded index, for ``Annotated[..., Depends(...)]``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.convertors import StringConvertor, register_url_convertor

from retrieval_service.api.state import Ready, ServiceState


class SourceIdSegment(StringConvertor):
    """``{source_id:sid}``: any path segment except the names of the fixed routes beside it.

    ``GET /v1/sources/stream`` then matches no GET route and is a 405 (Allow: POST), while ``/v1/sources/abc``
    still reaches the route and is a 422 naming ``source_id`` (an ``int`` convertor would make it a 404).
    """

    regex = r"(?!(?:stream|labels|sample|by-sha256)(?:/|$))[^/]+"


register_url_convertor("sid", SourceIdSegment())


def get_state(request: Request) -> ServiceState:
    return request.app.state.sjft


def get_ready(state: Annotated[ServiceState, Depends(get_state)]) -> Ready:
    """The loaded index; 503 not_ready while it loads or when it failed to load."""
    return state.require_ready()


# Auth is enforced by middleware (before the body is parsed); this only documents the scheme in OpenAPI.
_bearer = HTTPBearer(auto_error=False, description="Required on /v1/* when SJFT_API_TOKENS is set.")


def document_bearer(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    return None


StateDep = Annotated[ServiceState, Depends(get_state)]
ReadyDep = Annotated[Ready, Depends(get_ready)]
