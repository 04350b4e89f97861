"""Child processes of the demo: each in its own process group, output prefixed by name, all stopped on exit.

A child started with ``start_new_session=True`` does not see the terminal's Ctrl-C, so the supervisor is
the one place that stops it: SIGTERM to the whole group (uvicorn, dataloader workers), then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import httpx

from retrieval_service.testing import ServerNotReady, wait_until_ready


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and shows the end of its output."""


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


class Supervisor:
    """Runs and starts the demo's children; ``stop_all`` (also run by ``__exit__``) ends those still alive."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None, out: IO[str] | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.out = out or sys.stdout
        self.background: list[tuple[str, subprocess.Popen]] = []

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def run(self, name: str, argv: Sequence[str], timeout_s: float,
            env: dict[str, str] | None = None) -> None:
        """Run ``argv`` to the end, echoing output as ``[name] line`` and to a log; non-zero exit raises."""
        log_path = self.log_dir / f"{name}.log"
        tail: deque[str] = deque(maxlen=25)
        self.say(f"[{name}] $ {' '.join(argv)}")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                env={**self.env, **(env or {})}, start_new_session=True,
            )

            def pump() -> None:  # a thread, so a silent, hung child still meets the deadline below
                assert proc.stdout is not None
                for line in proc.stdout:
                    line = line.rstrip("\n")
                    log.write(line + "\n")
                    tail.append(line)
                    self.say(f"[{name}] {line}")

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise DemoError(f"{name} ran past its {timeout_s:.0f} s limit (log: {log_path})") from exc
            finally:
                _kill_group(proc, grace_s=5)  # no-op after a clean exit; also runs on Ctrl-C
                reader.join(timeout=5)
        if rc != 0:
            raise DemoError(f"{name} failed with exit code {rc} (log: {log_path}):\n" + "\n".join(tail))

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` in the background, output to ``<log_dir>/<name>.log``; stopped by ``stop_all``."""
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - owned by the child for its lifetime
        self.say(f"[{name}] $ {' '.join(argv)}  (log: {log.name})")
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
            start_new_session=True,
        )
        log.close()  # the child holds its own descriptor
        self.background.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait_ready(self, name: str, proc: subprocess.Popen, url: str, deadline_s: float,
                   fatal: Callable[[httpx.Response], str | None] | None = None) -> None:
        """Wait until ``GET url`` answers 200 (``retrieval_service.testing.wait_until_ready``); a child that
        exits, a ``fatal(response)`` reason or the deadline is a DemoError with the end of its log."""
        try:
            log = self.log_dir / f"{name}.log"
            wait_until_ready(url, proc, deadline_s, fatal=fatal, log_path=log, name=name)
        except ServerNotReady as exc:
            raise DemoError(str(exc)) from None

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop background children, newest first (the service before anything it depends on)."""
        while self.background:
            name, proc = self.background.pop()
            if proc.poll() is None:
                self.say(f"[{name}] stopping (pid {proc.pid})")
                _kill_group(proc, grace_s)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt: ``finally`` blocks stop the children as on Ctrl-C."""

    def _interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
