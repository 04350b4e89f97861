"""``python -m retrieval_service``: a build killed by SIGKILL resumes to the same index; errors exit 2."""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval_service.cli import main
from tests.retrieval.buildutil import image_folder

REPO = Path(__file__).resolve().parents[2]
BUILD_ARGS = [
    "--size",
    "32",
    "--batch-size",
    "4",
    "--shard-size",
    "4",
    "--edge-sample",
    "8",
    "--workers",
    "1",
    "--no-progress",
]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the in-process reference builds use one thread too
    return subprocess.Popen(
        [sys.executable, "-m", "retrieval_service", *args],
        cwd=REPO,
        text=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, deadline_s: float) -> str:
    """Read the child's stderr until a line containing ``needle``; fail at the deadline or on exit."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + deadline_s
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        if not selector.select(timeout=left):
            continue
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"build exited ({proc.wait()}) before {needle!r}:\n{''.join(seen)}")
        seen.append(line)
        if needle in line:
            return line
    proc.kill()
    pytest.fail(f"no {needle!r} within {deadline_s} s:\n{''.join(seen)}")


def manifest_rows(index_dir: Path) -> list[tuple]:
    with sqlite3.connect(index_dir / "manifest.sqlite") as conn:
        return conn.execute("SELECT * FROM sources ORDER BY source_id").fetchall()


def test_build_killed_with_sigkill_resumes_to_the_same_index(tmp_path, capsys, caplog):
    source = image_folder(tmp_path / "src", per_class=10, size=32)  # 60 images, 15 shards
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    proc = cli("build", "--source", str(source), "--out", str(killed), *BUILD_ARGS)
    wait_for_line(proc, "shard 1/15 written", deadline_s=180)  # logged once the shard file is renamed in
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = Path(f"{killed}.partial")
    finished = sorted(p.name for p in (partial / "shards").glob("shard-*.npz"))
    assert not killed.exists() and (partial / "spec.json").is_file()
    assert "shard-00000.npz" in finished and len(finished) < 15, finished  # interrupted mid-extraction

    # Rerun (in this process: same code path, without paying torch's import twice more) and compare with an
    # uninterrupted build of the same corpus.
    caplog.set_level(logging.INFO, logger="retrieval_service.build.builder")
    assert main(["build", "--source", str(source), "--out", str(killed), *BUILD_ARGS]) == 0
    assert "resuming" in caplog.text
    assert main(["build", "--source", str(source), "--out", str(reference), *BUILD_ARGS]) == 0
    assert not partial.exists()
    for name in ("histograms.f16", "spec.json"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert manifest_rows(killed) == manifest_rows(reference) and len(manifest_rows(killed)) == 60
    report = json.loads((killed / "build_report.json").read_text())["report"]
    assert report["resumed_shards"] == len(finished) >= 1
    assert json.loads((reference / "build_report.json").read_text())["report"]["resumed_shards"] == 0


def test_missing_source_fails_with_one_line_and_exit_2(tmp_path):
    proc = cli("build", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    out, err = proc.communicate(timeout=60)  # fails before importing torch
    assert proc.returncode == 2 and out == ""
    assert err.splitlines() == [f"error: source not found: {tmp_path / 'missing'}"]


def run_main(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_build_errors_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_main(capsys, "build", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert code == 2 and err.startswith("error: no images found") and err.count("\n") == 1

    source = image_folder(tmp_path / "src", per_class=2, size=32)
    (tmp_path / "a_file").write_text("a file, not a directory")
    code, err = run_main(capsys, "build", "--source", str(source), "--out", str(tmp_path / "a_file" / "idx"))
    assert code == 2 and err.startswith("error: cannot write the output") and err.count("\n") == 1
    if os.geteuid() != 0:  # root ignores directory permissions
        (tmp_path / "ro").mkdir(mode=0o500)
        code, err = run_main(capsys, "build", "--source", str(source), "--out", str(tmp_path / "ro" / "idx"))
        assert code == 2 and err.startswith("error: cannot write the output")

    with pytest.raises(SystemExit) as exc:
        main(["build", "--source", str(source)])  # no --out: argparse usage error
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["build", "--source", str(source), "--out", "x", "--batch-size", "0"])
    assert exc.value.code == 2


def test_existing_index_is_refused_without_force(tmp_path, capsys):
    source = image_folder(tmp_path / "src", per_class=2, size=32)
    args = [
        "build",
        "--source",
        str(source),
        "--out",
        str(tmp_path / "idx"),
        "--size",
        "32",
        "--workers",
        "0",
        "--edge-sample",
        "4",
        "--no-progress",
    ]
    code, _ = run_main(capsys, *args)
    assert code == 0
    code, err = run_main(capsys, *args)
    assert code == 2 and "already holds an index" in err and "--force" in err and err.count("\n") == 1
    code, _ = run_main(capsys, *args, "--force")
    assert code == 0


def test_serve_passes_only_given_flags_to_the_server(monkeypatch):
    import retrieval_service.api.server as server

    calls = []
    monkeypatch.setattr(server, "serve", lambda **kwargs: calls.append(kwargs))
    assert main(["serve", "--index", "/some/index", "--port", "8123", "--redis-url", "redis://x:1/2"]) == 0
    assert calls == [{"index_dir": "/some/index", "port": 8123, "redis_url": "redis://x:1/2"}]
    assert main(["serve", "--host", "0.0.0.0", "--device", "cpu"]) == 0
    assert calls[-1] == {"host": "0.0.0.0", "device": "cpu"}


def test_build_nlist_nprobe_flags_reach_the_engine_and_serve_overrides_nprobe(tmp_path, capsys):
    from retrieval_service.api.settings import Settings
    from retrieval_service.api.state import ServiceState
    from retrieval_service.index.loaded import LoadedIndex

    source = image_folder(tmp_path / "src", per_class=10, size=32)  # 60 images
    out = tmp_path / "ivf"
    args = ["build", "--source", str(source), "--out", str(out), *BUILD_ARGS, "--kind", "ivf"]
    code, err = run_main(capsys, *args, "--nlist", "61")
    assert code == 2 and "nlist 61 exceeds the 60 indexed images" in err
    assert not out.with_name("ivf.partial").exists()  # refused before any extraction
    assert main([*args, "--nlist", "6", "--nprobe", "2", "--force"]) == 0
    meta = json.loads((out / "engine.json").read_text())
    assert (meta["kind"], meta["nlist"], meta["nprobe"]) == ("ivf", 6, 2)

    state = ServiceState(Settings(index_dir=out, redis_url="", nprobe=5))
    index = LoadedIndex.load(out)
    state.start_loading(index)  # adopt the loaded index: the override applies to its engine
    assert state.ready.index.engine.nprobe == 5
    query = index.engine.histograms([0])
    assert state.ready.index.engine.search(query, k=3)[1][0, 0] == 0
    plain = ServiceState(Settings(index_dir=out, redis_url=""))
    plain.start_loading(LoadedIndex.load(out))
    assert plain.ready.index.engine.nprobe == 2
    for bad in ("0", "-3"):
        with pytest.raises(SystemExit):
            main(["build", "--source", str(source), "--out", str(out), "--nlist", bad])


def test_serve_nprobe_flag_is_passed_on(monkeypatch):
    import retrieval_service.api.server as server

    calls = []
    monkeypatch.setattr(server, "serve", lambda **kwargs: calls.append(kwargs))
    assert main(["serve", "--nprobe", "40"]) == 0
    assert calls == [{"nprobe": 40}]
