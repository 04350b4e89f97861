"""The ablation's table (markdown, also printed) and figure (bars with 95 % intervals and per-seed dots)."""

from __future__ import annotations

from pathlib import Path

from trainer.reports.metrics import save_figure


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(result: dict) -> str:
    """Rows (mean, std, 95 % interval, per seed, wall time) and the paired differences, in percent."""
    seeds = len(result["seeds"])
    lines = [
        f"| row | {result['metric']} % (mean ± std, {seeds} seeds) | 95 % CI (Student t) | per seed "
        "| wall s |",
        "|---|---|---|---|---|",
    ]
    for s in result["rows"]:
        bounds = s["ci95_bounds"]
        ci = "-" if bounds is None else f"[{_pct(bounds[0])}, {_pct(bounds[1])}]"
        per = ", ".join(_pct(v) for v in s["runs"])
        lines.append(
            f"| {s['row']} | {_pct(s['mean'])} ± {_pct(s['std'])} | {ci} | {per} | "
            f"{result['wall_s'][s['row']]:.0f} |"
        )
    if result["paired"]:
        lines += ["", "| paired difference (same seed) | mean, points | 95 % CI | per seed |"]
        lines.append("|---|---|---|---|")
        for p in result["paired"]:
            bounds = p["ci95_bounds"]
            ci = "-" if bounds is None else f"[{_pct(bounds[0])}, {_pct(bounds[1])}]"
            per = ", ".join(_pct(d) for d in p["diffs"])
            lines.append(f"| {p['a']} - {p['b']} | {_pct(p['mean'])} | {ci} | {per} |")
    lines += ["", f"command: `{result['command']}`"]
    return "\n".join(lines)


def plot(result: dict, out_png: Path) -> Path:
    """A point per row at its mean with the Student-t 95 % interval, one dot per seed. Points, not bars: the
    y axis fits the data, so differences of a few tenths of a point stay visible (a bar would have to start
    at 0)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers or CI
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 4))
    xs = list(range(len(rows)))
    means = [100 * s["mean"] for s in rows]
    errors = [0.0 if s["ci95"] is None else 100 * s["ci95"] for s in rows]
    ax.errorbar(
        xs, means, yerr=errors, fmt="s", markersize=9, capsize=8, color="#3182bd", label="mean ± 95 % CI"
    )
    for x, s in zip(xs, rows, strict=True):
        runs = s["runs"]
        jitter = [x + 0.25 + 0.3 * i / max(1, len(runs)) for i in range(len(runs))]  # beside the mean
        ax.scatter(jitter, [100 * v for v in runs], color="black", s=14, zorder=3)
    ax.set_xticks(xs, [s["row"] for s in rows], rotation=20)
    ax.set_ylabel(f"val {result['metric']} (%)")
    ax.set_title(f"Ablation over {len(result['seeds'])} seeds (dots: one seed each)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_png, dpi=110)
