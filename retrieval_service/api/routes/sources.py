"""Source images by id: bytes (with ETag), stored descriptors, and many images as one streamed tar."""

from __future__ import annotations

import hashlib
import io
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response, StreamingResponse

from retrieval_service.api.deps import ReadyDep, StateDep
from retrieval_service.api.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from retrieval_service.api.stream import content_type, stream_tar
from retrieval_service.api.thumbnails import (
    THUMBNAIL_MAX,
    THUMBNAIL_MIN,
    ThumbnailsDep,
    if_none_match_hits,
    thumbnail_response,
)
from retrieval_service.index.integrity import SourceChanged, SourceMissing, check_present, read_verified
from services.schemas import ID_LIMIT, DescriptorResponse, ErrorBody, StreamRequest, text_int

router = APIRouter(prefix="/v1/sources", tags=["sources"])

SourceId = Annotated[text_int(ge=0, lt=ID_LIMIT), Path(description="Id of a source image in this index.")]
_NOT_FOUND = {404: {"model": ErrorBody, "description": "no such source_id"}}
_DRIFT = {
    404: {"model": ErrorBody, "description": "no such source_id, or its file is gone (source_missing)"},
    409: {"model": ErrorBody, "description": "its file changed since the build (source_changed)"},
}


def _record(ready, source_id: int):
    record = ready.index.manifest.get(source_id) if source_id < ready.index.size else None
    if record is None:
        raise NotFound(
            f"unknown source_id {source_id}: this index has ids 0..{ready.index.size - 1}",
            {"source_id": source_id},
        )
    return record


def _check_present(root, records) -> None:
    """Before a stream's first byte: 404 naming sources whose files are gone, 409 those of another size."""
    missing, changed = check_present(root, records)
    if missing:
        raise NotFound(
            f"source file(s) missing from the corpus: ids {', '.join(map(str, missing[:20]))}",
            {"missing_source_ids": missing[:1000]},
            code="source_missing",
        )
    if changed:
        raise Conflict(
            f"source file(s) changed since the build: ids {', '.join(map(str, changed[:20]))}",
            {"changed_source_ids": changed[:1000]},
            code="source_changed",
        )


def _verified(ready, record) -> bytes:
    """The source's bytes as built: 404 ``source_missing`` if its file is gone, 409 ``source_changed`` if
    its bytes differ from the manifest's sha256 (never served under the old ETag)."""
    try:
        return read_verified(ready.index.source_root, record)
    except SourceMissing as exc:
        raise NotFound(str(exc), {"source_id": record.source_id}, code="source_missing") from exc
    except SourceChanged as exc:
        raise Conflict(str(exc), {"source_id": record.source_id}, code="source_changed") from exc


@router.get(
    "/{source_id:sid}",  # sid (deps.py): GET /v1/sources/stream is a 405 (POST only), not a bad id
    responses={200: {"content": {"image/*": {}}}, 304: {"description": "not modified"}, **_DRIFT},
)
def source_image(
    source_id: SourceId,
    ready: ReadyDep,
    state: StateDep,
    thumbnails: ThumbnailsDep,
    if_none_match: Annotated[str | None, Header()] = None,
    size: Annotated[
        text_int(ge=THUMBNAIL_MIN, le=THUMBNAIL_MAX) | None,
        Query(
            description="Answer a JPEG thumbnail whose longer side is at most this many pixels.",
        ),
    ] = None,
) -> Response:
    """The source image's bytes (or a JPEG thumbnail with ``size``), with an ETag; If-None-Match gives 304."""
    record = _record(ready, source_id)
    if size is not None:

        def _read() -> bytes:
            return _verified(ready, record)

        max_pixels = state.settings.max_image_pixels
        return thumbnail_response(record.sha256, _read, size, if_none_match, thumbnails, max_pixels)
    # Verified before any answer, a 304 included: a file deleted since the build is a 404 and a changed one a
    # 409 even for a caller holding the manifest's ETag.
    data = _verified(ready, record)
    etag = f'"{record.sha256 or hashlib.sha256(data).hexdigest()}"'
    headers = {"Cache-Control": "public, max-age=86400", "ETag": etag}
    if if_none_match_hits(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type(record.ext), headers=headers)


@router.get("/{source_id:sid}/descriptor", response_model=DescriptorResponse, responses=_NOT_FOUND)
def source_descriptor(source_id: SourceId, ready: ReadyDep) -> DescriptorResponse:
    """The stored histograms of one source image: D rows of B bins."""
    _record(ready, source_id)
    histograms = ready.index.engine.histograms([source_id])[0]  # (D, B)
    return DescriptorResponse(source_id=source_id, spec_hash=ready.spec_hash, descriptor=histograms.tolist())


@router.post(
    "/stream",
    responses={
        200: {"content": {"application/x-tar": {}}},
        **_DRIFT,
        413: {"model": ErrorBody, "description": "too many ids"},
    },
)
def stream_sources(body: StreamRequest, state: StateDep, ready: ReadyDep) -> StreamingResponse:
    """Many source images as one streamed tar of ``<source_id>.<ext>`` members, in request order."""
    limit = state.settings.max_stream_ids
    if len(body.ids) > limit:
        raise PayloadTooLarge(f"{len(body.ids)} ids in one request; the limit is {limit}", {"limit": limit})
    negative = [i for i in body.ids if i < 0]
    if negative:
        raise InvalidRequest(
            f"source ids must be non-negative, got {negative[:20]}", {"invalid_ids": negative[:1000]}
        )
    records = ready.index.manifest.get_many(body.ids)
    unknown = [i for i, r in zip(body.ids, records, strict=True) if r is None]
    # Every id is checked before the first byte goes out: a bad id is a 4xx, never a broken archive.
    if unknown:
        raise NotFound(
            f"unknown source_id {', '.join(map(str, unknown[:20]))}", {"unknown_source_ids": unknown[:1000]}
        )
    root = ready.index.source_root
    _check_present(root, records)
    items = [(r.source_id, r.ext) for r in records]
    by_id = {r.source_id: r for r in records}

    def _open(source_id: int):
        # Hashed per member: a file replaced after the check above aborts the stream (the client raises).
        return io.BytesIO(read_verified(root, by_id[source_id]))

    return StreamingResponse(
        stream_tar(items, _open, state.metrics.streamed.inc),
        media_type="application/x-tar",
        headers={"Content-Disposition": 'attachment; filename="sources.tar"'},
    )
