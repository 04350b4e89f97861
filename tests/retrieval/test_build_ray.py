"""Every extraction runner gives the same index: in-process, one process per core, and Ray tasks on a real
local Ray instance of two worker CPUs; a Ray worker killed mid-task is retried, and a build whose task
fails resumes from its finished shards."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest
import ray

from retrieval_service.build import ray_runner
from retrieval_service.build.builder import BuildError, build_index
from retrieval_service.build.workers import run_shard
from tests.retrieval.buildutil import SMALL, image_folder

OPTIONS = SMALL | {"shard_size": 12}  # 39 candidates (3 unreadable): 4 shards


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("ray-corpus") / "images", bad=True)


@pytest.fixture(scope="module")
def local_index(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray-local") / "index"
    build_index(corpus, out, **OPTIONS)
    return out


def assert_same_index(a: Path, b: Path) -> None:
    for name in ("spec.json", "histograms.f16", "embedding.faiss"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    rows = "SELECT * FROM sources ORDER BY source_id"
    assert sqlite3.connect(a / "manifest.sqlite").execute(rows).fetchall() == (
        sqlite3.connect(b / "manifest.sqlite").execute(rows).fetchall()
    )


def test_process_per_core_and_ray_builds_equal_the_in_process_one(
    corpus, local_index, ray_instance, tmp_path, caplog
):
    pooled = tmp_path / "pooled"
    build_index(corpus, pooled, **OPTIONS | {"workers": 2})
    assert_same_index(local_index, pooled)
    with caplog.at_level(logging.INFO, logger="retrieval_service.build.builder"):
        report = build_index(corpus, tmp_path / "ray", **OPTIONS, ray="auto")
    assert report.shards == 4 and report.resumed_shards == 0 and len(report.skipped) == 3
    assert sum("written by pid" in r.getMessage() for r in caplog.records) == 4  # the Ray runner ran
    assert_same_index(local_index, tmp_path / "ray")


def test_a_worker_killed_mid_task_is_retried(corpus, local_index, ray_instance, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    markers.mkdir()

    def killed_once(setup, root, records, start, batch_size, path):
        marker = markers / f"{start}"
        if not marker.exists():
            marker.touch()
            with open(f"{path}.in-progress", "wb") as partial:  # half-written work a kill leaves behind
                partial.write(b"\0" * 1000)
            os._exit(1)  # the worker process dies like a kill -9: Ray sees a crashed worker, not an exception
        return run_shard(setup, root, records, start, batch_size, path)

    out = tmp_path / "index"
    monkeypatch.setattr(ray_runner, "run_shard", killed_once)  # the runner's task body, for this test
    report = build_index(corpus, out, **OPTIONS, ray="auto")
    assert sorted(int(p.name) for p in markers.iterdir()) == [0, 12, 24, 36]  # every shard died once
    assert report.resumed_shards == 0
    assert_same_index(local_index, out)


def test_a_failed_task_stops_the_build_and_the_rerun_resumes(
    corpus, local_index, ray_instance, tmp_path, monkeypatch
):
    def fails_on_shard_2(setup, root, records, start, batch_size, path):
        if start == 24:
            raise RuntimeError("disk full on this node")
        return run_shard(setup, root, records, start, batch_size, path)

    out = tmp_path / "index"
    with monkeypatch.context() as patch:
        patch.setattr(ray_runner, "run_shard", fails_on_shard_2)
        with pytest.raises(BuildError, match="1 of 4 shards failed on Ray .*disk full.*run the same command"):
            build_index(corpus, out, **OPTIONS, ray="auto")
    assert sorted(p.name for p in (tmp_path / "index.partial" / "shards").glob("*.npz")) == [
        "shard-00000.npz", "shard-00001.npz", "shard-00003.npz"
    ]
    report = build_index(corpus, out, **OPTIONS, ray="auto")  # the driver, started again
    assert report.resumed_shards == 3
    assert_same_index(local_index, out)
