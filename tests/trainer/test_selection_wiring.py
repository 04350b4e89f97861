"""Training runs write the selection report and tell the service which sources each round used: real
trainer processes against the real service of tests/trainer/conftest.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from services.client import RetrievalClient
from trainer.remote.jobs import SHOWN_SOURCES, round_event
from trainer.reports.round_report import write_round_report
from trainer.rounds.neighbors import NeighborLists
from trainer.rounds.selection import SourceState

from .conftest import run_trainer, trainer_cmd
from .test_e2e import kill_after_round_0_and_resume

pytestmark = pytest.mark.timeout(240)

K0 = 2  # FAST_FLAGS


@pytest.fixture(scope="module")
def selective(service, small_target, tmp_path_factory) -> tuple[Path, str]:
    """(run dir, stdout) of a two-round selective run."""
    root = tmp_path_factory.mktemp("selective")
    done = run_trainer(trainer_cmd(small_target, service, root / "run", root / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", done.stdout


def check_picks(run: Path, n_targets: int) -> list[dict]:
    """selection.json's picks: every sampled target, both rounds, K0 then a deeper prefix of the same ranking,
    finite distances ascending."""
    summary = json.loads((run / "selection.json").read_text())
    picks = summary["picks"]
    assert summary["rounds"] == 2 and len(picks) == n_targets  # 3 per class: every target is sampled
    for target in picks:
        first, second = target["rounds"]
        assert len(first) == K0 and len(second) >= K0
        assert [p["source_id"] for p in second[:K0]] == [p["source_id"] for p in first]
        distances = [p["distance"] for p in second]
        assert all(d is not None and math.isfinite(d) for d in distances)
        assert distances == sorted(distances)
    return picks


def round_events(service: str, run: Path) -> list[dict]:
    with RetrievalClient(service) as client:
        (job,) = [j for j in client.list_jobs() if j.config.get("out") == str(run)]
        return [e.metrics for e in client.get_job(job.job_id).events if e.type == "round"]


def test_selective_run_writes_the_report_of_both_rounds(selective, small_target):
    run, stdout = selective
    picks = check_picks(run, n_targets=9)
    assert (run / "selection.png").stat().st_size > 1000
    page = (run / "selection.html").read_text()
    assert "round 1: K = " in page and "Selected sources of sampled target images" in page
    assert "a selective run selected, rounds 0-1" in page
    assert stdout.strip().splitlines()[-1].endswith(str(run / "selection.html"))
    classes = {p["class_name"] for t in picks for r in t["rounds"] for p in r}
    assert classes and not any(c.startswith("class ") for c in classes)  # names from GET /v1/index


def test_round_events_carry_the_sources_but_metrics_rows_do_not(selective, service):
    run, _ = selective
    events = round_events(service, run)
    picked = json.loads((run / "selection.json").read_text())["picks"]
    for rnd, metrics in enumerate(events):
        ids = metrics["source_ids"]
        assert 0 < len(ids) <= SHOWN_SOURCES and len(set(ids)) == len(ids)
        assert set(ids) <= {p["source_id"] for t in picked for p in t["rounds"][rnd]}
    assert len(events) == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("source_ids" not in r for r in rows)


def test_resumed_run_still_reports_both_rounds(selective, service, small_target, tmp_path):
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache")
    kill_after_round_0_and_resume(cmd, tmp_path / "run", tmp_path / "stderr.txt")
    picks = check_picks(tmp_path / "run", n_targets=9)
    reference = json.loads((selective[0] / "selection.json").read_text())["picks"]
    assert [t["rounds"] for t in picks] == [t["rounds"] for t in reference]  # round 0 from the checkpoint


def test_random_run_reports_its_class_table_only(selective, service, small_target, tmp_path):
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache")
    done = run_trainer(cmd + ["--source-mode", "random", "--match-pool", str(selective[0])])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert summary["picks"] == [] and summary["shares"]  # no neighbor lists, but what it trained on
    page = (tmp_path / "run" / "selection.html").read_text()
    assert "(random mode: sources paired" in page and "Selected sources of sampled target images" not in page
    assert all(m["source_ids"] for m in round_events(service, tmp_path / "run"))


def test_no_selection_report_flag_writes_none(service, small_target, tmp_path):
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache")
    done = run_trainer(cmd + ["--rounds", "1", "--steps-per-round", "2", "--no-selection-report"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((tmp_path / "run").glob("selection*"))
    assert "selection report: off" in done.stdout.strip().splitlines()[-1]


def test_a_failing_report_is_a_warning(tmp_path, capsys):
    def service_gone() -> list[str]:
        raise ConnectionError("service gone")

    state = SourceState("selective", 10, NeighborLists([[1]], {1: 0}))
    state.lists.record_round(0, [1])
    got = write_round_report(tmp_path, 0, state, None, ["t.png"], [0], ["a"], service_gone, lambda _: None, 0)
    assert got is None and "service gone" in capsys.readouterr().err
    assert not (tmp_path / "selection.html").exists()


def test_neighbor_lists_keep_distances_and_read_old_checkpoints():
    lists = NeighborLists([[4, 2], [7]], {4: 0, 2: 1, 7: 0}, distances=[[0.1, 0.3], [0.2]])
    lists.record_round(0, [1, 1])
    lists.record_round(1, [2, 1])
    lists.record_round(1, [2, 2])  # a round redone after a resume replaces its entry
    again = NeighborLists.from_state(lists.to_state())
    assert again.prefix(0, 2) == [(4, 0.1, 0), (2, 0.3, 1)] and again.k_rounds == [[1, 1], [2, 2]]
    old = {"ranked": [[4, 2], [7]], "labels": {4: 0, 2: 1, 7: 0}, "exhausted": []}  # before distances
    restored = NeighborLists.from_state(old)
    assert [len(d) for d in restored.distances] == [2, 1]
    assert all(math.isnan(d) for d in restored.distances[0])
    assert restored.k_rounds == []


def test_round_event_caps_distinct_source_ids():
    event = round_event(3, {"top1": 0.5}, [5, 5, *range(100)])
    ids = event.metrics["source_ids"]
    assert ids[:2] == [5, 0] and len(ids) == SHOWN_SOURCES == len(set(ids)) and event.round == 3
    assert "source_ids" not in round_event(0, {"top1": 0.5}, []).metrics  # mode none: nothing to show
