"""The run's figures: written as whole PNG files, and no figure left open (pyplot would keep each alive)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from trainer.reports.metrics import plot_curves


def test_curves_are_a_png_and_leave_no_open_figure(tmp_path):
    rows = [{"round": r, "mean_class_acc": 0.5 + r / 10, "top1": 0.6 + r / 10} for r in range(3)]
    out = tmp_path / "nested" / "curves.png"
    assert plot_curves(out, rows) in (None, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == [] and [p.name for p in out.parent.iterdir()] == ["curves.png"]
