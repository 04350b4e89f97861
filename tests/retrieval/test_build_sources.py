"""Builds from Parquet, a ``datasets`` save_to_disk directory, CSV/JSONL lists and symlinked trees: the same
images give the same index as their ImageFolder, a live server answers queries and streams every kind of
source back byte for byte, and bad columns, labels or links end the CLI with exit 2 and one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval_service.build.builder import BuildError, build_index
from retrieval_service.cli import main
from tests.imagegen import write_image_folder
from tests.retrieval import sourcegen
from tests.retrieval.buildutil import SMALL
from tests.retrieval.live_server import live_server


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src-folder") / "images"
    write_image_folder(root, per_class=3, size=36, seed=5)
    return root


@pytest.fixture(scope="module")
def folder_index(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src-idx") / "folder"
    build_index(folder, out, **SMALL)
    return out


def _source(kind: str, folder: Path, tmp: Path) -> tuple[str, dict]:
    """(--source argument, extra build_index options) for one layout of the folder's images."""
    if kind == "parquet-dir":
        return str(sourcegen.write_parquet(folder, tmp / "pq")), {}
    if kind == "parquet-glob-names":
        sourcegen.write_parquet(folder, tmp / "pqn", struct=False, names=True)
        return str(tmp / "pqn" / "data" / "*.parquet"), {}
    if kind == "save_to_disk":
        return str(sourcegen.write_save_to_disk(folder, tmp / "arrow")), {}
    if kind == "csv":
        return str(sourcegen.write_csv(folder)), {}
    if kind == "jsonl":
        return str(sourcegen.write_jsonl(folder)), {}
    return str(sourcegen.write_symlink_tree(folder, tmp / "links")), {"follow_symlinks": True}


@pytest.mark.parametrize(
    "kind", ["parquet-dir", "parquet-glob-names", "save_to_disk", "csv", "jsonl", "symlinks"]
)
def test_each_format_builds_the_folder_index_and_serves_its_images(
    kind, folder, folder_index, tmp_path, redis_url, redis_namespace
):
    source, options = _source(kind, folder, tmp_path)
    out = tmp_path / "index"
    report = build_index(source, out, **SMALL, **options)
    rows, classes = sourcegen.folder_rows(folder)
    assert report.size == len(rows) and report.skipped == []
    # Same images in the same order: the same edges, histograms and labels as the ImageFolder build.
    assert (out / "spec.json").read_bytes() == (folder_index / "spec.json").read_bytes()
    assert (out / "histograms.f16").read_bytes() == (folder_index / "histograms.f16").read_bytes()
    manifest = sqlite3.connect(out / "manifest.sqlite")
    query = "SELECT path, member, label, ext, nbytes FROM sources ORDER BY source_id"
    stored = manifest.execute(query).fetchall()
    assert [r[2] for r in stored] == [label for _, _, label, _ in rows]
    assert all(r[3] == "png" and r[4] == len(data) for r, (_, data, _, _) in zip(stored, rows, strict=True))
    if kind.startswith("parquet") or kind == "save_to_disk":
        path, member = stored[7][:2]
        assert path.endswith((".parquet", ".arrow")) and member.count("/") == 2  # file + group/row/column
        assert json.loads((out / "index.json").read_text())["classes"] == classes
    if kind == "symlinks":  # the resolved targets are what the manifest records
        assert stored[0][0] == str((folder / rows[0][0]).resolve()) and stored[0][1].startswith("link:")

    env = {"SJFT_REDIS_PREFIX": redis_namespace}
    with live_server(out, tmp_path / "server.log", redis_url=redis_url, env=env) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            for source_id in (0, 7, len(rows) - 1):
                image = client.get(f"/v1/sources/{source_id}")
                assert image.status_code == 200, image.text
                assert image.content == rows[source_id][1]
                assert image.headers["content-type"] == "image/png"
            found = client.post("/v1/neighbors", json={"queries": [{"id": "q", "source_id": 7}], "k": 3})
            assert found.status_code == 200, found.text
            first = found.json()["results"][0]["neighbors"][0]
            assert first["source_id"] == 7 and first["distance"] == pytest.approx(0, abs=1e-6)
            tar = client.post("/v1/sources/stream", json={"ids": [3, 0]})
            assert tar.status_code == 200 and rows[3][1] in tar.content and rows[0][1] in tar.content


