"""Wire models of the HTTP API (DESIGN.md section 2, the contract).

Static bounds live here; limits that depend on the deployment (queries per request, k + offset, the index's
descriptor shape) are checked by the service against its settings and index and answered as 413/422.
"""

from __future__ import annotations

import json
import operator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

Metric = Literal["js", "skl"]

# Hard ceilings of the schema itself; deployments configure tighter limits (retrieval_service.api.settings).
K_MAX = 10_000
QUERIES_MAX = 10_000
# Every id and count on the wire is below 2**53: exact in a JavaScript number (and far from int64 overflow in
# the cache digests and SQLite, which a 2**63 id used to hit).
ID_LIMIT = 2**53
OFFSET_MAX = 1_000_000
IDS_MAX = 1_000_000  # ids in one labels / sample / exclusion list
HASHES_MAX = 100_000
# Job records are small by design: a job registers a config and reports a metrics row per round, so every
# field is bounded (a 60 MB config or a round with 10**6 source ids used to be stored and listed).
JOB_BODY_MAX = 256 * 1024  # bytes of a /v1/jobs request body -> 413 beyond, before it is read
JOB_CONFIG_MAX = 16 * 1024  # bytes of a job's config as compact JSON
JOB_METRICS_MAX = 8 * 1024  # bytes of one event's metrics as compact JSON (48 source ids take ~350)
JOB_JSON_DEPTH = 8  # nesting of config and metrics values
JOB_MESSAGE_MAX = 10_000


def _strict_int(value: Any) -> Any:
    """Integers only: ``true``/``false``, ``"3"`` and ``3.5`` are refused. ``3.0`` is an integer in JSON
    Schema (and to JavaScript), so it is accepted as 3; numpy integers are accepted too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or isinstance(value, str | bytes | float):
        raise ValueError("must be an integer (not a boolean, string or fraction)")
    if isinstance(value, int):
        return value
    try:
        return operator.index(value)  # numpy integer types
    except TypeError:
        return value  # let the int validator name the problem


def wire_int(**bounds: int) -> Any:
    """An integer type with JSON-schema bounds (``ge``, ``lt``, ...) that refuses booleans and strings."""
    # The bounds go inside, before the validator: outside it pydantic cannot put them in the JSON schema.
    return Annotated[int, Field(**bounds), BeforeValidator(_strict_int)]


def _decimal_text(value: Any) -> Any:
    """Path, query and form integers: plain decimal digits only. Python's ``int()`` also reads ``"1_0"`` as
    10, ``"+1"`` and ``" 1"`` as 1, so ``/v1/sources/1_0`` used to serve source 10."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 20):
            raise ValueError("must be a non-negative decimal integer (digits only)")
        return int(value)
    return value


def _form_bool(value: Any) -> Any:
    """Form booleans: ``true`` or ``false`` only (pydantic would also read yes/on/1 as true)."""
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("must be true or false")
        return value == "true"
    return value


def text_int(**bounds: int) -> Any:
    """An integer path/query/form parameter of plain digits, with JSON-schema bounds (``ge``, ``le``, ...).

    The bounds go inside, next to the validator: given to ``Query(...)`` around it they reached the OpenAPI
    as raw ``ge``/``le`` keys instead of ``minimum``/``maximum``."""
    return Annotated[int, Field(**bounds), BeforeValidator(_decimal_text)]


# For FastAPI parameters; JSON bodies use wire_int and StrictBool.
FormBool = Annotated[bool, BeforeValidator(_form_bool)]
SourceId = wire_int(ge=0, lt=ID_LIMIT)
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256.")]
_QUERY_KINDS = (("image_b64",), ("descriptor", "spec_hash"), ("source_id",))
_OPTIONAL = ("image_b64", "descriptor", "spec_hash", "source_id", "k", "offset")


