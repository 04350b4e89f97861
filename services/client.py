"""Typed HTTP client of the retrieval service (DESIGN.md section 2), used by the trainer.

A small class around ``httpx.Client``: explicit timeouts; retries with exponential backoff ONLY for
connection-level failures, 429 (honouring ``Retry-After``) and 503; every other non-2xx answer raises
``ClientError`` carrying the service's ``{"error": {"code", "message", "details"}}``;
``ServiceUnavailableError`` once retries are spent.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx

from services.errors import SJFTError
from services.schemas import (
    DescriptorResponse,
    IndexInfo,
    Job,
    JobCreate,
    JobEvent,
    JobList,
    JobSummary,
    Metric,
    NeighborsRequest,
    NeighborsResponse,
    Query,
    SampleResponse,
    Sha256Response,
    SourceLabel,
    SourceLabelsResponse,
)

log = logging.getLogger("services.client")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=10.0)
IDS_PER_CALL = 10_000  # source ids per labels / by-sha256 request
RETRY_STATUSES = (429, 503)
# Connection-level failures: the request may not have reached the service; every call here is safe to repeat.
RETRY_EXCEPTIONS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.PoolTimeout,
)


class ClientError(SJFTError):
    """A non-retryable error answer of the service (or an unparseable one)."""

    code = "service_error"

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ServiceUnavailableError(ClientError):
    """The service did not answer (or kept answering 429/503) through every retry."""

    code = "service_unavailable"


def encode_image(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _IterStream:
    """A read()-able file over byte chunks, so tarfile's "r|" mode parses a response as it arrives."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            size = len(self._buf)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out


