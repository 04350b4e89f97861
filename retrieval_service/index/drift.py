"""Drift between a built index and its corpus now: missing, changed and new source files.

``python -m retrieval_service verify`` prints this report. Without ``hash`` a file counts as changed when
its size differs from the manifest or its mtime is later than the index's creation (a file merely touched
shows up too: ``hash`` settles it); with ``hash`` every source is read and compared by sha256 instead of
mtime. New files are candidates the corpus enumerates now that the index neither holds nor skipped as
unreadable at build time. Needs only ``index.json``, the manifest and the build report: no FAISS, no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from retrieval_service.index.corpus import SourceRecord, UnsafeSourcePath, _safe_join, enumerate_corpus
from retrieval_service.index.integrity import SourceChanged, SourceMissing, read_verified
from retrieval_service.index.loaded import read_index_json
from retrieval_service.index.manifest import Manifest
from services.errors import IndexIntegrityError

_CHUNK = 2000  # manifest records per query


@dataclass
class DriftReport:
    index: str
    source: str
    sources: int  # records in the index
    hashed: bool
    missing: list[dict] = field(default_factory=list)  # {"source_id", "path", "member"}
    changed: list[dict] = field(default_factory=list)  # {"source_id", "path", "member", "reason"}
    new: list[dict] = field(default_factory=list)  # {"path", "member"}

    @property
    def clean(self) -> bool:
        return not (self.missing or self.changed or self.new)

    def summary(self) -> str:
        verdict = "clean" if self.clean else "DRIFT"
        how = "sha256" if self.hashed else "size and mtime"
        return (
            f"{verdict}: index {self.index} ({self.sources} sources) vs corpus {self.source}: "
            f"{len(self.missing)} missing, {len(self.changed)} changed ({how}), {len(self.new)} new"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


def _records(manifest: Manifest, size: int) -> Iterator[SourceRecord]:
    for start in range(0, size, _CHUNK):
        yield from (r for r in manifest.get_many(range(start, min(start + _CHUNK, size))) if r is not None)


def _created_ns(info: dict) -> int | None:
    """End of the build in ns, rounded UP: ``created`` is truncated to the second, and a file written in
    the build's last second must not count as modified after it."""
    try:
        return int(datetime.fromisoformat(info["created"]).timestamp() + 1) * 10**9
    except (KeyError, TypeError, ValueError):
        return None


def _check(root: Path, record: SourceRecord, hashed: bool, created_ns: int | None, stats: dict) -> str | None:
    """None when the source is as built, "missing", or the reason it changed."""
    if hashed:
        try:
            read_verified(root, record)
        except SourceMissing:
            return "missing"
        except SourceChanged as exc:
            return f"content differs: {exc}"
        return None
    if record.path not in stats:
        try:
            stats[record.path] = _safe_join(root, record.path).stat()
        except (OSError, UnsafeSourcePath):
            stats[record.path] = None
    st = stats[record.path]
    if st is None:
        return "missing"
    if record.member is None and st.st_size != record.nbytes:
        return f"size {st.st_size} bytes, built from {record.nbytes}"
    if created_ns is not None and st.st_mtime_ns > created_ns:
        return "modified after the index was built (mtime; --hash compares content)"
    return None


def corpus_drift(
    index_dir: str | os.PathLike, source: str | os.PathLike | None = None, hashed: bool = False, progress=True
) -> DriftReport:
    """Compare the index at ``index_dir`` with its corpus (``source``, default: where it was built from)."""
    directory = Path(index_dir).absolute()
    info = read_index_json(directory)
    root = Path(source) if source is not None else Path(info.get("source_root", directory))
    if not root.exists():
        raise IndexIntegrityError(f"corpus not found: {root} (pass --source where it lives now)")
    try:
        manifest = Manifest.open(directory / "manifest.sqlite")
    except FileNotFoundError as exc:
        raise IndexIntegrityError(str(exc)) from exc
    corpus = enumerate_corpus(root)
    report = DriftReport(str(directory), str(corpus.root), int(info["size"]), hashed)
    created_ns, stats, known = _created_ns(info), {}, set()
    try:
        bar = tqdm(total=report.sources, unit="src", desc="verify", disable=not progress, dynamic_ncols=True)
        for record in _records(manifest, report.sources):
            known.add((record.path, record.member))
            problem = _check(corpus.root, record, hashed, created_ns, stats)
            entry = {"source_id": record.source_id, "path": record.path, "member": record.member}
            if problem == "missing":
                report.missing.append(entry)
            elif problem is not None:
                report.changed.append({**entry, "reason": problem})
            bar.update()
        bar.close()
    finally:
        manifest.close()
    known |= _skipped_at_build(directory)
    report.new = [
        {"path": r.path, "member": r.member} for r in corpus.records if (r.path, r.member) not in known
    ]
    return report


def _skipped_at_build(directory: Path) -> set[tuple[str, str | None]]:
    """Candidates the build saw and skipped as unreadable: not new, even though the index lacks them."""
    try:
        report = json.loads((directory / "build_report.json").read_text())["report"]
        return {(s["path"], s.get("member")) for s in report.get("skipped", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
