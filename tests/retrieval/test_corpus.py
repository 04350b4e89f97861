"""Corpus enumeration (ImageFolder and tar shards), reading sources, path safety, and the SQLite manifest."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retrieval_service.index.corpus import (
    CorpusError,
    SourceRecord,
    UnsafeSourcePath,
    enumerate_corpus,
    open_source,
    open_source_bytes,
)
from retrieval_service.index.manifest import Manifest, write_manifest
from tests.retrieval.buildutil import folder_to_tars


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from tests.imagegen import write_image_folder

    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root, {"b_zebra": ("stripes", 5.0), "a_dots": ("dots", 6.0)}, per_class=3, size=32)
    (root / "a_dots" / "UPPER.PNG").write_bytes((root / "a_dots" / "a_dots_0000.png").read_bytes())
    (root / "a_dots" / "notes.txt").write_text("not an image")
    (root / "a_dots" / ".hidden.png").write_bytes(b"x")
    (root / "b_zebra" / "nested").mkdir()
    (root / "b_zebra" / "nested" / "deep.png").write_bytes(
        (root / "b_zebra" / "b_zebra_0000.png").read_bytes()
    )
    (root / "loose.png").write_bytes(b"files directly under the root are not in any class")
    return root


def test_image_folder_is_sorted_labelled_and_stable(folder):
    corpus = enumerate_corpus(folder)
    assert corpus.kind == "folder" and corpus.classes == ["a_dots", "b_zebra"]
    paths = [r.path for r in corpus.records]
    assert paths == [
        "a_dots/UPPER.PNG",
        "a_dots/a_dots_0000.png",
        "a_dots/a_dots_0001.png",
        "a_dots/a_dots_0002.png",
        "b_zebra/b_zebra_0000.png",
        "b_zebra/b_zebra_0001.png",
        "b_zebra/b_zebra_0002.png",
        "b_zebra/nested/deep.png",
    ]
    assert [r.source_id for r in corpus.records] == list(range(8))
    assert [r.label for r in corpus.records] == [0] * 4 + [1] * 4
    assert {r.class_name for r in corpus.records[4:]} == {"b_zebra"}
    assert corpus.records[0].ext == "png" and corpus.records[0].member is None
    assert corpus.records[1].nbytes == (folder / "a_dots" / "a_dots_0000.png").stat().st_size
    assert enumerate_corpus(str(folder)).records == corpus.records  # same corpus, same ids
    assert (
        open_source_bytes(folder, corpus.records[1]) == (folder / "a_dots" / "a_dots_0000.png").read_bytes()
    )


def test_symlink_leaving_the_root_is_reported_not_followed(tmp_path):
    root = tmp_path / "root"
    (root / "cls").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"outside")
    (root / "cls" / "ok.png").write_bytes(b"inside")
    os.symlink(outside, root / "cls" / "escape.png")
    corpus = enumerate_corpus(root)
    assert [r.path for r in corpus.records] == ["cls/ok.png"]
    assert (
        corpus.skipped[0]["path"] == "cls/escape.png"
        and "leaves the corpus root" in corpus.skipped[0]["reason"]
    )
    evil = replace(corpus.records[0], path="../secret.png")
    with pytest.raises(UnsafeSourcePath):
        open_source_bytes(root, evil)
    with pytest.raises(UnsafeSourcePath):
        open_source_bytes(root, replace(corpus.records[0], path=str(outside)))


def test_tar_shards_read_in_place_with_names_or_indices(folder, tmp_path):
    folder_corpus = enumerate_corpus(folder)
    tars = folder_to_tars(folder, tmp_path / "names", n_tars=2, cls_as="name")
    corpus = enumerate_corpus(tmp_path / "names")
    assert corpus.kind == "tar" and corpus.classes == folder_corpus.classes
    # Same images, same order, same labels as the folder layout; only the locations differ.
    assert [(r.path, r.member) for r in corpus.records][:2] == [
        ("shard-000.tar", "a_dots/UPPER.PNG"),
        ("shard-000.tar", "a_dots/a_dots_0000.png"),
    ]
    assert [r.label for r in corpus.records] == [r.label for r in folder_corpus.records]
    for rec, ref in zip(corpus.records, folder_corpus.records, strict=True):
        assert rec.offset is not None and rec.nbytes == ref.nbytes
        assert open_source_bytes(corpus.root, rec) == open_source_bytes(folder, ref)
    # Streaming: chunked reads and seeks stay inside the member.
    rec = corpus.records[5]
    expected = open_source_bytes(folder, folder_corpus.records[5])
    with open_source(corpus.root, rec) as stream:
        head = stream.read(10)
        stream.seek(-7, io.SEEK_END)
        tail = stream.read(100)
    assert head == expected[:10] and tail == expected[-7:]
    # Without the recorded offset the member is looked up in the tar.
    assert open_source_bytes(corpus.root, replace(rec, offset=None)) == expected
    # A glob and a single tar enumerate the same way.
    assert enumerate_corpus(str(tmp_path / "names" / "*.tar")).records == corpus.records
    single = enumerate_corpus(tars[1])
    assert single.records[0].path == "shard-001.tar" and single.classes == ["b_zebra"]


def test_tar_integer_classes_use_classes_txt_and_report_unlabelled(folder, tmp_path):
    folder_to_tars(folder, tmp_path / "ints", n_tars=1, cls_as="index")
    corpus = enumerate_corpus(tmp_path / "ints")
    assert corpus.classes == ["0", "1"] and [r.label for r in corpus.records] == [0] * 4 + [1] * 4
    (tmp_path / "ints" / "classes.txt").write_text("dots\nzebra\n")
    with tarfile.open(tmp_path / "ints" / "shard-001.tar", "w") as archive:
        info = tarfile.TarInfo("orphan.png")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    corpus = enumerate_corpus(tmp_path / "ints")
    assert corpus.classes == ["dots", "zebra"] and corpus.records[-1].class_name == "zebra"
    assert corpus.skipped == [
        {"path": "shard-001.tar", "member": "orphan.png", "reason": "no <key>.cls label"}
    ]


def test_missing_or_invalid_sources_raise(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        enumerate_corpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match="no .tar or .parquet files"):
        enumerate_corpus(str(tmp_path / "*.tar"))
    (tmp_path / "file.zip").write_bytes(b"PK")
    with pytest.raises(CorpusError, match="not a .tar"):
        enumerate_corpus(tmp_path / "file.zip")
    assert enumerate_corpus(tmp_path).records == []


def test_manifest_roundtrip_and_concurrent_reads(tmp_path, folder):
    corpus = enumerate_corpus(folder)
    records = [replace(r, sha256=f"{r.source_id:064x}", width=32, height=32) for r in corpus.records]
    write_manifest(tmp_path / "manifest.sqlite", records, corpus.classes)
    manifest = Manifest.open(tmp_path / "manifest.sqlite")
    assert len(manifest) == 8 and manifest.classes == ["a_dots", "b_zebra"]
    assert manifest.get(3) == records[3] and manifest.get(8) is None
    assert manifest.get_many([7, 99, 0, 7]) == [records[7], None, records[0], records[7]]
    np.testing.assert_array_equal(manifest.labels([7, 0, 4]), np.array([1, 0, 1], dtype=np.int32))
    with pytest.raises(IndexError):
        manifest.labels([8])
    errors: list[BaseException] = []

    def reader(offset: int) -> None:
        try:
            for i in range(200):
                sid = (i + offset) % 8
                assert manifest.get(sid) == records[sid]
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    manifest.close()
    with pytest.raises(FileNotFoundError):
        Manifest.open(tmp_path / "missing.sqlite")
    assert isinstance(records[0], SourceRecord)
