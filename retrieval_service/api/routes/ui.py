"""The service's web page: neighbors of uploaded images, a source's own neighbors, and the training jobs.

The page is three static files shipped with the package (``retrieval_service/api/static``); it holds no data
and needs no token: its JavaScript calls ``/v1`` with the bearer token the user types in, and shows
thumbnails through blob URLs (an ``<img src>`` cannot send an Authorization header). The strict CSP below
forbids inline script and foreign origins, so a class name or job name can never run as code.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["ui"])

_ASSETS = {
    "ui.html": "text/html; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the package: revalidate cheaply rather than serve a stale page.
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("retrieval_service.api").joinpath("static", name).read_bytes()


def _answer(name: str) -> Response:
    return Response(_asset(name), media_type=_ASSETS[name], headers=_HEADERS)


@router.get("/ui", responses={200: {"content": {"text/html": {}}}}, response_class=Response)
def ui_page() -> Response:
    """The web page: upload images to see their neighbors, browse sources, follow training jobs."""
    return _answer("ui.html")


@router.get("/ui/ui.js", include_in_schema=False)
def ui_script() -> Response:
    return _answer("ui.js")


@router.get("/ui/ui.css", include_in_schema=False)
def ui_style() -> Response:
    return _answer("ui.css")
