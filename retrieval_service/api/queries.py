"""Wire queries -> descriptors: decode images, check descriptors, look up stored ones; deployment limits.

Every failure names the query it came from. Runs in a worker thread (decoding and extraction are blocking).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval_service.api.decoding import DecodeGate
from retrieval_service.api.errors import (
    ImageTooLarge,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
)
from services.divergence import validate_histograms
from services.errors import DescriptorError, ImageDecodeError, ImageTooLargeError, SpecMismatchError
from services.images import decode_cost, load_image, open_image
from services.schemas import NeighborsRequest, Query


@dataclass
class Resolved:
    """One query ready to search: its window, its descriptor (or image bytes), and a digest for the cache key.

    Image queries are keyed by the digest of their bytes (decoding is deterministic under a spec), so a cache
    hit skips decoding and extraction entirely.
    """

    id: str
    k: int
    offset: int
    descriptor: np.ndarray | None  # (D, B) float32; None for an image not decoded yet (see fill_descriptors)
    digest: str
    image: bytes | None = None  # the encoded image, decoded only when the cache misses


def check_limits(request: NeighborsRequest, max_queries: int, max_window: int) -> None:
    """413 for too many queries, 422 for a k + offset over the deployment's limit (naming the query)."""
    check_query_count(len(request.queries), max_queries)
    for q in request.queries:
        k, offset = window_of(q, request)
        if k + offset > max_window:
            raise LimitExceeded(
                f"query {q.id!r}: k + offset = {k + offset} exceeds the limit {max_window}",
                {"query": q.id, "k": k, "offset": offset, "limit": max_window},
            )


def check_query_count(count: int, max_queries: int, what: str = "queries") -> None:
    """413 when one request carries more than ``max_queries`` queries (JSON queries or uploaded files)."""
    if count > max_queries:
        raise PayloadTooLarge(
            f"{count} {what} in one request; the limit is {max_queries}: split the request",
            {what: count, "limit": max_queries},
        )


def window_of(query: Query, request: NeighborsRequest) -> tuple[int, int]:
    k = query.k if query.k is not None else request.k
    offset = query.offset if query.offset is not None else request.offset
    return k, offset


def check_image_pixels(data: bytes, max_pixels: int, what: str) -> None:
    """Refuse (413) an image whose header declares more than ``max_pixels`` pixels, before anything is
    decoded."""
    try:
        open_image(data, max_pixels).close()
    except ImageTooLargeError as exc:
        raise ImageTooLarge(f"{what}: {exc}", exc.details) from exc
    except ImageDecodeError:
        return  # not an image at all: load_image names that problem


