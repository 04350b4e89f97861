"""JPEG thumbnails of source images (``GET /v1/sources/{source_id}?size=N``) and an in-process LRU of them.

A thumbnail is a function of the source's bytes and ``size`` only, so it is named by both: the ETag is
``"<sha256>.t<size>.v<THUMBNAIL_VERSION>"`` (bump the version when the encoding below changes, so browsers
drop thumbnails of the old encoding) and the LRU is keyed by the same string.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import ImageDecodeError
from services.images import open_image

THUMBNAIL_MIN = 16
THUMBNAIL_MAX = 1024
THUMBNAIL_VERSION = 1
JPEG_QUALITY = 85
CACHE_BYTES = 32 * 1024 * 1024  # ~10,000 thumbnails of 128 px: a page of neighbors stays warm


def thumbnail_etag(sha256: str, size: int) -> str:
    return f'"{sha256}.t{size}.v{THUMBNAIL_VERSION}"'


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """JPEG whose longer side is ``min(size, the image's)`` px (never upscaled), as viewers show the image.

    EXIF orientation is applied and transparency is composited on white (as descriptors see it). Raises
    ``ImageDecodeError`` for bytes PIL cannot decode or with more than ``max_pixels`` pixels (checked from the
    header, before decoding).
    """
    img = open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.draft(img.mode, (size, size))  # JPEG: let libjpeg downscale by 1/2..1/8 while decoding
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            img = _rgb_on_white(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"source image cannot be decoded for a thumbnail: {exc}") from exc
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def _rgb_on_white(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


class ThumbnailCache:
    """Thread-safe LRU of encoded thumbnails, bounded by their total bytes (routes run in a thread pool)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted)


def if_none_match_hits(if_none_match: str | None, etag: str) -> bool:
    """True when an If-None-Match header names ``etag`` (weak comparison) or is ``*`` (RFC 9110 13.1.2: any
    current representation): the caller's copy is current. Call it only once the source is known present and
    unchanged, so a deleted or changed file is a 404/409, never a 304."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return etag in tags or "*" in tags


def thumbnail_response(
    sha256: str | None,
    read: Callable[[], bytes],
    size: int,
    if_none_match: str | None,
    cache: ThumbnailCache,
    max_pixels: int,
) -> Response:
    """The thumbnail answer of one source: 304 when the caller's ETag is current, else the cached or new JPEG.

    ``read`` returns the source's bytes checked against the manifest (it raises for a file gone or changed).
    It is called before every answer, a 304 or a cached thumbnail included: the ETag names the bytes the
    index was built from, so a source changed on disk (even at the same size) must not keep its thumbnail.
    """
    data = read()
    if not sha256:
        sha256 = hashlib.sha256(data).hexdigest()
    etag = thumbnail_etag(sha256, size)
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
    if if_none_match_hits(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    thumb = cache.get(etag)
    if thumb is None:
        thumb = make_thumbnail(data, size, max_pixels)
        cache.put(etag, thumb)
    return Response(thumb, media_type="image/jpeg", headers=headers)


def get_thumbnails(request: Request) -> ThumbnailCache:
    """The app's thumbnail LRU (created with the app: ``app.state.thumbnails``)."""
    return request.app.state.thumbnails


ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]
