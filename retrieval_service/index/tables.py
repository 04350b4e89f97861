"""Sources kept as tables: Parquet files, Arrow files of a ``datasets`` ``save_to_disk`` directory, and
CSV / JSONL lists of ``path,label``.

Parquet and Arrow rows are located by ``SourceRecord.path`` (the data file, relative to the corpus root)
and ``member`` = ``"<group>/<row>/<image column>"``: the Parquet row group or Arrow record batch, and the
row within it. So one image is read back by reading one column of one group, never the whole file; the
last groups read are cached per process, because a build reads a group's rows one after another.

The image column holds encoded bytes (binary), or a struct with a ``bytes`` field as Hugging Face
``datasets`` writes its ``Image`` feature. The label column holds integers >= 0 (class names from the
``datasets`` ``ClassLabel`` metadata when present, else ``str(label)``) or class names (classes: the
sorted distinct names). Candidates come in file order (files sorted by path, or the order ``state.json``
lists them), then row order. The format of the bytes is not known before decoding: ``ext`` is "" here
and the build fills it in from the decoded header.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

from retrieval_service.index.records import (
    Corpus,
    CorpusError,
    SourceRecord,
    UnsafeSourcePath,
    _ext,
    _read_class_names,
    _safe_join,
)

COLUMNAR_EXTS = frozenset({"parquet", "arrow"})
LIST_EXTS = frozenset({"csv", "jsonl"})
# Integer labels index the class-name table, built with one name per integer up to the largest label: an
# unbounded label (2**64 - 1 in a uint64 column) grew the build by gigabytes until the kernel killed it.
LABEL_LIMIT = 2**20  # classes; ImageNet-21k has 21,841
CLASS_NAME_MAX = 512  # characters of a class name
_CONTROL = frozenset(chr(c) for c in [*range(32), 127])


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a service dependency
        raise CorpusError("Parquet and Arrow sources need pyarrow: pip install 'sjft[service]'") from exc
    return pa, pq


def dataset_files(directory: Path) -> list[Path] | None:
    """The data files of a ``save_to_disk`` directory (``state.json`` order), or None when it is not one."""
    state = directory / "state.json"
    if (directory / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in directory.iterdir() if (p / "state.json").is_file())
        raise CorpusError(f"{directory} holds several splits; pass one of them: {', '.join(splits)}")
    if not state.is_file():
        return None
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorpusError(f"{state} is not a datasets state file: {exc}") from exc
    return [directory / name for name in names]


def enumerate_table(root: Path, files: list[Path], image_column: str, label_column: str) -> Corpus:
    """Records of every row of ``files`` (Parquet or Arrow); CorpusError names a bad column or label."""
    found: list[tuple[str, int, int, object]] = []  # (file rel, group, row, raw label)
    names: list[str] | None = None
    for path in files:
        rel = path.relative_to(root).as_posix()
        schema, groups = _read_labels(path, rel, image_column, label_column)
        names = names or _class_label_names(schema, root, label_column)
        for group, labels in enumerate(groups):
            found.extend((rel, group, row, value) for row, value in enumerate(labels))
    labels, classes = _labels(
        [f[3] for f in found],
        names,
        lambda i: f"row {found[i][2]} of group {found[i][1]} of {found[i][0]}",
        label_column,
    )
    records = [
        SourceRecord(i, rel, f"{group}/{row}/{image_column}", labels[i], classes[labels[i]], "", 0)
        for i, (rel, group, row, _) in enumerate(found)
    ]
    kind = "parquet" if files and files[0].suffix == ".parquet" else "arrow"
    return Corpus(root, kind, classes, records, [])


def _read_labels(path: Path, rel: str, image_column: str, label_column: str) -> tuple[object, list[list]]:
    """(schema, raw labels per row group / record batch) of a Parquet or Arrow file; columns checked."""
    pa, pq = _pyarrow()
    try:
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(path)
            _check_columns(rel, pf.schema_arrow, image_column, label_column)
            groups = [
                pf.read_row_group(g, columns=[label_column])[label_column].to_pylist()
                for g in range(pf.metadata.num_row_groups)
            ]
            return pf.schema_arrow, groups
        batches = _arrow_batches(str(path), os.stat(path).st_mtime_ns)
        schema = batches[0].schema if batches else _arrow_schema(path)
        _check_columns(rel, schema, image_column, label_column)
        return schema, [b.column(label_column).to_pylist() for b in batches]
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"cannot read {rel}: {exc}") from exc


def _check_columns(rel: str, schema, image_column: str, label_column: str) -> None:
    pa, _ = _pyarrow()
    columns = ", ".join(schema.names)
    for flag, name in (("--image-column", image_column), ("--label-column", label_column)):
        if name not in schema.names:
            raise CorpusError(f"{rel} has no column {name!r} (columns: {columns}); choose one with {flag}")
    kind = schema.field(image_column).type
    ok = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if pa.types.is_struct(kind):
        ok = kind.get_field_index("bytes") >= 0
    if not ok:
        raise CorpusError(
            f"column {image_column!r} of {rel} is {kind}, not image bytes or a {{bytes, path}} struct; "
            "choose another with --image-column"
        )


def _class_label_names(schema, root: Path, label_column: str) -> list[str] | None:
    """``ClassLabel`` names from the ``datasets`` metadata (Parquet schema or dataset_info.json)."""
    infos = []
    meta = schema.metadata or {}
    if b"huggingface" in meta:
        infos.append(json.loads(meta[b"huggingface"]).get("info", {}))
    if (root / "dataset_info.json").is_file():
        infos.append(json.loads((root / "dataset_info.json").read_text()))
    for info in infos:
        feature = (info.get("features") or {}).get(label_column) or {}
        if isinstance(feature.get("names"), list):
            return [str(n) for n in feature["names"]]
    return None


def _bad_name(value: str) -> str | None:
    """Why ``value`` cannot be a class name (None when it can)."""
    if not value.strip():
        return "an empty class name"
    if len(value) > CLASS_NAME_MAX:
        return f"a class name over {CLASS_NAME_MAX} characters"
    if not _CONTROL.isdisjoint(value):
        return "a class name with a control character (NUL, newline, ...)"
    return None


def _labels(
    values: list,
    names: list[str] | None,
    where,
    column: str,
    fix: str = "or choose another with --label-column",
) -> tuple[list[int], list[str]]:
    """Raw label values -> (labels, classes): all ints in [0, LABEL_LIMIT), or all class names; else
    CorpusError naming the first value that breaks the kind the column's first value set."""
    ints = [isinstance(v, int) and not isinstance(v, bool) for v in values]
    over = next((i for i, v in enumerate(values) if ints[i] and v >= LABEL_LIMIT), None)
    if over is not None:
        raise CorpusError(
            f"label {values[over]} in {where(over)} is over the limit: integer labels are class indices "
            f"0..{LABEL_LIMIT - 1}; fix the label, {fix}"
        )
    for i, v in enumerate(values):
        why = _bad_name(v) if isinstance(v, str) else None
        if why:
            raise CorpusError(f"bad label {v[:80]!r} in {where(i)}: {why}; fix it, {fix}")
    names_ok = [isinstance(v, str) for v in values]
    if values and all(ints) and min(values) >= 0:
        top = max(values)
        return list(values), (names if names and len(names) > top else [str(i) for i in range(top + 1)])
    if values and all(names_ok):
        classes = sorted(set(values))
        index = {name: i for i, name in enumerate(classes)}
        return [index[v] for v in values], classes
    want_int = bool(ints and ints[0])
    bad = next(
        i
        for i, v in enumerate(values)
        if (want_int and (not ints[i] or v < 0)) or (not want_int and not names_ok[i])
    )
    raise CorpusError(
        f"bad label {values[bad]!r} in {where(bad)}: column {column!r} must hold integers >= 0 or class "
        f"names (not both); fix it, {fix}"
    )