def decode_b64(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{what}: image_b64 is not valid base64 ({exc})", code="invalid_base64") from exc
    if not data:
        raise InvalidRequest(f"{what}: image_b64 is empty", code="invalid_base64")
    return data


def decode_images(
    blobs: Sequence[tuple[str, bytes]], size: int, max_pixels: int, gate: DecodeGate | None = None
) -> np.ndarray:
    """(name, bytes) pairs -> uint8 (N, size, size, 3); errors name the query/file.

    With ``gate``, each decode first waits for a slot and its estimated peak memory (429 when overloaded).
    """
    images = []
    for name, data in blobs:
        check_image_pixels(data, max_pixels, name)
        try:
            if gate is None:
                images.append(load_image(data, size, max_pixels))
                continue
            with gate.admit(decode_cost(data, size, max_pixels), name):
                images.append(load_image(data, size, max_pixels))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{name}: {exc}") from exc
    return np.stack(images) if images else np.empty((0, size, size, 3), dtype=np.uint8)


def descriptor_array(query: Query, spec_hash: str, dim: int, bins: int) -> np.ndarray:
    """A caller's descriptor as (D, B) float64 after the spec and shape checks (values: ``check_values``)."""
    if query.spec_hash != spec_hash:
        raise SpecMismatchError(
            f"query {query.id!r}: descriptor computed under spec {query.spec_hash!r}, this index uses "
            f"{spec_hash!r}; fetch GET /v1/spec and recompute"
        )
    try:
        values = np.asarray(query.descriptor, dtype=np.float64)
    except ValueError as exc:  # ragged rows
        raise DescriptorError(f"query {query.id!r}: descriptor rows have different lengths") from exc
    if values.ndim == 1 and values.size == dim * bins:
        values = values.reshape(dim, bins)
    if values.shape != (dim, bins):
        raise DescriptorError(
            f"query {query.id!r}: descriptor has shape {list(values.shape)}, expected {dim} rows of {bins}"
        )
    return values


def check_values(queries: Sequence[Query], values: np.ndarray, dim: int, bins: int) -> np.ndarray:
    """(n, D, B) float32 after the value checks (finite, non-negative, rows sum to 1), naming a bad query."""
    try:
        return validate_histograms(values, dim, bins)  # one vectorised pass for the whole request
    except DescriptorError:
        for q, h in zip(queries, values, strict=True):  # error path only: find the query to name
            try:
                validate_histograms(h[None], dim, bins)
            except DescriptorError as exc:
                raise DescriptorError(f"query {q.id!r}: {exc}") from exc
        raise


def resolve_queries(
    request: NeighborsRequest,
    spec_hash: str,
    dim: int,
    bins: int,
    max_pixels: int,
    index_size: int,
    stored: Callable[[np.ndarray], np.ndarray],
) -> list[Resolved]:
    """Every query in request order; images are checked (base64, header, pixel count) but not decoded yet.

    ``stored(ids)`` -> (n, D, B) stored histograms of source ids.
    """
    unknown = [q.source_id for q in request.queries if q.source_id is not None and q.source_id >= index_size]
    if unknown:
        raise NotFound(
            f"unknown source_id {', '.join(map(str, unknown[:20]))}: this index has ids 0..{index_size - 1}",
            {"unknown_source_ids": unknown[:1000]},
        )
    rows: dict[str, np.ndarray] = {}
    source_queries = [q for q in request.queries if q.source_id is not None]
    if source_queries:
        ids = np.asarray([q.source_id for q in source_queries], dtype=np.int64)
        for q, h in zip(source_queries, stored(ids), strict=True):  # h: (D, B)
            rows[q.id] = np.ascontiguousarray(h, dtype=np.float32)
    given = [q for q in request.queries if q.descriptor is not None]
    if given:
        arrays = np.stack([descriptor_array(q, spec_hash, dim, bins) for q in given])  # (n, D, B)
        for q, h in zip(given, check_values(given, arrays, dim, bins), strict=True):
            rows[q.id] = h
    out = []
    for q in request.queries:
        k, offset = window_of(q, request)
        if q.source_id is not None:
            out.append(Resolved(q.id, k, offset, rows[q.id], f"src{q.source_id}"))
        elif q.descriptor is not None:
            h = rows[q.id]
            out.append(Resolved(q.id, k, offset, h, "d" + hashlib.sha256(h.tobytes()).hexdigest()))
        else:
            out.append(
                image_query(
                    q.id, decode_b64(q.image_b64, f"query {q.id!r}"), k, offset, max_pixels, f"query {q.id!r}"
                )
            )
    return out


def image_query(qid: str, data: bytes, k: int, offset: int, max_pixels: int, what: str) -> Resolved:
    """A query for encoded image bytes; refuses a decompression bomb from its header alone."""
    check_image_pixels(data, max_pixels, what)
    return Resolved(qid, k, offset, None, "i" + hashlib.sha256(data).hexdigest(), image=data)


def fill_descriptors(
    queries: Sequence[Resolved],
    size: int,
    max_pixels: int,
    extract: Callable[[np.ndarray], np.ndarray],
    gate: DecodeGate | None = None,
) -> None:
    """Decode + extract descriptors of image queries lacking one; ``extract``: (n, S, S, 3) -> (n, D, B)."""
    pending = [q for q in queries if q.descriptor is None]
    if not pending:
        return
    batch = decode_images([(f"query {q.id!r}", q.image) for q in pending], size, max_pixels, gate)
    for q, h in zip(pending, extract(batch), strict=True):
        q.descriptor = np.ascontiguousarray(h, dtype=np.float32)
        q.image = None  # release the encoded bytes early
