"""``python -m retrieval_service verify``: drift between an index and its corpus; exit 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from retrieval_service.index.loaded import LoadedIndex
from tests.retrieval.live_server import REPO, build_test_index


def verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retrieval_service", "verify", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_verify_reports_missing_changed_and_new_files(tmp_path):
    index_dir = build_test_index(tmp_path, per_class=3)
    images = tmp_path / "images"
    clean = verify("--index", str(index_dir), "--no-progress")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("clean:") and "0 missing, 0 changed" in clean.stdout

    index = LoadedIndex.load(index_dir, verify=False)
    gone, touched, rewritten = (index.record(i) for i in (1, 4, 7))
    index.close()
    (images / gone.path).unlink()
    touched_path = images / touched.path
    future = touched_path.stat().st_mtime_ns + 10**12
    os.utime(touched_path, ns=(future, future))  # newer than the index, bytes unchanged
    rewritten_path = images / rewritten.path
    before = rewritten_path.stat()
    data = bytearray(rewritten_path.read_bytes())
    data[-20] ^= 0xFF
    rewritten_path.write_bytes(bytes(data))  # same size, other bytes...
    os.utime(rewritten_path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and the old mtime
    shutil.copy(touched_path, touched_path.with_name("zz_new.png"))

    quick = verify("--index", str(index_dir), "--json", "--no-progress")
    assert quick.returncode == 1, quick.stderr
    summary, _, body = quick.stdout.partition("\n")
    report = json.loads(body)
    assert summary.startswith("DRIFT:") and report["clean"] is False
    assert [m["source_id"] for m in report["missing"]] == [1]
    assert [c["source_id"] for c in report["changed"]] == [4]  # mtime: the hidden rewrite is not seen
    assert [n["path"] for n in report["new"]] == [touched.path.rsplit("/", 1)[0] + "/zz_new.png"]

    hashed = json.loads(verify("--index", str(index_dir), "--hash", "--json").stdout.partition("\n")[2])
    assert [c["source_id"] for c in hashed["changed"]] == [7]  # content: the rewrite, not the mere touch
    assert "content differs" in hashed["changed"][0]["reason"]


def test_verify_bad_usage_exits_2_with_one_line(tmp_path):
    result = verify("--index", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "no index.json" in result.stderr
    assert verify().returncode == 2  # argparse: --index is required
