"""A real retrieval service (subprocess + Redis) over a small generated index, and a small target set."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.retrieval.live_server import REPO, build_test_index, live_server, shared_index_root

from .helpers import make_target

# One thread per process: the machine is shared, and results must not depend on the thread count.
TRAINER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# Small and fast: squeezenet at 32 px, 3 classes x 3 train images, 2 rounds of ceil(3 * 9 * 2 / 4) = 14 steps.
FAST_FLAGS = [
    "--arch",
    "squeezenet1_0",
    "--input-size",
    "32",
    "--batch-size",
    "4",
    "--rounds",
    "2",
    "--k0",
    "2",
    "--k-max",
    "10",
    "--seed",
    "7",
    "--fetch-workers",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory) -> Path:
    return build_test_index(shared_index_root(tmp_path_factory))


@pytest.fixture(scope="session")
def small_target(tmp_path_factory) -> Path:
    return make_target(tmp_path_factory.mktemp("target"), train=3, val=2)


@pytest.fixture(scope="module")
def service(index_dir, tmp_path_factory, redis_url) -> Iterator[str]:
    log = tmp_path_factory.mktemp("svc") / "server.log"
    env = {"SJFT_REDIS_PREFIX": f"sjft-trainer-test-{os.getpid()}"}
    with live_server(index_dir, log, redis_url=redis_url, env=env) as url:
        yield url


def trainer_cmd(target: Path, service: str, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "run",
        "--target",
        str(target),
        "--service",
        service,
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        *FAST_FLAGS,
        *extra,
    ]


def run_trainer(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=TRAINER_ENV, capture_output=True, text=True, timeout=timeout)


def start_trainer(cmd: list[str], stderr_path: Path) -> subprocess.Popen:
    err = open(stderr_path, "w")  # noqa: SIM115 - closed with the process by the caller's wait
    proc = subprocess.Popen(cmd, cwd=REPO, env=TRAINER_ENV, stdout=subprocess.PIPE, stderr=err, text=True)
    proc.stderr_path = stderr_path  # for wait_for_line's failure message
    return proc


def wait_for_line(proc: subprocess.Popen, prefix: str) -> list[str]:
    """Read the trainer's stdout until a line starts with ``prefix`` (the process's own pace sets the
    deadline: the caller's pytest timeout); returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    rc = proc.wait()
    err = Path(proc.stderr_path).read_text()[-3000:] if hasattr(proc, "stderr_path") else ""
    out = "".join(lines)[-3000:]
    raise AssertionError(f"trainer ended (rc={rc}) before printing {prefix!r}:\n{out}\n{err}")
