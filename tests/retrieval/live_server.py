"""Our tests' side of a REAL retrieval server: a small index of generated images, shared per session.

Starting and waiting for the server lives in ``retrieval_service.testing`` (public: benchmarks, the demo and
users' own suites use the same code); it is re-exported here for the test modules.
"""

from __future__ import annotations

from pathlib import Path

from retrieval_service.testdata import build_test_index
from retrieval_service.testing import READY_DEADLINE_S, live_server, wait_ready

REPO = Path(__file__).resolve().parents[2]

__all__ = ["READY_DEADLINE_S", "REPO", "build_test_index", "live_server", "shared_index_root", "wait_ready"]


def shared_index_root(tmp_path_factory, per_class: int = 8, size: int = 32, bins: int = 8) -> Path:
    """A directory under the session's base temp dir, the same for every module using these parameters."""
    root = tmp_path_factory.getbasetemp() / f"svc-index-{per_class}-{size}-{bins}"
    root.mkdir(exist_ok=True)
    return root
