"""``serve --workers N``: several uvicorn worker processes on one index and one Redis, really started.

The decision logic for GPU + workers is unit-tested here without a GPU; the rest runs a real two-worker server
(``python -m retrieval_service serve --workers 2``) against the real Redis.
"""

from __future__ import annotations

import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from retrieval_service import cli
from retrieval_service.api.server import check_workers, worker_env
from retrieval_service.api.settings import Settings, SettingsError
from tests.retrieval.live_server import build_test_index, live_server, shared_index_root

BODY_TIMEOUT_S = 3
PID_HEADER = "x-worker-pid"


# ------------------------------------------------------------------ decisions (no server, no GPU)
@pytest.mark.parametrize(
    ("device", "workers", "copies", "refused"),
    [
        ("cuda", 2, False, True),
        ("cuda:1", 4, False, True),
        ("cuda", 2, True, False),  # explicitly accepted: one GPU copy per worker
        ("cuda", 1, False, False),
        ("cpu", 8, False, False),
    ],
)
def test_gpu_with_several_workers_is_refused_unless_allowed(device, workers, copies, refused):
    settings = Settings(device=device, workers=workers, gpu_worker_copies=copies)
    if refused:
        with pytest.raises(SettingsError, match="SJFT_GPU_WORKER_COPIES"):
            check_workers(settings)
    else:
        check_workers(settings)


def test_cli_refuses_gpu_workers_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SJFT_GPU_WORKER_COPIES", raising=False)
    code = cli.main(["serve", "--index", str(tmp_path), "--workers", "2", "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_ERROR
    assert len(err.splitlines()) == 1 and "--workers 1" in err


def test_cli_rejects_zero_workers(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--workers", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_worker_env_carries_overrides_under_their_documented_names(tmp_path):
    env = worker_env({"index_dir": tmp_path, "port": 8123, "redis_url": "redis://h:1/0", "device": None,
                      "gpu_worker_copies": True})
    assert env == {"SJFT_INDEX_DIR": str(tmp_path), "SJFT_PORT": "8123", "REDIS_URL": "redis://h:1/0",
                   "SJFT_GPU_WORKER_COPIES": "1"}
    assert Settings.model_validate({}) is not None  # the names above are the ones Settings reads:
    for name, value in env.items():
        field = "redis_url" if name == "REDIS_URL" else name.removeprefix("SJFT_").lower()
        assert field in Settings.model_fields, value


# ------------------------------------------------------------------ a real two-worker server
@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, redis_url):
    index = build_test_index(shared_index_root(tmp_path_factory))
    log = tmp_path_factory.mktemp("workers") / "server.log"
    env = {"SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}",
           "SJFT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    with live_server(index, log, redis_url=redis_url, env=env, extra_args=["--workers", "2"]) as base:
        pids = _pids_answering(base, "/readyz", want=2)
        yield base, pids


def _get(base: str, path: str) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=30) as client:  # a new connection: any worker may accept it
        return client.get(path)


def _pids_answering(base: str, path: str, want: int, attempts: int = 400) -> set[str]:
    """PIDs of the workers that answered ``path`` with 200, over concurrent fresh connections, until ``want``
    distinct ones were seen (bounded by ``attempts`` requests, not by time)."""
    seen: set[str] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(attempts // 8):
            for r in pool.map(lambda _: _get(base, path), range(8)):
                if r.status_code == 200:
                    seen.add(r.headers[PID_HEADER])
            if len(seen) >= want:
                return seen
    pytest.fail(f"only workers {seen} answered {path} in {attempts} requests; expected {want}")


def test_two_different_worker_processes_answer(two_workers):
    base, pids = two_workers
    assert len(pids) == 2
    assert all(pid.isdigit() for pid in pids)


def test_job_registry_is_the_same_whichever_worker_answers(two_workers):
    base, _ = two_workers
    names = [f"job-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        created = list(pool.map(lambda n: httpx.post(f"{base}/v1/jobs", json={"name": n}, timeout=30), names))
    assert all(r.status_code == 201 for r in created), [r.text for r in created]
    ids = {r.json()["job_id"] for r in created}
    by_pid: dict[str, set[str]] = {}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(50):
            for r in pool.map(lambda _: _get(base, "/v1/jobs?limit=1000"), range(8)):
                assert r.status_code == 200
                by_pid.setdefault(r.headers[PID_HEADER], set()).update(
                    j["job_id"] for j in r.json()["jobs"] if j["job_id"] in ids)
                assert ids <= {j["job_id"] for j in r.json()["jobs"]}, "a worker misses jobs"
            if len(by_pid) >= 2:
                break
    assert len(by_pid) == 2, f"only {set(by_pid)} answered the listing"
    one = next(iter(ids))
    for _ in range(8):  # a job created anywhere is readable everywhere
        assert _get(base, f"/v1/jobs/{one}").json()["job_id"] == one


def test_a_stalled_client_does_not_block_other_requests(two_workers):
    base, _ = two_workers
    host, port = base.removeprefix("http://").split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
    for s in stalled:  # headers promise 1000 bytes of body; 10 arrive; then nothing
        s.sendall(b"POST /v1/neighbors HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"queries\"")
    body = {"queries": [{"id": "a", "source_id": 3}], "k": 5}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{base}/v1/neighbors", json=body, timeout=30),
                                range(16)))
    assert [r.status_code for r in answers] == [200] * 16
    assert len({r.headers[PID_HEADER] for r in answers}) >= 1
    for s in stalled:  # and each stalled request ends with 408 once its body deadline passes
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        s.close()