class RetrievalClient:
    """Client of one retrieval service. Use as a context manager (or call ``close()``)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        batch_size: int = 512,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if retries < 0 or backoff < 0 or max_backoff < 0 or batch_size < 1:
            raise ValueError("retries, backoff and max_backoff must be >= 0 and batch_size >= 1")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    # -- plumbing

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Backoff before retry ``attempt`` (0-based): Retry-After when given, else exponential."""
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        if response is not None and (after := response.headers.get("Retry-After")):
            try:
                delay = float(after)
            except ValueError:
                when = email.utils.parsedate_to_datetime(after)
                delay = max(0.0, when.timestamp() - time.time()) if when else delay
            delay = min(max(delay, 0.0), self.max_backoff)
        return delay

    def _unavailable(self, method: str, path: str, last: str) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            503,
            "service_unavailable",
            f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts ({last}). Start the "
            "service again (or check --service) and rerun the same command with --resume to continue.",
        )

    def _send(self, method: str, path: str, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """One logical request with retries; returns a 2xx response (open, when ``stream``) or raises."""
        last = ""
        for attempt in range(self.retries + 1):
            response = None
            try:
                request = self._http.build_request(method, path, **kwargs)
                response = self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUSES:
                    if response.is_success:
                        return response
                    if stream:
                        response.read()
                    raise _error_of(response)
                last = f"HTTP {response.status_code}"
                response.close()
            if attempt < self.retries:
                wait = self._delay(attempt, response)
                log.warning(
                    "%s %s%s failed (%s), attempt %d/%d; retrying in %.1f s",
                    method, self.base_url, path, last, attempt + 1, self.retries + 1, wait,
                )
                self._sleep(wait)
        raise self._unavailable(method, path, last)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(response.status_code, "invalid_response", f"{path} answered non-JSON") from exc

    # -- routes

    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def ready(self) -> bool:
        """True when /readyz answers 2xx; False otherwise (no retries: readiness is a question)."""
        try:
            response = self._http.get("/readyz")
        except RETRY_EXCEPTIONS:
            return False
        return response.is_success

    def index_info(self) -> IndexInfo:
        return IndexInfo.model_validate(self._json("GET", "/v1/index"))

    def spec(self) -> dict:
        return self._json("GET", "/v1/spec")

    def neighbors(
        self,
        queries: Sequence[Query],
        k: int,
        offset: int = 0,
        metric: Metric = "js",
        exact: bool = False,
        exclude_source_ids: Iterable[int] = (),
        max_per_source: int | None = None,
    ) -> NeighborsResponse:
        """Neighbors of every query, sent in batches of ``batch_size``; results in query order.

        ``max_per_source`` caps how many queries of one request a source is given to; the cap holds per
        request, so with it every query goes in one request (batches would cap each batch on its own).
        """
        if not queries:
            raise ValueError("neighbors() needs at least one query")
        batch_size = len(queries) if max_per_source is not None else self.batch_size
        exclude = list(exclude_source_ids)
        results, spec_hash, took_ms, cached = [], None, 0.0, True
        for start in range(0, len(queries), batch_size):
            body = NeighborsRequest(
                queries=list(queries[start : start + batch_size]),
                k=k,
                offset=offset,
                metric=metric,
                exact=exact,
                exclude_source_ids=exclude,
                max_per_source=max_per_source,
            )
            part = NeighborsResponse.model_validate(
                self._json("POST", "/v1/neighbors", json=body.model_dump(mode="json", exclude_none=True))
            )
            if spec_hash is not None and part.spec_hash != spec_hash:
                raise ClientError(409, "spec_changed", "the service's index changed between batches; retry")
            spec_hash = part.spec_hash
            results.extend(part.results)
            took_ms += part.took_ms
            cached = cached and part.cached
        return NeighborsResponse(results=results, spec_hash=spec_hash, took_ms=took_ms, cached=cached)

    def neighbors_upload(
        self, files: Sequence[tuple[str, bytes]], k: int, offset: int = 0, metric: Metric = "js"
    ) -> NeighborsResponse:
        """Neighbors of raw image files (multipart); result ids are the file names."""
        multipart = [("files", (name, data, "application/octet-stream")) for name, data in files]
        data = {"k": str(k), "offset": str(offset), "metric": metric}
        return NeighborsResponse.model_validate(
            self._json("POST", "/v1/neighbors/upload", files=multipart, data=data)
        )

    def source(self, source_id: int) -> bytes:
        return self._send("GET", f"/v1/sources/{int(source_id)}").content

    def thumbnail(self, source_id: int, size: int = 128) -> bytes:
        """A JPEG of the source image whose longer side is at most ``size`` px (16..1024)."""
        return self._send("GET", f"/v1/sources/{int(source_id)}", params={"size": int(size)}).content

    def descriptor(self, source_id: int) -> DescriptorResponse:
        body = self._json("GET", f"/v1/sources/{int(source_id)}/descriptor")
        return DescriptorResponse.model_validate(body)

    def stream_sources(self, ids: Sequence[int]) -> Iterator[tuple[int, str, bytes]]:
        """(source_id, extension, bytes) of each id, in request order, parsed from the tar as it streams in.

        The request is retried as usual; a connection lost mid-stream raises ``ServiceUnavailableError``
        after the members already yielded, so a caller can retry just the rest.
        """
        ids = [int(i) for i in ids]
        response = self._send("POST", "/v1/sources/stream", stream=True, json={"ids": ids})
        received = 0
        try:
            with tarfile.open(fileobj=_IterStream(response.iter_bytes()), mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    stem, _, ext = member.name.rpartition("/")[2].partition(".")
                    handle = tar.extractfile(member)
                    yield int(stem), ext, handle.read() if handle else b""
                    received += 1
        except (httpx.TransportError, tarfile.ReadError) as exc:
            raise ServiceUnavailableError(503, "stream_broken", f"source stream broke: {exc}") from exc
        finally:
            response.close()
        if received != len(ids):  # tar tolerates a missing trailer: a short archive must not pass as whole
            raise ServiceUnavailableError(
                503, "stream_broken", f"source stream ended after {received} of {len(ids)} images"
            )

    def source_labels(self, ids: Sequence[int]) -> list[SourceLabel]:
        """Label and class name of each id, in order (requests of ``IDS_PER_CALL`` ids); an unknown id
        raises ``ServiceError`` 404 whose ``details["unknown_source_ids"]`` names it."""
        ids = [int(i) for i in ids]
        labels: list[SourceLabel] = []
        for start in range(0, len(ids), IDS_PER_CALL):
            body = self._json("POST", "/v1/sources/labels", json={"ids": ids[start : start + IDS_PER_CALL]})
            labels.extend(SourceLabelsResponse.model_validate(body).labels)
        return labels

    def sample_sources(self, n: int, seed: int, exclude: Sequence[int] = ()) -> list[int]:
        """``n`` distinct source ids drawn uniformly from the index minus ``exclude``; the same per seed."""
        body = {"n": int(n), "seed": int(seed), "exclude": [int(i) for i in exclude]}
        return SampleResponse.model_validate(self._json("POST", "/v1/sources/sample", json=body)).ids

    def sources_by_sha256(self, hashes: Iterable[str]) -> dict[str, list[int]]:
        """Source ids whose file bytes have each SHA-256 (hex); hashes not in the index are left out."""
        wanted = sorted({h.lower() for h in hashes})
        matches: dict[str, list[int]] = {}
        for start in range(0, len(wanted), IDS_PER_CALL):
            chunk = wanted[start : start + IDS_PER_CALL]
            body = self._json("POST", "/v1/sources/by-sha256", json={"sha256": chunk})
            matches.update(Sha256Response.model_validate(body).matches)
        return matches

    def create_job(self, job: JobCreate) -> Job:
        return Job.model_validate(self._json("POST", "/v1/jobs", json=job.model_dump(mode="json")))

    def job_event(self, job_id: str, event: JobEvent) -> Any:
        body = event.model_dump(mode="json", exclude_none=True)
        return self._json("POST", f"/v1/jobs/{job_id}/events", json=body)

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self) -> list[JobSummary]:
        body = self._json("GET", "/v1/jobs")
        return JobList.model_validate(body if isinstance(body, dict) else {"jobs": body}).jobs


def _error_of(response: httpx.Response) -> ClientError:
    """The service's error body as a ClientError; a body of another shape keeps its first 300 characters."""
    try:
        body = response.json()
        err = body["error"]
        return ClientError(response.status_code, str(err["code"]), str(err["message"]), err.get("details"))
    except (ValueError, KeyError, TypeError):
        return ClientError(response.status_code, f"http_{response.status_code}", response.text[:300])