def _query_schema(schema: dict[str, Any]) -> None:
    """OpenAPI of a query: the optional fields are not nullable, and exactly one of the three shapes holds."""
    for name in _OPTIONAL:
        prop = schema["properties"][name]
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            prop.update(options[0])
        elif options:
            prop["anyOf"] = options
        prop.pop("default", None)
    schema["oneOf"] = [{"title": "+".join(kind), "required": list(kind)} for kind in _QUERY_KINDS]


class Query(BaseModel):
    """One query: exactly one of ``image_b64``, ``descriptor`` (+ ``spec_hash``) or ``source_id``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_query_schema)

    id: str = Field(..., min_length=1, max_length=512, description="Caller's id, echoed in the result.")
    image_b64: str | None = Field(None, description="Base64 of an image file (JPEG, PNG, ...).")
    descriptor: list[list[float]] | list[float] | None = Field(
        None, description="Histograms computed under the index's spec: D rows of B values (or D*B flat)."
    )
    spec_hash: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="spec_hash the descriptor was computed under; required with it.",
    )
    source_id: SourceId | None = Field(None, description="Use the stored descriptor of this source image.")
    k: wire_int(ge=1, le=K_MAX) | None = Field(None, description="Overrides the request's k for this query.")
    offset: wire_int(ge=0, le=OFFSET_MAX) | None = Field(
        None, description="Overrides the request's offset for this query."
    )

    @field_validator(*_OPTIONAL, mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        # On the wire an unused field is left out; an explicit null is refused, as the OpenAPI schema says.
        if value is None and info.mode == "json":
            raise ValueError("leave the field out instead of sending null")
        return value

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
    k: wire_int(ge=1, le=K_MAX) = Field(10, description="Neighbors per query.")
    offset: wire_int(ge=0, le=OFFSET_MAX) = Field(
        0, description="Skip this many of the best neighbors (for incremental windows)."
    )
    metric: Metric = Field("js", description="js (weighted Jensen-Shannon) or skl (weighted symmetric KL).")
    exact: StrictBool = Field(
        False, description="Full scan with the divergence instead of the two-stage search (true or false)."
    )
    exclude_source_ids: list[SourceId] = Field(
        default_factory=list,
        max_length=IDS_MAX,
        description="Source ids never to return (e.g. already selected).",
    )
    max_per_source: wire_int(ge=1, le=QUERIES_MAX) | None = Field(
        None,
        description="A source is returned to at most this many queries of the request; its place goes to "
        "the query's next candidate (DESIGN.md, HTTP API).",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> NeighborsRequest:
        ids = [q.id for q in self.queries]
        if len(set(ids)) != len(ids):
            raise ValueError("query ids must be unique within a request")
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
    capabilities: list[str] = Field(
        default_factory=list,
        description="Optional features this service offers, e.g. max_per_source, sources.labels.",
    )


class DescriptorResponse(BaseModel):
    source_id: int = Field(..., description="The source image.")
    spec_hash: str = Field(..., description="spec_hash of the stored descriptor.")
    descriptor: list[list[float]] = Field(..., description="Stored histograms: D rows of B values.")


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[SourceId] = Field(
        ..., min_length=1, max_length=IDS_MAX, description="Source ids, streamed as tar members in order."
    )


class SourceIdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[SourceId] = Field(..., min_length=1, max_length=IDS_MAX, description="Source ids.")


class SourceLabel(BaseModel):
    source_id: int = Field(..., description="The source image.")
    label: int = Field(..., description="Class index; indexes GET /v1/index classes.")
    class_name: str = Field(..., description="Class name.")


class SourceLabelsResponse(BaseModel):
    labels: list[SourceLabel] = Field(..., description="One entry per requested id, in request order.")


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: wire_int(ge=1, le=IDS_MAX) = Field(..., description="How many distinct source ids to draw.")
    seed: wire_int(ge=0, lt=ID_LIMIT) = Field(..., description="Same seed + same index = same ids.")
    exclude: list[SourceId] = Field(
        default_factory=list, max_length=IDS_MAX, description="Source ids never drawn."
    )


class SampleResponse(BaseModel):
    ids: list[int] = Field(..., description="Distinct source ids, uniformly drawn, in draw order.")


class Sha256Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: list[Sha256Hex] = Field(
        ..., min_length=1, max_length=HASHES_MAX, description="SHA-256 of image files (lower-case hex)."
    )


class Sha256Response(BaseModel):
    matches: dict[str, list[int]] = Field(
        ..., description="Each requested hash found in the index -> the source ids whose bytes have it."
    )


JobStatus = Literal["registered", "running", "finished", "failed", "cancelled"]


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counted only up to ``limit + 1`` (never recurses deeper)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth


def bounded_json(name: str, max_bytes: int, max_depth: int = JOB_JSON_DEPTH):
    """A validator for a JSON object field: at most ``max_bytes`` as compact JSON, ``max_depth`` deep."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if _json_depth(value, max_depth) > max_depth:
            raise ValueError(f"{name} is nested more than {max_depth} levels deep")
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > max_bytes:
            raise ValueError(f"{name} is {size:,} bytes as JSON; at most {max_bytes:,} are kept")
        return value

    return AfterValidator(check)


