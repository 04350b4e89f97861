"""Everything one service instance holds: settings, Redis-backed parts, and the index once it has loaded.

The index loads in a background thread so ``/healthz`` answers at once and ``/readyz`` says 503 until it is
ready (a large index takes a while to verify); ``/v1`` routes answer 503 ``not_ready`` meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from retrieval_service.api.decoding import DecodeGate
from retrieval_service.api.errors import NotReady
from retrieval_service.api.metrics import ServiceMetrics
from retrieval_service.api.searcher import Searcher
from retrieval_service.api.settings import Settings
from retrieval_service.shared_state.cache import ResultCache
from retrieval_service.shared_state.connection import RedisState
from retrieval_service.shared_state.jobs import JobRegistry
from retrieval_service.shared_state.ratelimit import RateLimiter

log = logging.getLogger("retrieval_service")


@dataclass
class Ready:
    """The loaded index and what hangs off it."""

    index: Any  # retrieval_service.index.LoadedIndex
    spec_hash: str
    searcher: Searcher
    extractor: Any  # services.extract.DescriptorExtractor, built while loading (else on first use)
    extractor_lock: threading.Lock = field(default_factory=threading.Lock)


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.redis = RedisState(settings.redis_url, settings.redis_timeout_s, settings.redis_retry_s)
        self.jobs = JobRegistry(self.redis, settings.redis_prefix, settings.job_retention_s)
        self.decode_gate = DecodeGate.from_settings(settings)  # bounds memory of concurrent image decodes
        self.limiter = RateLimiter(self.redis, settings.redis_prefix, settings.rate_limit_per_minute)
        self.ready: Ready | None = None
        self.load_error: str | None = None
        self._loader: threading.Thread | None = None

    def start_loading(self, index=None) -> None:
        """Load the index in the background (or adopt an already loaded one, e.g. in-process benchmarks)."""
        if index is not None:
            self._adopt(index)
            return
        self._loader = threading.Thread(target=self._load, name="index-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        from retrieval_service.index.loaded import LoadedIndex  # heavy (faiss, torch): not at import time

        s = self.settings
        if s.index_dir is None:
            self.load_error = "no index configured: set SJFT_INDEX_DIR or pass --index"
            log.error(self.load_error)
            return
        started = time.perf_counter()
        try:
            index = LoadedIndex.load(
                s.index_dir, device=s.device, verify=s.verify_index, source_root=s.source_root
            )
        except Exception as exc:  # noqa: BLE001 - any failure must surface on /readyz, not kill the thread silently
            self.load_error = f"cannot load index {s.index_dir}: {exc}"
            log.exception("cannot load index %s", s.index_dir)
            return
        extractor = None
        try:
            extractor = self._warm_extractor(index)
        except Exception:  # noqa: BLE001 - image queries then build it on first use and answer its error
            log.exception("cannot build the descriptor extractor ahead of the first image query")
        self._adopt(index, extractor)
        log.info(
            "index %s loaded: %d sources in %.1f s", s.index_dir, index.size, time.perf_counter() - started
        )

    def _warm_extractor(self, index):
        """The extractor, built and run once on a blank image before the service reports ready.

        Its filter bank, torch's thread pool and FFT plans cost a few hundred MB the first time; built on the
        first image query, that cost landed inside the first burst of queries, on top of their decodes, and
        broke the memory budget from a cold start (RELIABILITY.md). Now it is part of the idle server.
        """
        import numpy as np

        from services.extract import DescriptorExtractor

        weights = getattr(index, "conv_weights", None)
        extractor = DescriptorExtractor(index.spec, self.settings.device, weights)
        extractor.histograms(np.zeros((1, index.spec.size, index.spec.size, 3), np.uint8))
        return extractor

    def _adopt(self, index, extractor=None) -> None:
        spec_hash = index.spec.spec_hash
        index_id = index.index_id
        if self.settings.nprobe is not None:  # other probes, other answers: never share their cache entries
            index.engine.nprobe = self.settings.nprobe
            index_id = f"{index_id}-nprobe{self.settings.nprobe}"
        cache = ResultCache(
            self.redis, self.settings.redis_prefix, index_id, spec_hash, self.settings.cache_ttl_s
        )
        searcher = Searcher(
            index.engine,
            cache,
            self.metrics,
            self.settings.max_pending_searches,
            serialise=self.settings.device.startswith("cuda"),
        )
        self.metrics.index_size.set(index.size)
        self.ready = Ready(index=index, spec_hash=spec_hash, searcher=searcher, extractor=extractor)

    def require_ready(self) -> Ready:
        if self.ready is None:
            reason = self.load_error or "the index is still loading"
            raise NotReady(reason, headers={"Retry-After": "5"})
        return self.ready

    def extractor(self):
        """The descriptor extractor for image queries, built once on first use (it loads the filter bank)."""
        ready = self.require_ready()
        with ready.extractor_lock:
            if ready.extractor is None:
                from services.extract import DescriptorExtractor

                weights = getattr(ready.index, "conv_weights", None)
                ready.extractor = DescriptorExtractor(ready.index.spec, self.settings.device, weights)
            return ready.extractor

    def close(self) -> None:
        if self.ready is not None and hasattr(self.ready.index, "close"):
            self.ready.index.close()
        self.redis.close()
