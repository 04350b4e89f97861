"""A built index directory, loaded and verified: spec + manifest + search engine + ``index.json``.

``index.json`` lists the sha256 of every other file of the directory; with ``verify=True`` each is checked on
load and a missing or altered file raises ``IndexIntegrityError``. ``index_id`` is a short id derived from the
content checksums (build report excluded), so two builds of the same corpus with the same settings share it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO

from retrieval_service.index.corpus import SourceRecord, open_source
from retrieval_service.index.integrity import read_verified
from retrieval_service.index.manifest import Manifest
from services.errors import IndexIntegrityError
from services.fileio import file_sha256
from services.spec import DescriptorSpec

INDEX_FORMAT = "sjft-index/1"
_NOT_CONTENT = {"build_report.json"}  # timings differ between identical builds


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_checksums(directory: Path, checksums: dict[str, str]) -> None:
    """Raise ``IndexIntegrityError`` naming the first file that is missing or whose sha256 differs."""
    for name, expected in sorted(checksums.items()):
        path = directory / name
        if not path.is_file():
            raise IndexIntegrityError(f"index file {path} is missing")
        if file_sha256(path) != expected:
            raise IndexIntegrityError(f"index file {path} fails its checksum (damaged or modified)")


def read_index_json(directory: Path) -> dict:
    path = directory / "index.json"
    if not path.is_file():
        raise IndexIntegrityError(f"{directory} is not an index: no index.json")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexIntegrityError(f"{path} is unreadable: {exc}") from exc
    if (
        not isinstance(info, dict)
        or info.get("format") != INDEX_FORMAT
        or not isinstance(info.get("checksums"), dict)
    ):
        raise IndexIntegrityError(f"{path} is not an {INDEX_FORMAT} index description")
    return info


class LoadedIndex:
    """Everything the service needs from one index directory; read-only and thread-safe."""

    def __init__(
        self, directory: Path, info: dict, spec: DescriptorSpec, manifest: Manifest, engine, source_root: Path
    ):
        self.directory = directory
        self.info = info
        self.spec = spec
        self.manifest = manifest
        self.engine = engine
        self.source_root = source_root
        weights = info.get("conv_weights")
        self.conv_weights: Path | None = Path(weights) if weights else None

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | None = None,
        verify: bool = True,
        source_root: str | os.PathLike | None = None,
    ) -> LoadedIndex:
        """Open ``directory``; ``source_root`` overrides the corpus location recorded at build time."""
        from retrieval_service.search.engine import (
            SearchEngine,  # faiss and torch: only when an index is loaded
        )

        directory = Path(directory).absolute()
        if not directory.is_dir():
            raise IndexIntegrityError(f"index directory not found: {directory}")
        info = read_index_json(directory)
        if verify:
            verify_checksums(directory, info["checksums"])
        try:
            spec = DescriptorSpec.load(directory / "spec.json")
        except (OSError, ValueError) as exc:
            raise IndexIntegrityError(f"{directory / 'spec.json'} is unreadable: {exc}") from exc
        if spec.spec_hash != info.get("spec_hash"):
            raise IndexIntegrityError(f"spec.json of {directory} does not match the spec_hash in index.json")
        try:
            manifest = Manifest.open(directory / "manifest.sqlite")
        except FileNotFoundError as exc:
            raise IndexIntegrityError(str(exc)) from exc
        # The engine's files were just verified against index.json: hashing them twice doubles the load time.
        engine = SearchEngine.load(directory, mmap=True, verify=False, device=device)
        size = info.get("size")
        if not (engine.size == len(manifest) == size):
            manifest.close()
            raise IndexIntegrityError(
                f"{directory}: index.json says {size} sources, engine has {engine.size}, "
                f"manifest {len(manifest)}"
            )
        root = Path(source_root) if source_root is not None else Path(info.get("source_root", directory))
        return cls(directory, info, spec, manifest, engine, root)

    @property
    def size(self) -> int:
        return int(self.info["size"])

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def index_id(self) -> str:
        """16 hex digits of the sha256 over the content files' checksums: stable for an identical build."""
        content = {k: v for k, v in self.info["checksums"].items() if k not in _NOT_CONTENT}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def record(self, source_id: int) -> SourceRecord:
        """The manifest record of ``source_id``; ``KeyError`` when the index has no such source."""
        record = self.manifest.get(source_id)
        if record is None:
            raise KeyError(source_id)
        return record

    def open_source(self, source_id: int) -> BinaryIO:
        """A binary stream of the source image's bytes (``KeyError``: unknown id; ``OSError``: file gone)."""
        return open_source(self.source_root, self.record(source_id))

    def read_source(self, source_id: int) -> bytes:
        """The source's bytes, checked against the manifest (``SourceMissing``, ``SourceChanged``)."""
        return read_verified(self.source_root, self.record(source_id))

    def close(self) -> None:
        self.manifest.close()