JobConfig = Annotated[dict[str, Any], bounded_json("config", JOB_CONFIG_MAX)]
JobMetrics = Annotated[dict[str, Any], bounded_json("metrics", JOB_METRICS_MAX)]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, description="Human-readable job name.")
    target: str | None = Field(
        None, max_length=1000, description="Where the target set lives (informational)."
    )
    config: JobConfig = Field(
        default_factory=dict,
        description=f"The trainer's configuration (at most {JOB_CONFIG_MAX:,} bytes as JSON, "
        f"{JOB_JSON_DEPTH} levels deep).",
    )


class JobEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["round", "status", "log"] = Field(
        ..., description="round: metrics of a round; status: change."
    )
    round: wire_int(ge=0, lt=ID_LIMIT) | None = Field(None, description="Round number for round events.")
    status: JobStatus | None = Field(None, description="New status for status events.")
    metrics: JobMetrics = Field(
        default_factory=dict,
        description="Round metrics (accuracy, losses, K stats, a few source ids; at most "
        f"{JOB_METRICS_MAX:,} bytes as JSON).",
    )
    message: str | None = Field(None, max_length=JOB_MESSAGE_MAX, description="Free text.")


class JobSummary(BaseModel):
    """A job as listed: everything but its events (``GET /v1/jobs/{job_id}`` has those)."""

    job_id: str = Field(..., description="Server-assigned id.")
    name: str
    target: str | None = None
    status: JobStatus
    created: str = Field(..., description="ISO 8601.")
    updated: str = Field(..., description="ISO 8601.")
    rounds: int = Field(0, description="Rounds reported so far.")
    last_metrics: dict[str, Any] = Field(default_factory=dict, description="Metrics of the last round event.")
    config: dict[str, Any] = Field(default_factory=dict)


class Job(JobSummary):
    """A job with its events, oldest first (the most recent ones: the service keeps a bounded number)."""

    events: list[JobEvent] = Field(default_factory=list, description="Reported events, oldest first.")


class JobList(BaseModel):
    jobs: list[JobSummary] = Field(..., description="Most recently created first; events left out.")


class Readiness(BaseModel):
    """``GET /readyz``: 200 with ``index_size`` once the index is loaded, 503 with ``reason`` before."""

    status: Literal["ok", "degraded", "not_ready"] = Field(..., description="degraded: Redis unreachable.")
    redis: str = Field(..., description="ok, unavailable, or disabled (no Redis configured).")
    index_size: int | None = Field(None, description="Source images in the loaded index (when ready).")
    reason: str | None = Field(None, description="Why the index is not ready (when not ready).")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Stable machine-readable code, e.g. invalid_image.")
    message: str = Field(..., description="What is wrong and what to fix.")
    details: Any = Field(None, description="Field errors or other context.")


class ErrorBody(BaseModel):
    error: ErrorDetail
