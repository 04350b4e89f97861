"""The demo's process supervision: children and grandchildren stopped, failures reported, signals honoured."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sjft.demo.procs import DemoError, Supervisor

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for_text(path: Path, deadline_s: float = 20.0) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text
        time.sleep(0.05)  # polling a file a child writes: there is no readiness event to wait on
    raise AssertionError(f"{path} stayed empty")


def test_stop_all_ends_the_child_and_its_children(tmp_path):
    with Supervisor(tmp_path, out=io.StringIO()) as sup:
        proc = sup.start("tree", ["bash", "-c", "sleep 600 & echo $!; wait"])
        grandchild = int(_wait_for_text(tmp_path / "tree.log").split()[0])
        assert _alive(proc.pid) and _alive(grandchild)
    assert proc.returncode is not None
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild in the child's process group must be stopped too"


def test_run_reports_the_exit_code_and_the_end_of_the_output(tmp_path):
    sup = Supervisor(tmp_path, out=io.StringIO())
    sup.run("ok", [sys.executable, "-c", "print('fine')"], timeout_s=30)
    assert (tmp_path / "ok.log").read_text() == "fine\n"
    with pytest.raises(DemoError, match=r"exit code 3[\s\S]*last words"):
        sup.run("bad", [sys.executable, "-c", "print('last words'); raise SystemExit(3)"], timeout_s=30)


def test_run_stops_a_child_past_its_deadline(tmp_path):
    sup = Supervisor(tmp_path, out=io.StringIO())
    start = time.monotonic()
    with pytest.raises(DemoError, match="ran past its 1 s limit"):
        sup.run("silent", ["sleep", "60"], timeout_s=1)
    assert time.monotonic() - start < 15


def test_wait_ready_fails_at_once_when_the_child_dies(tmp_path):
    from tests.conftest import free_port

    sup = Supervisor(tmp_path, out=io.StringIO())
    proc = sup.start("dies", [sys.executable, "-c", "print('no index'); raise SystemExit(4)"])
    start = time.monotonic()
    with pytest.raises(DemoError, match=r"exited with code 4[\s\S]*no index"):
        sup.wait_ready("dies", proc, f"http://127.0.0.1:{free_port()}/readyz", deadline_s=60)
    assert time.monotonic() - start < 30


def test_sigterm_stops_everything_the_demo_started(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from sjft.demo.procs import Supervisor, install_signal_handlers
        install_signal_handlers()
        with Supervisor(Path({str(tmp_path)!r})) as sup:
            try:
                child = sup.start("child", ["sleep", "600"])
                print("child", child.pid, flush=True)
                time.sleep(600)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
        print("stopped", flush=True)
    """)
    demo = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = ""
    while not line.startswith("child "):  # blocks until the child is started
        line = demo.stdout.readline()
        assert line, "the script ended before starting its child"
    child_pid = int(line.split()[-1])
    assert _alive(child_pid)
    demo.send_signal(signal.SIGTERM)
    rest = demo.communicate(timeout=30)[0]
    assert "interrupted" in rest and "stopped" in rest
    assert not _alive(child_pid)