def enumerate_list(list_file: Path) -> tuple[list[tuple[str, object, int]], Path]:
    """[(path, raw label, line number)] of a ``.csv`` (``path,label``, optional header) or ``.jsonl`` list.

    A row's label is an integer (a class index) or a class name; a number of another form (``1.5``, ``-1``,
    ``1e3``, ``true``) is refused on its own line, not reported later as the row that breaks the kind.
    """
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read the list {list_file}: {exc}") from exc
    rows = _jsonl_rows(text, list_file) if list_file.suffix == ".jsonl" else _csv_rows(text, list_file)
    for _path, label, n in rows:
        if not isinstance(label, str) and not (isinstance(label, int) and not isinstance(label, bool)):
            raise CorpusError(f"bad label {label!r} in line {n} of {list_file}: {_LABEL_KINDS}")
        if isinstance(label, int) and label < 0:
            raise CorpusError(f"bad label {label} in line {n} of {list_file}: {_LABEL_KINDS}")
    return rows, list_file.parent


_LABEL_KINDS = "labels are integers >= 0 (class indices) or class names"
_NUMBER_LIKE = frozenset("0123456789+-.eE_")


def _jsonl_rows(text: str, list_file: Path) -> list[tuple[str, object, int]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rows.append((str(obj["path"]), obj["label"], n))
        except RecursionError:
            raise CorpusError(f"line {n} of {list_file} nests too deeply to be a path and a label") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"line {n} of {list_file} is not a JSON object with path and label") from exc
    return rows


