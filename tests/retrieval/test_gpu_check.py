"""bench/gpu_check.sh on a machine (or a process) without a GPU: a clear message and the "skipped" status 77.

CUDA_VISIBLE_DEVICES="" hides every GPU from torch and FAISS, so this path is tested on any machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_says_no_gpu_and_exits_77():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 77, (done.returncode, done.stdout, done.stderr)
    assert "SKIPPED: no GPU" in done.stderr and "nothing was checked" in done.stderr
    assert "==" not in done.stdout  # no check ran (and none claimed to pass)
