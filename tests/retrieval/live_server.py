"""A REAL retrieval server for API tests: ``python -m retrieval_service serve`` in a subprocess, free port.

``build_test_index`` builds a small index from generated images; ``live_server`` starts the server, waits for
``/readyz`` with a deadline (failing with the server's log if it dies or never gets ready), yields its base
URL and terminates it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.imagegen import write_image_folder

REPO = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 60.0


def build_test_index(root: Path, per_class: int = 8, size: int = 32, bins: int = 8, seed: int = 0) -> Path:
    """Index of generated images (6 texture classes, ``root/images``) in ``root/index``; reused if built.

    Test modules pass a session-wide ``root`` (``shared_index_root``) so one build serves them all:
    extraction is the slow part of server tests on a shared CPU.
    """
    from retrieval_service.build.builder import build_index

    out = root / "index"
    if (out / "index.json").is_file():
        return out
    images = root / "images"
    write_image_folder(images, per_class=per_class, size=max(size, 32), seed=seed)
    build_index(images, out, size=size, bins=bins, batch_size=64, workers=0, progress=False)
    return out


def shared_index_root(tmp_path_factory, per_class: int = 8, size: int = 32, bins: int = 8) -> Path:
    """A directory under the session's base temp dir, the same for every module using these parameters."""
    root = tmp_path_factory.getbasetemp() / f"svc-index-{per_class}-{size}-{bins}"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def live_server(
    index_dir: Path,
    log_path: Path,
    redis_url: str = "",
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Start the server with ``env`` added to the environment; yield ``http://127.0.0.1:<port>``."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "retrieval_service",
        "serve",
        "--index",
        str(index_dir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    full_env = {**os.environ, "REDIS_URL": "", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(base, proc, log_path)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(
    base: str,
    proc: subprocess.Popen | None,
    log_path: Path,
    deadline_s: float = READY_DEADLINE_S,
    expect: tuple[str, ...] = ("ok", "degraded"),
) -> dict:
    """Poll /readyz until its status is in ``expect``; fail with the log on exit or deadline."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        try:
            r = httpx.get(f"{base}/readyz", timeout=2.0)
            last = f"{r.status_code} {r.text}"
            if r.status_code == 200 and r.json()["status"] in expect:
                return r.json()
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.05)  # between readiness probes, bounded by the deadline
    raise TimeoutError(
        f"server not ready ({expect}) within {deadline_s} s; last: {last}\n"
        f"{log_path.read_text(errors='replace')[-4000:]}"
    )
