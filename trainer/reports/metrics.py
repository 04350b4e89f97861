"""Per-round metrics: one printed line, ``metrics.jsonl``, the final table and ``curves.png``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from services.fileio import atomic_write, atomic_writer

LINE_FIELDS = (
    ("round", "{:d}"),
    ("mean_class_acc", "{:.4f}"),
    ("top1", "{:.4f}"),
    ("loss", "{:.4f}"),
    ("loss_target", "{:.4f}"),
    ("loss_source", "{:.4f}"),
    ("sources_in_use", "{:d}"),
    ("misclassified", "{:d}"),
    ("uncertain", "{:d}"),
    ("k_mean", "{:.2f}"),
    ("k_max", "{:d}"),
    ("leaked_excluded", "{:d}"),
    ("steps", "{:d}"),
    ("steps_per_s", "{:.2f}"),
    ("images_per_s", "{:.1f}"),
)


def format_line(row: dict) -> str:
    return " ".join(f"{name}={fmt.format(row[name])}" for name, fmt in LINE_FIELDS if name in row)


def write_metrics(path: Path, rows: Sequence[dict]) -> None:
    """Rewrite ``metrics.jsonl`` with exactly ``rows`` (a resumed run drops lines of an unfinished round)."""
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def table(rows: Sequence[dict]) -> str:
    """Markdown table of the rounds."""
    cols = [name for name, _ in LINE_FIELDS if rows and name in rows[0]]
    fmts = dict(LINE_FIELDS)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmts[c].format(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_curves(path: Path, rows: Sequence[dict]) -> None:
    """Mean class accuracy and top-1 per round (matplotlib Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    rounds = [r["round"] for r in rows]
    ax.plot(rounds, [r["mean_class_acc"] for r in rows], marker="o", label="mean class accuracy")
    ax.plot(rounds, [r["top1"] for r in rows], marker="s", label="top-1")
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out, write ``path`` as PNG (temporary file + rename: a reader never sees half a figure) and close
    ``fig`` (pyplot keeps every open figure alive). Every figure of a run, an ablation and the demo."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
    return path
