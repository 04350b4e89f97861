"""One small ImageFolder corpus rewritten in the formats people keep data in: Parquet (as ``datasets``
pushes it), a ``datasets`` ``save_to_disk`` directory (Arrow stream files + state.json + dataset_info.json),
CSV and JSONL lists, and a tree of symlinks. Every layout lists the folder's candidates in its order, so an
index built from any of them must equal the folder's."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval_service.index.corpus import enumerate_corpus


def folder_rows(folder: Path) -> tuple[list[tuple[str, bytes, int, str]], list[str]]:
    """[(relative path, bytes, label, class name)] in candidate order, and the class names."""
    corpus = enumerate_corpus(folder)
    rows = [(r.path, (folder / r.path).read_bytes(), r.label, r.class_name) for r in corpus.records]
    return rows, corpus.classes


def hf_table(rows, struct: bool, names: bool) -> pa.Table:
    """``image``: binary, or ``datasets``' Image struct {bytes, path}; ``label``: int, or the class name."""
    images = (
        [{"bytes": data, "path": path.rsplit("/", 1)[-1]} for path, data, _, _ in rows]
        if struct
        else [data for _, data, _, _ in rows]
    )
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())]) if struct else pa.binary()
    labels = [name for *_, name in rows] if names else [label for _, _, label, _ in rows]
    return pa.table(
        {"image": pa.array(images, image_type), "label": pa.array(labels), "idx": list(range(len(rows)))}
    )


def write_parquet(folder: Path, out: Path, struct: bool = True, names: bool = False) -> Path:
    """``out/data/train-0000{0,1}-of-00002.parquet``, row groups of 5 rows; ClassLabel names in the schema
    metadata as ``datasets`` writes them."""
    rows, classes = folder_rows(folder)
    table = hf_table(rows, struct, names)
    features = {"label": {"names": classes, "_type": "ClassLabel"}, "image": {"_type": "Image"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    half = len(rows) // 2
    (out / "data").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        pq.write_table(part, out / "data" / f"train-{i:05d}-of-00002.parquet", row_group_size=5)
    return out


def write_save_to_disk(folder: Path, out: Path) -> Path:
    """A ``Dataset.save_to_disk`` directory: Arrow IPC stream files of 7-row batches + state.json."""
    rows, classes = folder_rows(folder)
    table = hf_table(rows, struct=True, names=False)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    half = len(rows) // 2
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        name = f"data-{i:05d}-of-00002.arrow"
        with pa.OSFile(str(out / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            for batch in part.to_batches(max_chunksize=7):
                writer.write_batch(batch)
        files.append({"filename": name})
    state = {"_data_files": files, "_fingerprint": "x", "_split": "train"}
    (out / "state.json").write_text(json.dumps(state))
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    (out / "dataset_info.json").write_text(json.dumps({"features": features}))
    return out


def write_csv(folder: Path) -> Path:
    rows, _ = folder_rows(folder)
    path = folder / "list.csv"
    path.write_text("path,label\n" + "".join(f"{rel},{name}\n" for rel, _, _, name in rows))
    return path


def write_jsonl(folder: Path) -> Path:
    rows, _ = folder_rows(folder)
    path = folder / "list.jsonl"
    path.write_text("".join(json.dumps({"path": rel, "label": label}) + "\n" for rel, _, label, _ in rows))
    return path


def write_symlink_tree(folder: Path, out: Path) -> Path:
    """``out/<class>/<file>`` symlinks to the folder's files: every link leaves ``out``."""
    rows, _ = folder_rows(folder)
    for rel, *_ in rows:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).symlink_to((folder / rel).resolve())
    return out
