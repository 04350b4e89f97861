"""Index builds: both corpus layouts, bad files, reproducibility, the index directory and its verification."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from retrieval_service.build.builder import BuildError, build_index
from retrieval_service.index.loaded import LoadedIndex
from services.errors import IndexIntegrityError
from tests.retrieval.buildutil import SMALL, add_bad_files, folder_to_tars, image_folder

N_GOOD = 36  # 6 classes x 6 images


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = image_folder(tmp_path_factory.mktemp("corpus") / "src", per_class=6, size=40)
    return root, add_bad_files(root)


@pytest.fixture(scope="module")
def built(corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "index"
    build_index(corpus_dir[0], out, **SMALL)
    return out


def manifest_rows(index_dir: Path) -> list[tuple]:
    with sqlite3.connect(index_dir / "manifest.sqlite") as conn:
        return conn.execute("SELECT * FROM sources ORDER BY source_id").fetchall()


def test_folder_build_skips_bad_files_and_writes_the_index_layout(built, corpus_dir):
    root, bad = corpus_dir
    report = json.loads((built / "build_report.json").read_text())["report"]
    assert report["size"] == N_GOOD and report["candidates"] == N_GOOD + 3 and report["shards"] == 5
    reasons = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert set(reasons) == set(bad)
    for path, expected in bad.items():
        assert expected in reasons[path].lower(), (path, reasons[path])

    info = json.loads((built / "index.json").read_text())
    assert info["size"] == N_GOOD and info["dim"] == 48 and info["bins"] == 16 and info["bank"] == "gabor"
    assert info["classes"] == ["blobs", "checker", "dots", "noise", "rings", "stripes"]
    assert info["source_root"] == str(root.resolve()) and info["code_version"]
    assert {"spec.json", "manifest.sqlite", "build_report.json"} <= set(info["checksums"])
    assert not (built / "shards").exists() and not Path(f"{built}.partial").exists()

    index = LoadedIndex.load(built)
    assert index.size == N_GOOD and index.spec.spec_hash == info["spec_hash"] and len(index.index_id) == 16
    assert index.classes == info["classes"] and index.manifest.classes == info["classes"]
    # Ids are contiguous over readable images, in sorted order, and each points at its file.
    rows = manifest_rows(built)
    assert [r[0] for r in rows] == list(range(N_GOOD))
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    assert not set(bad) & {r[1] for r in rows}
    record = index.manifest.get(7)
    assert record.label == info["classes"].index(record.class_name) and (record.width, record.height) == (
        40,
        40,
    )
    with index.open_source(7) as stream:
        data = stream.read()
    assert data == (root / record.path).read_bytes()
    import hashlib

    assert hashlib.sha256(data).hexdigest() == record.sha256
    hists = index.engine.histograms(np.arange(N_GOOD))  # (N, D, B)
    assert hists.shape == (N_GOOD, 48, 16)
    np.testing.assert_allclose(hists.sum(axis=2), 1.0, atol=2e-2)  # float16 storage
    with pytest.raises(KeyError):
        index.open_source(N_GOOD)
    index.close()


def test_rebuild_is_identical_and_tar_layout_gives_the_same_descriptors(built, corpus_dir, tmp_path):
    root, _ = corpus_dir
    again = tmp_path / "again"
    build_index(root, again, **SMALL)
    assert (again / "histograms.f16").read_bytes() == (built / "histograms.f16").read_bytes()
    assert (again / "spec.json").read_bytes() == (built / "spec.json").read_bytes()
    assert manifest_rows(again) == manifest_rows(built)
    assert LoadedIndex.load(again).index_id == LoadedIndex.load(built).index_id

    folder_to_tars(root, tmp_path / "tars", n_tars=2)
    report = build_index(tmp_path / "tars", tmp_path / "tar-index", **SMALL)
    assert report.size == N_GOOD and len(report.skipped) == 3
    assert {(e["path"], e["member"]) for e in report.skipped} >= {
        ("shard-000.tar", "dots/dots_zz_truncated.png")
    }
    tar_index, folder_index = LoadedIndex.load(tmp_path / "tar-index"), LoadedIndex.load(built)
    assert tar_index.spec.spec_hash == folder_index.spec.spec_hash
    ids = np.arange(N_GOOD)
    np.testing.assert_array_equal(tar_index.engine.histograms(ids), folder_index.engine.histograms(ids))
    np.testing.assert_array_equal(tar_index.manifest.labels(ids), folder_index.manifest.labels(ids))
    record = tar_index.manifest.get(12)
    assert record.member == folder_index.manifest.get(12).path and record.offset > 0
    assert tar_index.open_source(12).read() == folder_index.open_source(12).read()


def test_existing_index_needs_force_and_force_replaces_it(built, corpus_dir, tmp_path):
    out = tmp_path / "idx"
    build_index(corpus_dir[0], out, **SMALL)
    with pytest.raises(BuildError, match="already holds an index.*--force"):
        build_index(corpus_dir[0], out, **SMALL)
    (out / "marker").write_text("old index")
    report = build_index(corpus_dir[0], out, force=True, **{**SMALL, "bins": 8})
    assert report.size == N_GOOD and not (out / "marker").exists()
    assert json.loads((out / "index.json").read_text())["bins"] == 8
    assert not Path(f"{out}.replaced").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(BuildError, match="not empty and is not an index"):
        build_index(corpus_dir[0], tmp_path / "busy", force=True, **SMALL)


def test_stale_partial_from_other_settings_is_discarded(corpus_dir, tmp_path):
    out = tmp_path / "idx"
    partial = Path(f"{out}.partial")
    (partial / "shards").mkdir(parents=True)
    (partial / "build_state.json").write_text(json.dumps({"fingerprint": "another build"}))
    (partial / "spec.json").write_text("{}")  # would fail to load if it were reused
    report = build_index(corpus_dir[0], out, **SMALL)
    assert report.size == N_GOOD and report.resumed_shards == 0


def test_loaded_index_detects_damage(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    LoadedIndex.load(copy).close()
    original = (copy / "histograms.f16").read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (copy / "histograms.f16").write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="histograms.f16.*checksum"):
        LoadedIndex.load(copy)
    (copy / "histograms.f16").write_bytes(original)
    (copy / "manifest.sqlite").unlink()
    with pytest.raises(IndexIntegrityError, match="missing"):
        LoadedIndex.load(copy)
    with pytest.raises(IndexIntegrityError, match="no index.json"):
        LoadedIndex.load(tmp_path)


def test_invalid_build_settings_raise_build_error(corpus_dir, tmp_path):
    with pytest.raises(BuildError, match="batch_size"):
        build_index(corpus_dir[0], tmp_path / "x", **{**SMALL, "batch_size": 0})
    with pytest.raises(BuildError, match="conv"):
        build_index(corpus_dir[0], tmp_path / "x", bank="conv", conv_weights=tmp_path / "none.pt", **SMALL)
    assert not (tmp_path / "x").exists()


def test_partial_killed_after_its_commit_point_is_just_renamed(built, corpus_dir, tmp_path):
    import shutil

    out = tmp_path / "idx"
    shutil.copytree(built, Path(f"{out}.partial"))  # index.json written, scratch files gone, not yet renamed
    report = build_index(corpus_dir[0], out, **SMALL)
    assert report.size == N_GOOD and not Path(f"{out}.partial").exists()
    assert (out / "histograms.f16").read_bytes() == (built / "histograms.f16").read_bytes()
    assert (out / "index.json").read_bytes() == (built / "index.json").read_bytes()  # not rebuilt