def _csv_rows(text: str, list_file: Path) -> list[tuple[str, object, int]]:
    rows = []
    reader = csv.reader(text.splitlines())
    try:
        for row in reader:
            n = reader.line_num
            if not row or (n == 1 and [c.strip().lower() for c in row] == ["path", "label"]):
                continue
            if len(row) != 2:
                raise CorpusError(f"line {n} of {list_file} has {len(row)} fields; expected path,label")
            label = row[1].strip()
            if label.isascii() and label.isdigit():
                rows.append((row[0].strip(), int(label), n))
            elif label and set(label) <= _NUMBER_LIKE and any(c.isdigit() for c in label):
                raise CorpusError(f"bad label {label[:80]!r} in line {n} of {list_file}: {_LABEL_KINDS}")
            else:
                rows.append((row[0].strip(), label, n))
    except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
        raise CorpusError(f"line {reader.line_num} of {list_file} is not CSV of path,label: {exc}") from None
    return rows


def enumerate_listed(list_file: Path) -> Corpus:
    """A ``.csv``/``.jsonl`` list: candidates in list order; paths that leave the list's directory or do
    not exist are reported as skipped (labels come from every row: a skip never renumbers the classes)."""
    rows, root = enumerate_list(list_file)
    if not rows:
        raise CorpusError(f"the list {list_file} names no images")
    labels, classes = list_labels(rows, list_file, _read_class_names(root))
    records: list[SourceRecord] = []
    skipped: list[dict] = []
    for (rel, _, _), label in zip(rows, labels, strict=True):
        try:
            full = _safe_join(root, rel)
        except UnsafeSourcePath as exc:
            skipped.append({"path": rel, "member": None, "reason": str(exc)})
            continue
        if not full.is_file():
            skipped.append({"path": rel, "member": None, "reason": "file not found (or not a regular file)"})
            continue
        rel = full.relative_to(root.resolve()).as_posix()
        size = full.stat().st_size
        records.append(SourceRecord(len(records), rel, None, label, classes[label], _ext(rel), size))
    return Corpus(root.resolve(), "list", classes, records, skipped)


def list_labels(rows: list[tuple[str, object, int]], list_file: Path, names: list[str]) -> tuple[list, list]:
    """(labels, classes) of a list's rows, by the same rules as a table's label column."""

    def where(i: int) -> str:
        return f"line {rows[i][2]} of {list_file}"

    return _labels(
        [r[1] for r in rows], names or None, where, "label", f"fix that line of --source {list_file}"
    )


@functools.lru_cache(maxsize=4)
def _arrow_batches(path: str, mtime_ns: int) -> list:
    """Record batches of an Arrow IPC file (stream or file format), memory-mapped: reading is zero-copy."""
    pa, _ = _pyarrow()
    source = pa.memory_map(path)
    try:
        reader = pa.ipc.open_file(source)
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except pa.ArrowInvalid:
        source.seek(0)
        return list(pa.ipc.open_stream(source))


def _arrow_schema(path: Path):
    pa, _ = _pyarrow()
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).schema


@functools.lru_cache(maxsize=4)
def _parquet_group(path: str, mtime_ns: int, group: int, column: str):
    _, pq = _pyarrow()
    return pq.ParquetFile(path).read_row_group(group, columns=[column])[column]


def read_table_bytes(path: Path, member: str) -> bytes:
    """The encoded image of the row ``member`` = "group/row/column" of the Parquet or Arrow file ``path``."""
    pa, _ = _pyarrow()
    try:
        group, row, column = member.split("/", 2)
        group, row = int(group), int(row)
    except ValueError as exc:
        raise CorpusError(f"bad row locator {member!r} for {path.name}") from exc
    mtime = os.stat(path).st_mtime_ns
    try:
        if path.suffix == ".parquet":
            value = _parquet_group(str(path), mtime, group, column)[row]
        else:
            value = _arrow_batches(str(path), mtime)[group].column(column)[row]
    except (IndexError, KeyError, pa.ArrowException) as exc:
        raise CorpusError(f"row {row} of group {group} of {path.name} cannot be read: {exc}") from exc
    value = value.as_py()
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise CorpusError(f"row {row} of group {group} of {path.name} holds no image bytes")
    return bytes(value)
