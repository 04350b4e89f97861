"""The demo's multi-seed verdict: final accuracies per seed, means, the paired selective - random difference,
and the links to the selection reports the runs wrote."""

from __future__ import annotations

import pytest

from sjft.demo.report import outcome, outcome_table, selection_reports


def _rows(*accs: float) -> list[dict]:
    return [{"round": r, "mean_class_acc": a, "top1": a} for r, a in enumerate(accs)]


def test_outcome_takes_the_final_round_and_pairs_by_seed():
    runs = {
        0: {"selective": _rows(0.3, 0.6), "random": _rows(0.4, 0.5)},
        1: {"selective": _rows(0.2, 0.7), "random": _rows(0.2, 0.6)},
        2: {"selective": _rows(0.5, 0.5), "random": _rows(0.1, 0.55)},
    }
    result = outcome(runs)
    assert result["per_seed"]["selective"] == {0: 0.6, 1: 0.7, 2: 0.5}
    assert result["mean"] == pytest.approx({"selective": 0.6, "random": 0.55})
    assert result["paired"]["diffs"] == pytest.approx([0.1, 0.1, -0.05])
    assert result["paired"]["mean"] == pytest.approx(0.05)
    text = outcome_table(result)
    assert "selective - random: +5.0 points on average (per seed +10.0, +10.0, -5.0" in text
    assert "60.0%" in text and "55.0%" in text


def test_selective_alone_has_no_pair():
    result = outcome({0: {"selective": _rows(0.5)}})
    assert result["paired"] is None and "selective - random" not in outcome_table(result)


def test_selection_reports_are_found_in_selective_run_dirs(tmp_path):
    for seed in (1, 0):
        (tmp_path / f"seed{seed}" / "selective").mkdir(parents=True)
        (tmp_path / f"seed{seed}" / "selective" / "selection.html").write_text("<html></html>")
    (tmp_path / "seed0" / "random").mkdir()
    (tmp_path / "seed0" / "random" / "selection.html").write_text("<html></html>")
    found = selection_reports(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "seed0/selective/selection.html", "seed1/selective/selection.html"]
