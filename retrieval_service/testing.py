"""Start a REAL retrieval server for tests, benchmarks and demos: ``python -m retrieval_service serve`` in a
subprocess on a free loopback port, ready when ``/readyz`` says so.

Public on purpose: users' own test suites want the same thing as ours (a real server over a small index, no
mocks). Nothing here imports the service itself, so it is cheap to import::

    from retrieval_service.testing import live_server

    with live_server("my-index", "server.log") as base_url:
        RetrievalClient(base_url).neighbors(...)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

READY_DEADLINE_S = 60.0
_PROBE_INTERVAL_S = 0.05


class ServerNotReady(RuntimeError):
    """The server exited, will never be ready, or missed its deadline; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _log_tail(log_path: str | os.PathLike | None, chars: int = 4000) -> str:
    if log_path is None or not Path(log_path).is_file():
        return ""
    return Path(log_path).read_text(errors="replace")[-chars:]


def wait_until_ready(
    url: str,
    proc: subprocess.Popen | None = None,
    deadline_s: float = READY_DEADLINE_S,
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    fatal: Callable[[httpx.Response], str | None] | None = None,
    log_path: str | os.PathLike | None = None,
    name: str = "server",
) -> httpx.Response:
    """Probe ``GET url`` until ``ready(response)``; returns that response.

    Raises ServerNotReady at once when ``proc`` exits or ``fatal(response)`` names a reason it never will be
    ready, and when ``deadline_s`` passes. The wait between probes is a bounded wait on the child itself, so a
    dying child is noticed immediately.
    """
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerNotReady(
                f"{name} exited with code {proc.returncode} before it was ready:\n{_log_tail(log_path)}"
            )
        try:
            response = httpx.get(url, timeout=2.0)
            last = f"{response.status_code} {response.text[:500]}"
            if ready(response):
                return response
            reason = fatal(response) if fatal else None
            if reason:
                raise ServerNotReady(f"{name} will not become ready: {reason}\n{_log_tail(log_path)}")
        except httpx.TransportError as exc:
            last = repr(exc)  # not listening yet
        if time.monotonic() > deadline:
            raise ServerNotReady(
                f"{name} not ready at {url} within {deadline_s:.0f} s; last: {last}\n{_log_tail(log_path)}"
            )
        if proc is None:
            time.sleep(_PROBE_INTERVAL_S)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_PROBE_INTERVAL_S)


def wait_ready(
    base: str,
    proc: subprocess.Popen | None,
    log_path: str | os.PathLike | None,
    deadline_s: float = READY_DEADLINE_S,
    expect: tuple[str, ...] = ("ok", "degraded"),
) -> dict:
    """Wait until the service's ``/readyz`` reports a status in ``expect``; returns its JSON body."""

    def ready(r: httpx.Response) -> bool:
        return r.status_code == 200 and r.json().get("status") in expect

    return wait_until_ready(f"{base}/readyz", proc, deadline_s, ready=ready, log_path=log_path).json()


def serve_command(
    index_dir: str | os.PathLike, port: int, redis_url: str = "", extra_args: Sequence[str] = ()
) -> list[str]:
    """The argv of ``python -m retrieval_service serve`` on loopback."""
    cmd = [sys.executable, "-m", "retrieval_service", "serve", "--index", str(index_dir)]
    cmd += ["--port", str(port), "--host", "127.0.0.1"]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    return cmd + list(extra_args)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; always reaps the child."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def live_server(
    index_dir: str | os.PathLike,
    log_path: str | os.PathLike,
    redis_url: str = "",
    env: dict[str, str] | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    cwd: str | os.PathLike | None = None,
    deadline_s: float = READY_DEADLINE_S,
) -> Iterator[str]:
    """Start the server with ``env`` added to the environment; yield ``http://127.0.0.1:<port>``; stop it.

    The caller's ``REDIS_URL`` is not inherited (pass ``redis_url``), so a test never talks to
    a Redis it did not ask for.
    """
    port = port or free_port()
    full_env = {**os.environ, "REDIS_URL": "", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    base = f"http://127.0.0.1:{port}"
    cmd = serve_command(index_dir, port, redis_url, extra_args)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(base, proc, log_path, deadline_s)
            yield base
        finally:
            stop(proc)
