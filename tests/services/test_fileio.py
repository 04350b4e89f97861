"""services.fileio: atomic replacement, clean failure, ordinary file modes, streaming sha256."""

from __future__ import annotations

import hashlib
import os

import pytest

from services.fileio import atomic_path, atomic_write, atomic_writer, file_sha256


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, "old")
    atomic_write(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_path_gives_a_named_file_for_writers_that_need_one(tmp_path):
    path = tmp_path / "db.sqlite"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"x" * 10)
        assert not path.exists()  # nothing visible until the block ends cleanly
    assert path.read_bytes() == b"x" * 10


def test_files_get_the_mode_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    atomic_write(tmp_path / "atomic", b"")
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_file_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path, block=1024) == hashlib.sha256(data).hexdigest()
