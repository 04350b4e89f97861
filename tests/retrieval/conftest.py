"""Fixtures of the retrieval tests: the session's small index of generated images, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.retrieval.live_server import build_test_index, shared_index_root


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """The shared test index (6 texture classes, 8 images each, 32 px), reused by every server test module."""
    return build_test_index(shared_index_root(tmp_path_factory))
