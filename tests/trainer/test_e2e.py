"""End to end against a real service + Redis: rounds, outputs, resume after kill -9, a service restart,
DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.client import RetrievalClient
from tests.conftest import free_port
from tests.retrieval.live_server import REPO, live_server
from trainer.cli import main
from trainer.training.data import ImageStore, load_target
from trainer.training.distributed import Dist
from trainer.training.model import JointModel
from trainer.training.steps import accuracy, predict

from .conftest import TRAINER_ENV, run_trainer, start_trainer, trainer_cmd, wait_for_line

pytestmark = pytest.mark.timeout(240)


TIMING = ("steps_per_s", "images_per_s")  # wall-clock rates: the only fields that differ between equal runs


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference(service, small_target, tmp_path_factory) -> Path:
    """An uninterrupted two-round run."""
    out = tmp_path_factory.mktemp("ref")
    done = run_trainer(trainer_cmd(small_target, service, out / "run", out / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "run"


def test_two_rounds_write_metrics_curves_and_report_the_job(reference: Path, service):
    rows = metrics(reference)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["k_mean"] == 2 and rows[1]["sources_in_use"] >= rows[0]["sources_in_use"] > 0
    assert all(0 <= r["mean_class_acc"] <= 1 for r in rows)
    assert (reference / "curves.png").stat().st_size > 1000
    # Every selected source image sits in the cache exactly once (one ref per id, content-addressed objects).
    refs = [p for p in (reference.parent / "cache" / "refs").rglob("*") if p.is_file()]
    assert len(refs) == rows[-1]["sources_in_use"]
    with RetrievalClient(service) as client:
        jobs = [j for j in client.list_jobs() if j.target and j.config.get("out") == str(reference)]
    assert len(jobs) == 1 and jobs[0].status == "finished" and jobs[0].rounds == 2


def kill_after_round_0_and_resume(cmd: list[str], out: Path, stderr: Path) -> subprocess.CompletedProcess:
    proc = start_trainer(cmd, stderr)
    wait_for_line(proc, "round=0 ")
    # The checkpoint follows the printed line; kill as soon as it is in place, during round 1's work.
    while not (out / "checkpoint.pt").exists() and proc.poll() is None:
        os.sched_yield()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = run_trainer(cmd + ["--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after round 0" in done.stdout
    return done


def test_resume_after_kill_9_ends_with_identical_metrics(reference, service, small_target, tmp_path: Path):
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache")
    kill_after_round_0_and_resume(cmd, tmp_path / "run", tmp_path / "stderr.txt")
    assert metrics(tmp_path / "run") == metrics(reference)


def test_all_mode_resumes_its_corpus_stream_exactly(service, small_target, tmp_path: Path):
    """The most stateful mode: the resumed run continues the corpus stream where the checkpoint left it."""
    ref = trainer_cmd(small_target, service, tmp_path / "ref", tmp_path / "cache", "--source-mode", "all")
    assert run_trainer(ref).returncode == 0
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache", "--source-mode", "all")
    kill_after_round_0_and_resume(cmd, tmp_path / "run", tmp_path / "stderr.txt")
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")
    assert all(r["sources_trained"] == r["sources_in_use"] > 0 for r in metrics(tmp_path / "run"))


def test_service_restart_mid_run_is_survived(reference, index_dir, small_target, redis_url, tmp_path: Path):
    port = free_port()
    env = {"SJFT_REDIS_PREFIX": f"sjft-trainer-restart-{os.getpid()}"}
    url = f"http://127.0.0.1:{port}"
    cmd = trainer_cmd(
        small_target, url, tmp_path / "run", tmp_path / "cache", "--retries", "8", "--backoff", "0.5"
    )
    with live_server(index_dir, tmp_path / "a.log", redis_url=redis_url, env=env, port=port):
        proc = start_trainer(cmd, tmp_path / "stderr.txt")
        wait_for_line(proc, "round=0 ")
    # Down now; back on the same port well within the trainer's retry window (0.5 s doubling, 8 tries).
    with live_server(index_dir, tmp_path / "b.log", redis_url=redis_url, env=env, port=port):
        assert proc.wait(timeout=180) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert metrics(tmp_path / "run") == metrics(reference)


def test_service_gone_exits_1_saying_how_to_resume(small_target, tmp_path: Path, capsys):
    cmd = trainer_cmd(small_target, f"http://127.0.0.1:{free_port()}", tmp_path / "run", tmp_path / "cache",
                      "--retries", "1", "--backoff", "0.05")
    assert main(cmd[3:]) == 1  # in-process: the same CLI without a second torch import
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1


def test_ddp_two_cpu_processes(service, small_target, tmp_path: Path):
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache", "--rounds", "1")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        *cmd[1:],
    ]
    done = subprocess.run(torchrun, cwd=REPO, env=TRAINER_ENV, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics(tmp_path / "run")
    assert len(rows) == 1 and rows[0]["sources_in_use"] > 0
    assert done.stdout.count("round=0 ") == 1  # only rank 0 logs
    # 9 targets, 2 ranks of batch 4 (uneven): both ranks ran ceil(3 * 9 * 2 / 8) = 7 steps, or DDP would hang.
    assert rows[0]["steps"] == 7
    # The sharded, gathered evaluation equals scoring the saved model on all of val/ in one process.
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = JointModel("squeezenet1_0", 3, ckpt["source_head_rows"])
    model.load_state_dict(ckpt["model"])
    store = ImageStore(32)
    ts = load_target(small_target, store)
    probs = predict(model, ts.val_paths, store, torch.device("cpu"), 4, Dist())
    mca, top1 = accuracy(probs, ts.val_labels, 3)
    assert (mca, top1) == pytest.approx((rows[0]["mean_class_acc"], rows[0]["top1"]), abs=1e-9)


def test_second_trainer_on_the_same_out_exits_2(service, small_target, tmp_path: Path, capsys):
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache")
    first = start_trainer(cmd, tmp_path / "stderr.txt")
    try:
        wait_for_line(first, "config:")  # printed once the run dir is locked
        assert main(cmd[3:] + ["--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert "in use by another trainer" in err and str(first.pid) in err and len(err.splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    written = tmp_path / "run" / "metrics.jsonl"
    assert not written.exists() or not written.read_text().strip()  # the second trainer wrote no row
