"""The service's one configuration object: environment variables (documented names) plus explicit overrides.

Nothing else in the service reads the environment. ``Settings(**overrides)`` gives keyword overrides priority
over the environment (what ``serve(**overrides)`` and the CLI flags use). Variable names: ``SJFT_<FIELD>``
upper-cased (``SJFT_INDEX_DIR``, ``SJFT_API_TOKENS``, ``SJFT_RATE_LIMIT_PER_MINUTE``, ...) except
``REDIS_URL``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    device: str = Field("cpu", description="cpu or cuda: descriptor extraction and search.")
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
