"""FastAPI dependencies: the service state and the loaded index, for ``Annotated[..., Depends(...)]``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from retrieval_service.api.state import Ready, ServiceState


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
