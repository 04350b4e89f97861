"""The ablation table's rows and statistics."""

from __future__ import annotations

import pytest

from trainer.ablate import ROWS, markdown, summarise


def test_rows_cover_the_paper_settings_with_explicit_adaptivity():
    assert [r for r, _ in ROWS] == ["none", "all", "random", "selective --no-adaptive", "selective"]
    assert all("adaptive" in o for _, o in ROWS)  # a base --no-adaptive must not leak into the selective row


def test_summary_mean_and_sample_std():
    rows = summarise({"none": [0.2, 0.4], "selective": [0.5]})
    assert rows[0]["mean"] == pytest.approx(0.3) and rows[0]["std"] == pytest.approx(0.1414213562)
    assert rows[1]["std"] == 0.0
    assert "| none | 30.00 ± 14.14 |" in markdown(rows, 2)
