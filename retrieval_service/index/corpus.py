"""Source corpora: enumerate an ImageFolder tree or WebDataset-style tar shards, and read one source's bytes.

Enumeration is sorted, so the same corpus always gives the same candidate order:
- ImageFolder: ``root/<class>/**/<file>``; classes are the sorted sub-directory names (label = position in
  that list), files sorted by relative path within each class; extensions compared case-insensitively. Hidden
  entries, files directly under ``root`` and non-regular files are ignored; symlinks that leave ``root`` are
  reported.
- Tar shards: a directory of ``*.tar`` files (no class sub-directories), a glob of them, or one ``.tar`` file.
  Tar files are sorted by relative path, members by name. A sample is ``<key>.<image ext>`` plus ``<key>.cls``
  holding a class index or a class name. If every ``.cls`` is an integer it is the label and names come from
  an optional ``classes.txt`` (one name per line) next to the shards, else ``str(label)``; otherwise the
  sorted distinct names are the classes. An image without a ``.cls`` is reported as skipped.

``SourceRecord.source_id`` from :func:`enumerate_corpus` is the candidate's position in this sorted order; the
build renumbers readable images ``0..N-1`` in the same order (see ``build.py``). Uncompressed tars only:
members are read in place through their data offset, never by unpacking the archive.
"""

from __future__ import annotations

import functools
import glob
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.errors import SJFTError

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm"})
MAX_CLS_BYTES = 4096


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


def enumerate_corpus(source: str | os.PathLike) -> Corpus:
    """Enumerate ``source`` (ImageFolder tree, tar directory, tar glob or one tar); raises ``CorpusError``."""
    text = os.fspath(source)
    if glob.has_magic(text) and not Path(text).exists():
        tars = sorted(Path(p).resolve() for p in glob.glob(text) if p.endswith(".tar") and Path(p).is_file())
        if not tars:
            raise CorpusError(f"no .tar files match {text!r}")
        root = Path(os.path.commonpath([str(t.parent) for t in tars]))
        return _enumerate_tars(root, tars)
    path = Path(text)
    if not path.exists():
        raise CorpusError(f"source not found: {text}")
    path = path.resolve()
    if path.is_file():
        if not path.name.endswith(".tar"):
            raise CorpusError(f"source file is not a .tar shard: {path}")
        return _enumerate_tars(path.parent, [path])
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    tars = sorted(p for p in path.glob("*.tar") if p.is_file())
    if tars and not subdirs:
        return _enumerate_tars(path, tars)
    return _enumerate_folder(path, sorted(subdirs, key=lambda p: p.name))


def _enumerate_folder(root: Path, class_dirs: list[Path]) -> Corpus:
    classes = [d.name for d in class_dirs]
    records: list[SourceRecord] = []
    skipped: list[dict] = []
    for label, class_dir in enumerate(class_dirs):
        files: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and _ext(name) in IMAGE_EXTS:
                    full = Path(dirpath) / name
                    files.append((full.relative_to(root).as_posix(), full))
        for rel, _ in sorted(files):
            try:
                safe = _safe_join(root, rel)
            except UnsafeSourcePath as exc:
                skipped.append({"path": rel, "member": None, "reason": str(exc)})
                continue
            if not safe.is_file():  # FIFOs, sockets, dangling links: reading them could hang or fail
                skipped.append({"path": rel, "member": None, "reason": "not a regular file"})
                continue
            records.append(
                SourceRecord(len(records), rel, None, label, classes[label], _ext(rel), safe.stat().st_size)
            )
    return Corpus(root, "folder", classes, records, skipped)


def _enumerate_tars(root: Path, tars: list[Path]) -> Corpus:
    # First pass: image members and raw .cls values, in sorted order.
    found: list[tuple[str, str, str, int, int, str | None]] = []  # (tar rel, member, ext, size, offset, cls)
    skipped: list[dict] = []
    for tar_path in sorted(tars, key=lambda p: p.relative_to(root).as_posix()):
        rel = tar_path.relative_to(root).as_posix()
        try:
            with tarfile.open(tar_path, mode="r:") as archive:
                members = [m for m in archive.getmembers() if m.isfile()]
                cls = {}
                for m in members:
                    key, ext = _split_key(m.name)
                    if ext == "cls" and m.size <= MAX_CLS_BYTES:
                        cls[key] = archive.extractfile(m).read().decode("utf-8", "replace").strip()
        except (tarfile.TarError, OSError) as exc:
            skipped.append({"path": rel, "member": None, "reason": f"unreadable tar: {exc}"})
            continue
        for m in sorted(members, key=lambda m: m.name):
            key, ext = _split_key(m.name)
            if ext in IMAGE_EXTS:
                found.append((rel, m.name, ext, m.size, m.offset_data, cls.get(key)))
    labelled = [f for f in found if f[5] is not None]
    for rel, member, *_ in (f for f in found if f[5] is None):
        skipped.append({"path": rel, "member": member, "reason": "no <key>.cls label"})
    values = [f[5] for f in labelled]
    if values and all(_is_int(v) for v in values):
        top = max(int(v) for v in values)
        names = _read_class_names(root)
        classes = names if len(names) > top else [str(i) for i in range(top + 1)]
        label_of = {v: int(v) for v in values}
    else:
        classes = sorted(set(values))
        label_of = {name: i for i, name in enumerate(classes)}
    records = [
        SourceRecord(i, rel, member, label_of[cls], classes[label_of[cls]], ext, size, offset=offset)
        for i, (rel, member, ext, size, offset, cls) in enumerate(labelled)
    ]
    return Corpus(root, "tar", classes, records, skipped)


def open_source(root: str | os.PathLike, record: SourceRecord) -> BinaryIO:
    """A binary stream of one source's bytes; a tar member is read in place, never by loading the tar."""
    path = _safe_join(Path(root), record.path)
    if record.member is None:
        return open(path, "rb")
    offset = record.offset
    if offset is None:  # a record built without offsets: look the member up once
        with tarfile.open(path, mode="r:") as archive:
            offset = archive.getmember(record.member).offset_data
    raw = open(path, "rb")
    try:
        total = os.fstat(raw.fileno()).st_size
        if offset < 0 or offset + record.nbytes > total:
            raise CorpusError(f"tar member {record.member!r} lies beyond the end of {record.path}")
        return io.BufferedReader(_Window(raw, offset, record.nbytes))
    except BaseException:
        raw.close()
        raise


def open_source_bytes(root: str | os.PathLike, record: SourceRecord) -> bytes:
    """All bytes of one source."""
    with open_source(root, record) as stream:
        return stream.read()


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``start`` of an open file (owns and closes it)."""

    def __init__(self, raw: BinaryIO, start: int, length: int):
        self._raw, self._start, self._length, self._pos = raw, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        if n == 0:
            return 0
        self._raw.seek(self._start + self._pos)
        data = self._raw.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


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


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset convention: the key runs to the first dot of the file name, the rest is the extension."""
    directory, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _is_int(text: str) -> bool:
    return text.isdigit()


def _read_class_names(root: Path) -> list[str]:
    path = root / "classes.txt"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
