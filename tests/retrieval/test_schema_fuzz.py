"""Schemathesis against a REAL server (auth on, real Redis, a small real index): every check, zero findings.

The CLI runs as a subprocess bounded by examples, ``MAX_EXAMPLES`` per operation and phase, never by time: a
time cap (``--max-time``) made the amount tested depend on how busy the machine was, and a loaded box once
stopped at 220 examples and failed. ``SAFETY_NET_S`` only ends a run that hangs. Then its JSON report is
read. Operations may answer 422 to schema-valid data only where the served index decides
(``schemathesis.toml`` beside this file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.retrieval.live_server import build_test_index, live_server, shared_index_root

HERE = Path(__file__).resolve().parent
TOKEN = "fuzz-" + uuid.uuid4().hex[:8]
MAX_EXAMPLES = 25
MIN_GENERATED = 500  # what MAX_EXAMPLES per operation and phase yields at least, however slow the machine
SAFETY_NET_S = 1800  # a hung run, not a slow one: far beyond any run seen (~2 min on a loaded 2-core box)
SEED = 1


def schemathesis_cli() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    found = str(exe) if exe.is_file() else shutil.which("schemathesis")
    if not found:
        pytest.fail("the schemathesis CLI is not installed: pip install -e '.[test]'")
    return found


def test_schemathesis_finds_nothing(tmp_path_factory, redis_url, tmp_path):
    index_dir = build_test_index(shared_index_root(tmp_path_factory))
    env = {
        "SJFT_API_TOKENS": TOKEN,
        "SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}",
        # Schemathesis sends hundreds of requests without or with wrong credentials and expects 401 to each.
        "SJFT_AUTH_FAILURES_PER_MINUTE": "1000000",
        "SJFT_LOG_LEVEL": "warning",
    }
    report = tmp_path / "report.json"
    with live_server(index_dir, tmp_path / "server.log", redis_url=redis_url, env=env) as base:
        cmd = [
            schemathesis_cli(), "--config-file", str(HERE / "schemathesis.toml"),
            "run", f"{base}/openapi.json",
            "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED), "--no-shrink", "--warnings", "off",
            "--request-timeout", "30", "--report", "json", "--report-json-path", str(report),
        ]
        proc = subprocess.run(
            cmd, cwd=tmp_path, capture_output=True, text=True, timeout=SAFETY_NET_S,
            env={**os.environ, "NO_COLOR": "1"},
        )
    result = json.loads(report.read_text())
    cases = result["test_cases"]
    print(
        f"schemathesis {result['schemathesis_version']}: {result['operations']['tested']} operations, "
        f"{cases['generated']} examples, {cases['unique_failures']} findings, {result['running_time']:.0f} s"
    )
    assert proc.returncode == 0 and result["exit_code"] == 0, proc.stdout[-8000:]
    assert cases["unique_failures"] == 0 and not result["failures"] and not result["errors"]
    assert result["operations"]["tested"] == result["operations"]["total"] >= 18
    assert all(p["status"] in ("success", "skip") for p in result["phases"].values()), result["phases"]
    assert cases["generated"] >= MIN_GENERATED, "a fuzz run this short tested too little to mean anything"
