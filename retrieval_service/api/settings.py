"""The service's one configuration object: environment variables (documented names) plus explicit overrides.

Nothing else in the service reads the environment. ``Settings(**overrides)`` gives keyword overrides priority
over the environment (what ``serve(**overrides)`` and the CLI flags use). Variable names: ``SJFT_<FIELD>``
upper-cased (``SJFT_INDEX_DIR``, ``SJFT_API_TOKENS``, ``SJFT_RATE_LIMIT_PER_MINUTE``, ...) except
``REDIS_URL``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import SJFTError


class SettingsError(SJFTError):
    """A setting (flag or environment variable) has a value the service cannot use; the message names it."""

    code = "invalid_setting"


def load_settings(**overrides) -> Settings:
    """``Settings(**overrides)``; an invalid value raises ``SettingsError`` with one line per bad field."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise SettingsError("invalid setting " + "; ".join(problems)) from None


class Settings(BaseSettings):
    """Retrieval service configuration; env names are the contract used by docker-compose."""

    # Every variable is SJFT_<FIELD> except REDIS_URL (the usual name); keyword overrides use field names.
    model_config = SettingsConfigDict(env_prefix="SJFT_", extra="forbid", case_sensitive=False)

    index_dir: Path | None = Field(None, description="Index directory to serve (required).")
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="Bind port.")
    redis_url: str = Field(
        "",
        validation_alias=AliasChoices("redis_url", "REDIS_URL"),
        description="Redis URL; empty = run without Redis.",
    )
    redis_prefix: str = Field(
        "sjft",
        description="Prefix of every Redis key, so several deployments (or tests) can share one Redis.",
    )
    redis_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Socket connect/read timeout for Redis; short, so an outage never stalls requests.",
    )
    redis_retry_s: float = Field(
        2.0,
        gt=0,
        description="While Redis is down, try to reconnect at most this often.",
    )
    api_tokens: str = Field(
        "",
        description="Comma-separated bearer tokens accepted on /v1/*; empty = authentication off.",
    )
    rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="Requests per minute per token (per client IP when auth is off) on /v1/*; 0 = unlimited.",
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=1,
        description="Failed authentications per minute per client address before 429 (guessing tokens).",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For "
        "names the client; empty = trust none, every per-client limit counts the peer address.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest time to receive a whole request body -> 408 (slow or stalled clients).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time to receive a request's line and headers; the connection is then closed.",
    )
    keep_alive_s: int = Field(
        5,
        ge=1,
        description="Idle keep-alive connections are closed after this many seconds.",
    )
    cache_ttl_s: int = Field(
        3600,
        ge=0,
        description="Lifetime of cached neighbor results in Redis; 0 = no result cache.",
    )
    max_queries_per_request: int = Field(
        4096,
        ge=1,
        description="More queries in one request -> 413.",
    )
    max_k_plus_offset: int = Field(
        5000,
        ge=1,
        description="Largest k + offset a query may ask for -> 422 beyond.",
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes -> 413 (checked on Content-Length and while reading).",
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Images with more pixels are refused before decoding (decompression bombs) -> 413.",
    )
    max_stream_ids: int = Field(
        10_000,
        ge=1,
        description="Most source ids in one /v1/sources/stream request -> 413 beyond.",
    )
    max_pending_searches: int = Field(
        64,
        ge=1,
        description="Searches waiting for the engine; more -> 429 (bounded queue in front of the engine).",
    )
    decode_slots: int = Field(
        0,
        ge=0,
        description="Image decodes running at once; 0 = one per CPU core. More wait (see decode_memory_mb).",
    )
    decode_memory_mb: int = Field(
        512,
        ge=16,
        description="Estimated peak memory of the image decodes running at once; more wait (RELIABILITY.md).",
    )
    max_waiting_decodes: int = Field(
        64,
        ge=0,
        description="Image decodes waiting for a slot; more -> 429 overloaded.",
    )
    decode_queue_mb: int = Field(
        1024,
        ge=16,
        description="Estimated memory of the image decodes waiting for a slot; more -> 429 at once.",
    )
    decode_wait_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for a decode slot -> 429 overloaded after it.",
    )
    job_retention_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="A finished or failed job is kept this long in Redis (running jobs never expire).",
    )
    device: str = Field("cpu", description="cpu or cuda: descriptor extraction and search.")
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn worker processes; they share the memory-mapped index (page cache) and Redis.",
    )
    nprobe: int | None = Field(
        None,
        ge=1,
        description="IVF cells probed per query, overriding the index's own (engine.json); more: higher "
        "recall, slower searches.",
    )
    gpu_worker_copies: bool = Field(
        False,
        description="Allow device cuda with workers > 1: each worker then loads its own copy of the index "
        "onto the GPU (refused by default).",
    )
    source_root: Path | None = Field(
        None,
        description="Corpus root if it moved since the build (manifest paths are relative to it).",
    )
    verify_index: bool = Field(
        True,
        description="Verify index checksums on load (slower start on large indexes).",
    )
    log_level: str = Field("info", description="debug, info, warning or error.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "cpu" and not value.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"REDIS_URL must start with redis://, rediss:// or unix:// (got {value.split('://')[0]}://...)"
                if "://" in value
                else f"REDIS_URL must start with redis://, rediss:// or unix:// (got {value!r})"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"unknown log level {value!r}")
        return value

    @property
    def tokens(self) -> frozenset[str]:
        """The accepted bearer tokens (empty: authentication off)."""
        return frozenset(t.strip() for t in self.api_tokens.split(",") if t.strip())
