"""The source images a round trains on: downloaded from the service (``download``, resumable streams) into the
local content-addressed cache shared by every run (``SourceCache``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from services.client import RetrievalClient, ServiceUnavailableError
from services.fileio import atomic_write


class SourceCache:
    """Content-addressed store shared by runs: ``objects/<sha[:2]>/<sha256>.<ext>`` holds the bytes and
    ``refs/<index_key>/<source_id>`` names the object. Both are written to a temporary file in the same
    directory and renamed (``os.replace``), so a killed download never leaves a partial or corrupt entry, and
    concurrent writers of the same object write identical bytes."""

    def __init__(self, root: str | Path, key: str):
        self.root = Path(root)
        self.refs = self.root / "refs" / key
        self.objects = self.root / "objects"
        self.refs.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)

    def _ref(self, source_id: int) -> Path:
        return self.refs / f"{int(source_id)}"

    def path(self, source_id: int) -> Path | None:
        """The cached file of ``source_id``, or None."""
        ref = self._ref(source_id)
        try:
            name = ref.read_text().strip()
        except FileNotFoundError:
            return None
        obj = self.objects / name[:2] / name
        return obj if obj.is_file() else None

    def has(self, source_id: int) -> bool:
        return self.path(source_id) is not None

    def put(self, source_id: int, ext: str, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}.{ext.lower() or 'bin'}"
        obj = self.objects / name[:2] / name
        if not obj.is_file():
            atomic_write(obj, data, fsync=False)
        atomic_write(self._ref(source_id), name.encode(), fsync=False)
        return obj


def download(
    client: RetrievalClient,
    ids: Sequence[int],
    cache: SourceCache,
    workers: int = 4,
    chunk: int = 256,
    retries: int = 3,
    backoff: float = 0.5,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Stream every id not yet in ``cache`` (``workers`` streams over id chunks); returns how many were
    fetched.

    A stream that breaks midway is retried for its remaining ids only, with exponential backoff; a service
    that stays away raises ``ServiceUnavailableError`` (what is cached stays cached, so a rerun resumes the
    download).
    """
    missing = [int(s) for s in dict.fromkeys(ids) if not cache.has(s)]
    if not missing:
        return 0
    bar = tqdm(total=len(missing), desc="sources", unit="img", disable=not progress, leave=False)

    def one(part: list[int]) -> None:
        remaining = list(part)
        for attempt in range(retries + 1):
            try:
                for source_id, ext, data in client.stream_sources(list(remaining)):
                    cache.put(source_id, ext, data)
                    remaining.remove(source_id)
                    bar.update(1)
                if remaining:
                    raise ServiceUnavailableError(
                        503, "stream_incomplete", f"stream ended without {remaining[:5]}"
                    )
                return
            except ServiceUnavailableError as exc:
                if attempt == retries or exc.code == "service_unavailable":
                    raise
                sleep(min(30.0, backoff * 2**attempt))

    parts = [missing[s : s + chunk] for s in range(0, len(missing), chunk)]
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for future in [pool.submit(one, p) for p in parts]:
                future.result()
    finally:
        bar.close()
    return len(missing)
