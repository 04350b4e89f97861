"""Wire models of the HTTP API (DESIGN.md section 2, the contract).

Static bounds live here; limits that depend on the deployment (queries per request, k + offset, the index's
descriptor shape) are checked by the service against its settings and index and answered as 413/422.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Metric = Literal["js", "skl"]

# Hard ceilings of the schema itself; deployments configure tighter limits (retrieval_service.api.settings).
K_MAX = 10_000
QUERIES_MAX = 10_000


class Query(BaseModel):
    """One query: exactly one of ``image_b64``, ``descriptor`` (+ ``spec_hash``) or ``source_id``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=512, description="Caller's id, echoed in the result.")
    image_b64: str | None = Field(None, description="Base64 of an image file (JPEG, PNG, ...).")
    descriptor: list[list[float]] | list[float] | None = Field(
        None, description="Histograms computed under the index's spec: D rows of B values (or D*B flat)."
    )
    spec_hash: str | None = Field(
        None, description="spec_hash the descriptor was computed under; required with it."
    )
    source_id: int | None = Field(None, ge=0, description="Use the stored descriptor of this source image.")
    k: int | None = Field(None, ge=1, le=K_MAX, description="Overrides the request's k for this query.")
    offset: int | None = Field(None, ge=0, description="Overrides the request's offset for this query.")

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Query:
        given = [name for name in ("image_b64", "descriptor", "source_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"query {self.id!r} must carry exactly one of image_b64, descriptor, source_id "
                f"(got {given or 'none'})"
            )
        if self.descriptor is not None and not self.spec_hash:
            raise ValueError(f"query {self.id!r}: a descriptor needs the spec_hash it was computed under")
        return self


class NeighborsRequest(BaseModel):
    """k-nearest source images of each query by divergence."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Query] = Field(..., min_length=1, max_length=QUERIES_MAX, description="The queries.")
    k: int = Field(10, ge=1, le=K_MAX, description="Neighbors per query.")
    offset: int = Field(
        0, ge=0, description="Skip this many of the best neighbors (for incremental windows)."
    )
    metric: Metric = Field("js", description="js (weighted Jensen-Shannon) or skl (weighted symmetric KL).")
    exact: bool = Field(False, description="Full scan with the divergence instead of the two-stage search.")
    exclude_source_ids: list[int] = Field(
        default_factory=list, description="Source ids never to return (e.g. already selected)."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> NeighborsRequest:
        ids = [q.id for q in self.queries]
        if len(set(ids)) != len(ids):
            raise ValueError("query ids must be unique within a request")
        if any(s < 0 for s in self.exclude_source_ids):
            raise ValueError("exclude_source_ids must be non-negative")
        return self


class Neighbor(BaseModel):
    source_id: int = Field(..., description="Id of the source image in this index.")
    distance: float = Field(..., description="Divergence to the query (smaller is closer).")
    label: int = Field(..., description="Class index of the source image.")
    class_name: str = Field(..., description="Class name of the source image.")


class QueryResult(BaseModel):
    id: str = Field(..., description="The query's id.")
    neighbors: list[Neighbor] = Field(..., description="Sorted by distance, ties by source_id.")


class NeighborsResponse(BaseModel):
    results: list[QueryResult] = Field(..., description="One entry per query, in request order.")
    spec_hash: str = Field(..., description="spec_hash of the index that answered.")
    took_ms: float = Field(..., description="Server-side time for the whole request.")
    cached: bool = Field(False, description="True when the answer came from the result cache.")


class IndexInfo(BaseModel):
    size: int = Field(..., description="Number of source images in the index.")
    spec_hash: str = Field(..., description="SHA-256 of the canonical spec JSON.")
    bank: str = Field(..., description="Filter bank: gabor or conv.")
    dim: int = Field(..., description="Number of filters D (descriptor rows).")
    bins: int = Field(..., description="Bins per filter B (descriptor columns).")
    classes: list[str] = Field(..., description="Source class names; a neighbor's label indexes this list.")
    metrics: list[str] = Field(..., description="Supported divergences.")
    index_kind: str = Field(..., description="Candidate index: flat or ivf.")
    created: str = Field(..., description="When the index was built (ISO 8601).")
    code_version: str = Field(..., description="Version of the code that built it.")


class DescriptorResponse(BaseModel):
    source_id: int = Field(..., description="The source image.")
    spec_hash: str = Field(..., description="spec_hash of the stored descriptor.")
    descriptor: list[list[float]] = Field(..., description="Stored histograms: D rows of B values.")


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] = Field(
        ..., min_length=1, description="Source ids, streamed as tar members in this order."
    )


JobStatus = Literal["registered", "running", "finished", "failed", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, description="Human-readable job name.")
    target: str | None = Field(
        None, max_length=1000, description="Where the target set lives (informational)."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The trainer's configuration.")


class JobEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["round", "status", "log"] = Field(
        ..., description="round: metrics of a round; status: change."
    )
    round: int | None = Field(None, ge=0, description="Round number for round events.")
    status: JobStatus | None = Field(None, description="New status for status events.")
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Round metrics (accuracy, losses, K stats)."
    )
    message: str | None = Field(None, max_length=10_000, description="Free text.")


class Job(BaseModel):
    job_id: str = Field(..., description="Server-assigned id.")
    name: str
    target: str | None = None
    status: JobStatus
    created: str = Field(..., description="ISO 8601.")
    updated: str = Field(..., description="ISO 8601.")
    rounds: int = Field(0, description="Rounds reported so far.")
    last_metrics: dict[str, Any] = Field(default_factory=dict, description="Metrics of the last round event.")
    events: list[JobEvent] = Field(default_factory=list, description="Reported events, oldest first.")
    config: dict[str, Any] = Field(default_factory=dict)


class JobList(BaseModel):
    jobs: list[Job]


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Stable machine-readable code, e.g. invalid_image.")
    message: str = Field(..., description="What is wrong and what to fix.")
    details: Any = Field(None, description="Field errors or other context.")


class ErrorBody(BaseModel):
    error: ErrorDetail
