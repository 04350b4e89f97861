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
- Parquet / Arrow tables and ``.csv`` / ``.jsonl`` lists: ``tables.py``.

``SourceRecord.source_id`` from :func:`enumerate_corpus` is the candidate's position in this sorted order; the
build renumbers readable images ``0..N-1`` in the same order (see ``build.py``). Uncompressed tars only:
members are read in place through their data offset, never by unpacking the archive.
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from retrieval_service.index.records import (
    Corpus,
    CorpusError,
    SourceRecord,
    UnsafeSourcePath,
    _ext,
    _read_class_names,
    _safe_join,
)

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm"})
MAX_CLS_BYTES = 4096
LINK_PREFIX = "link:"  # member of a record whose path is a followed symlink's target outside the root


def enumerate_corpus(
    source: str | os.PathLike,
    *,
    image_column: str = "image",
    label_column: str = "label",
    follow_symlinks: bool = False,
) -> Corpus:
    """Enumerate ``source``: an ImageFolder tree, tar shards (directory, glob or one file), Parquet files
    (file, directory or glob), a ``datasets`` ``save_to_disk`` directory, or a ``.csv`` / ``.jsonl`` list
    (``tables.py``); raises ``CorpusError``."""
    from retrieval_service.index import tables

    text = os.fspath(source)
    if glob.has_magic(text) and not Path(text).exists():
        matches = sorted(Path(p).resolve() for p in glob.glob(text) if Path(p).is_file())
        tars = [p for p in matches if p.name.endswith(".tar")]
        columnar = [p for p in matches if _ext(p.name) in tables.COLUMNAR_EXTS]
        if not tars and not columnar:
            raise CorpusError(f"no .tar or .parquet files match {text!r}")
        files = tars or columnar
        root = Path(os.path.commonpath([str(t.parent) for t in files]))
        if tars:
            return _enumerate_tars(root, tars)
        return tables.enumerate_table(root, columnar, image_column, label_column)
    path = Path(text)
    if not path.exists():
        raise CorpusError(f"source not found: {text}")
    path = path.resolve()
    if path.is_file():
        if _ext(path.name) in tables.COLUMNAR_EXTS:
            return tables.enumerate_table(path.parent, [path], image_column, label_column)
        if _ext(path.name) in tables.LIST_EXTS:
            return tables.enumerate_listed(path)
        if not path.name.endswith(".tar"):
            raise CorpusError(f"source file is not a .tar shard, .parquet, .arrow, .csv or .jsonl: {path}")
        return _enumerate_tars(path.parent, [path])
    arrow = tables.dataset_files(path)
    if arrow is not None:
        return tables.enumerate_table(path, arrow, image_column, label_column)
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    tars = sorted(p for p in path.glob("*.tar") if p.is_file())
    if tars and not subdirs:
        return _enumerate_tars(path, tars)
    parquet = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if parquet:  # a dataset pushed as Parquet: data/<split>-00000-of-0000N.parquet
        root, parquet = _table_files(path, parquet, follow_symlinks)
        return tables.enumerate_table(root, parquet, image_column, label_column)
    return _enumerate_folder(path, sorted(subdirs, key=lambda p: p.name), follow_symlinks)


def _table_files(root: Path, files: list[Path], follow_symlinks: bool) -> tuple[Path, list[Path]]:
    """(root, files) of a directory's table files. A symlink whose target leaves ``root`` is refused by
    name (its rows could never be read back inside the root, so every image used to be skipped and the
    build ended in "no images"); ``--follow-symlinks`` roots the corpus where the targets all lie."""
    outside = [f for f in files if not f.resolve().is_relative_to(root)]
    if not outside:
        return root, files
    if not follow_symlinks:
        link = outside[0]
        raise CorpusError(
            f"{link} is a symbolic link to {link.resolve()}, outside the source {root}: pass "
            "--follow-symlinks to read linked tables, or copy them into the source"
        )
    resolved = [f.resolve() for f in files]
    return Path(os.path.commonpath([str(f.parent) for f in resolved])), resolved


def _enumerate_folder(root: Path, class_dirs: list[Path], follow_symlinks: bool = False) -> Corpus:
    """With ``follow_symlinks``, linked directories are walked (each real directory once) and a link that
    leaves ``root`` is kept: its record's ``path`` is the resolved target and ``member`` is ``link:<rel>``."""
    classes = [d.name for d in class_dirs]
    records: list[SourceRecord] = []
    skipped: list[dict] = []
    for label, class_dir in enumerate(class_dirs):
        files: list[tuple[str, Path]] = []
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=follow_symlinks):
            seen.add(os.path.realpath(dirpath))
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in seen
            ]
            for name in filenames:
                if not name.startswith(".") and _ext(name) in IMAGE_EXTS:
                    full = Path(dirpath) / name
                    files.append((full.relative_to(root).as_posix(), full))
        for rel, _ in sorted(files):
            path, member = rel, None
            try:
                safe = _safe_join(root, rel)
            except UnsafeSourcePath as exc:
                if not follow_symlinks:
                    reason = f"{exc} (a symlink; pass --follow-symlinks to index links that leave the root)"
                    skipped.append({"path": rel, "member": None, "reason": reason})
                    continue
                safe = (root / rel).resolve()
                path, member = str(safe), f"{LINK_PREFIX}{rel}"
            if not safe.is_file():  # FIFOs, sockets, dangling links: reading them could hang or fail
                skipped.append({"path": rel, "member": None, "reason": "not a regular file"})
                continue
            records.append(
                SourceRecord(
                    len(records), path, member, label, classes[label], _ext(rel), safe.stat().st_size
                )
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
    path = source_file(root, record)
    if record.member is None or record.member.startswith(LINK_PREFIX):
        return open(path, "rb")
    if _ext(record.path) in ("parquet", "arrow"):
        from retrieval_service.index.tables import read_table_bytes

        return io.BytesIO(read_table_bytes(path, record.member))
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


def source_file(root: str | os.PathLike, record: SourceRecord) -> Path:
    """The file holding ``record``'s bytes: a followed symlink's recorded target, else ``root / path``
    (refused with ``UnsafeSourcePath`` when it leaves ``root``)."""
    if record.member is not None and record.member.startswith(LINK_PREFIX):
        if not os.path.isabs(record.path):  # only a --follow-symlinks build records these
            raise UnsafeSourcePath(f"linked source {record.member!r} has no absolute target")
        return Path(record.path)
    return _safe_join(Path(root), record.path)


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


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset convention: the key runs to the first dot of the file name, the rest is the extension."""
    directory, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _is_int(text: str) -> bool:
    return text.isdigit()
