"""Prometheus metrics of one service instance (own registry: several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """Request counts and latency per route template, cache hits/misses, search queue depth, index size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sjft_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sjft_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "sjft_cache_hits", "Query results served from the Redis cache.", registry=self.registry
        )
        self.cache_misses = Counter(
            "sjft_cache_misses", "Query results not in the cache (searched).", registry=self.registry
        )
        self.queue_depth = Gauge(
            "sjft_search_queue_depth", "Searches waiting for or holding the engine.", registry=self.registry
        )
        self.rejected = Counter(
            "sjft_search_rejected",
            "Searches refused with 429 because the queue was full.",
            registry=self.registry,
        )
        self.index_size = Gauge(
            "sjft_index_size", "Source images in the loaded index.", registry=self.registry
        )
        self.redis_up = Gauge(
            "sjft_redis_up", "1 when Redis answered the last call, 0 otherwise.", registry=self.registry
        )
        self.streamed = Counter(
            "sjft_sources_streamed", "Source images sent by /v1/sources/stream.", registry=self.registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request; ``route`` must be a route template (or "unmatched"), never a raw path."""
        method = method if method in HTTP_METHODS else "other"  # any token is a valid method to h11
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
