"""The vocabulary every corpus format shares: a source record, a corpus, their errors, and the path rules
(``_safe_join``: nothing outside the root). ``corpus.py`` (folders, tars) and ``tables.py`` (Parquet, Arrow,
lists) both build on it, so neither imports the other back.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.errors import SJFTError


class CorpusError(SJFTError):
    """A source path that does not exist, is not a corpus, or whose layout cannot be read."""

    code = "invalid_corpus"


class UnsafeSourcePath(SJFTError):
    """A record that points outside its corpus root (``..``, absolute path or a symlink leaving the root)."""

    code = "unsafe_path"


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One source image: ``path`` relative to the corpus root; ``member`` + ``offset`` locate a tar member."""

    source_id: int
    path: str
    member: str | None
    label: int
    class_name: str
    ext: str
    nbytes: int
    sha256: str | None = None
    offset: int | None = None  # tar member's data offset (tarinfo.offset_data); None for plain files
    width: int | None = None
    height: int | None = None


@dataclass
class Corpus:
    """The sorted candidates of one source, plus entries rejected before any image was read."""

    root: Path
    kind: str  # "folder" | "tar"
    classes: list[str]
    records: list[SourceRecord]
    skipped: list[dict] = field(default_factory=list)  # {"path", "member", "reason"}


@functools.lru_cache(maxsize=64)
def _resolved_root(root: str) -> Path:
    # Resolving the root costs a syscall per path component; streaming calls _safe_join once per image.
    return Path(root).resolve()


def _safe_join(root: Path, rel: str) -> Path:
    """``root / rel`` resolved; refuses anything (``..``, absolute, symlink) that ends outside ``root``."""
    if not rel or os.path.isabs(rel):
        raise UnsafeSourcePath(f"source path {rel!r} is not relative to the corpus root")
    base = _resolved_root(str(root))
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise UnsafeSourcePath(f"source path {rel!r} leaves the corpus root")
    return full


def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _read_class_names(root: Path) -> list[str]:
    path = root / "classes.txt"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