def test_symlinks_leaving_the_root_are_refused_naming_the_flag(folder, tmp_path, capsys):
    links = sourcegen.write_symlink_tree(folder, tmp_path / "links")
    with pytest.raises(BuildError, match="--follow-symlinks"):
        build_index(links, tmp_path / "idx", **SMALL)
    assert main(["build", "--source", str(links), "--out", str(tmp_path / "idx2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--follow-symlinks" in err[0]


def _bad_label_parquet(folder: Path, out: Path, labels: list) -> Path:
    rows, _ = sourcegen.folder_rows(folder)
    table = pa.table({"image": [data for _, data, _, _ in rows[: len(labels)]], "label": labels})
    out.mkdir()
    pq.write_table(table, out / "train.parquet")
    return out / "train.parquet"


def _uint64_label_parquet(folder: Path, out: Path) -> Path:
    rows, _ = sourcegen.folder_rows(folder)
    labels = pa.array([0, 2**64 - 1], pa.uint64())  # grew the class-name table to 22 GB before the bound
    out.mkdir()
    pq.write_table(pa.table({"image": [rows[0][1], rows[1][1]], "label": labels}), out / "train.parquet")
    return out


def _list_file(tmp: Path, name: str, text: str) -> Path:
    (tmp / "imgs").mkdir(exist_ok=True)
    (tmp / "imgs" / "a.JPEG").write_bytes(b"not read: labels are checked first")
    (tmp / name).write_text(text, encoding="utf-8")
    return tmp / name


def _linked_parquet(folder: Path, tmp: Path) -> Path:
    target = sourcegen.write_parquet(folder, tmp / "elsewhere")
    target = next(Path(target).rglob("*.parquet")) if Path(target).is_dir() else Path(target)
    (tmp / "linked").mkdir()
    (tmp / "linked" / "train.parquet").symlink_to(target)
    return tmp / "linked"


@pytest.mark.parametrize(
    ("make", "flags", "needle"),
    [
        # Issue 17, item 1: labels over the bound, named with their file and row.
        (
            lambda f, t: _uint64_label_parquet(f, t / "u64"),
            [],
            "label 18446744073709551615 in row 1 of group 0",
        ),
        (
            lambda f, t: _list_file(
                t, "huge.jsonl", '{"path": "imgs/a.JPEG", "label": 18446744073709551616}\n'
            ),
            [],
            "label 18446744073709551616 in line 1 of",
        ),
        (lambda f, t: _list_file(t, "big.csv", "imgs/a.JPEG,100000000\n"), [], "over the limit"),
        # Item 7: every malformed list ends in one line naming the line, never a traceback or exit 1.
        (lambda f, t: _list_file(t, "wide.csv", "imgs/a.JPEG," + "x" * 200_000 + "\n"), [], "line 1 of"),
        (
            lambda f, t: _list_file(
                t, "deep.jsonl", '{"path": "imgs/a.JPEG", "label": ' + "[" * 100_000 + "\n"
            ),
            [],
            "line 1 of",
        ),
        (
            lambda f, t: _list_file(t, "frac.csv", "imgs/a.JPEG,1.5\nimgs/a.JPEG,2\n"),
            [],
            "bad label '1.5' in line 1 of",
        ),
        (lambda f, t: _list_file(t, "neg.csv", "imgs/a.JPEG,3\nimgs/a.JPEG,-1\n"), [], "in line 2 of"),
        (
            lambda f, t: _list_file(t, "nul.jsonl", '{"path": "imgs/a.JPEG", "label": "ro\\u0000se"}\n'),
            [],
            "control character",
        ),
        (
            lambda f, t: _list_file(t, "hdr.csv", "path,label\n\nimgs/a.JPEG,cat\nimgs/a.JPEG,7\n"),
            [],
            "bad label 7 in line 4 of",
        ),
        (lambda f, t: _linked_parquet(f, t), [], "is a symbolic link to"),
        (lambda f, t: sourcegen.write_parquet(f, t / "p"), ["--image-column", "img"], "no column 'img'"),
        (lambda f, t: sourcegen.write_parquet(f, t / "p"), ["--label-column", "cls"], "--label-column"),
        (lambda f, t: sourcegen.write_parquet(f, t / "p"), ["--image-column", "idx"], "not image bytes"),
        (lambda f, t: _bad_label_parquet(f, t / "neg", [0, 1, -2]), [], "bad label -2 in row 2"),
        (lambda f, t: _bad_label_parquet(f, t / "flt", [0.5, 1.0]), [], "bad label 0.5"),
        (lambda f, t: _bad_label_parquet(f, t / "mix", ["a", None]), [], "bad label None"),
    ],
)
def test_bad_columns_and_labels_exit_2_with_one_line(make, flags, needle, folder, tmp_path, capsys):
    source = make(folder, tmp_path)
    code = main(["build", "--source", str(source), "--out", str(tmp_path / "idx"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "idx.partial").exists()


def test_list_rows_that_leave_the_directory_or_are_missing_are_skipped(folder, tmp_path):
    rows, _ = sourcegen.folder_rows(folder)
    listed = tmp_path / "list.csv"
    for rel, data, _, _ in rows[:2]:
        (tmp_path / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / rel).write_bytes(data)
    extra = ["../outside.png,dots", "imgs/missing.png,dots"]
    lines = [f"imgs/{rows[0][0]},{rows[0][3]}", *extra, f"imgs/{rows[1][0]},{rows[1][3]}"]
    listed.write_text("\n".join(lines))
    report = build_index(listed, tmp_path / "idx", **SMALL | {"edge_sample": 2})
    assert report.size == 2
    assert [s["path"] for s in report.skipped] == ["../outside.png", "imgs/missing.png"]
