"""The paper's ablation table in miniature: the same target, seeds and budgets under five source settings.

Rows: none (plain fine-tuning), all, random (selective's budget, drawn uniformly), selective --no-adaptive
(K_i = K0), selective. Each cell is the final round's mean class accuracy on val/, mean +- std over seeds.
Every run lives in ``<out>/<row>/seed<S>`` and is resumed when already there, so an interrupted ablation
continues.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from trainer.checkpoint import load_checkpoint
from trainer.config import RunConfig
from trainer.run import run

ROWS = (
    ("none", {"source_mode": "none", "adaptive": True}),
    ("all", {"source_mode": "all", "adaptive": True}),
    ("random", {"source_mode": "random", "adaptive": True}),
    ("selective --no-adaptive", {"source_mode": "selective", "adaptive": False}),
    ("selective", {"source_mode": "selective", "adaptive": True}),
)


def _slug(row: str) -> str:
    return row.replace(" --", "-").replace(" ", "-")


def run_cell(base: RunConfig, row: str, overrides: dict, seed: int) -> list[dict]:
    out = Path(base.out) / _slug(row) / f"seed{seed}"
    cfg = dataclasses.replace(base, out=str(out), seed=seed, **overrides)
    ckpt = load_checkpoint(out)
    if ckpt is not None and ckpt["round"] + 1 >= cfg.rounds:
        return ckpt["metrics"]
    return run(dataclasses.replace(cfg, resume=ckpt is not None))


def summarise(results: dict[str, list[float]]) -> list[dict]:
    out = []
    for row, accs in results.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        out.append({"row": row, "mean": statistics.fmean(accs), "std": std, "runs": accs})
    return out


def markdown(summary: list[dict], seeds: int) -> str:
    lines = [
        f"| source images | mean class accuracy (mean ± std over {seeds} seeds) | per seed |",
        "|---|---|---|",
    ]
    for s in summary:
        per = ", ".join(f"{a:.4f}" for a in s["runs"])
        lines.append(f"| {s['row']} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | {per} |")
    return "\n".join(lines)


def ablate(base: RunConfig, seeds: int) -> list[dict]:
    """Run every row for seeds base.seed .. base.seed + seeds - 1; writes ablation.md and ablation.json."""
    results: dict[str, list[float]] = {}
    for row, overrides in ROWS:
        for seed in range(base.seed, base.seed + seeds):
            print(f"== ablation: {row}, seed {seed}", flush=True)
            rows = run_cell(base, row, overrides, seed)
            results.setdefault(row, []).append(rows[-1]["mean_class_acc"])
    summary = summarise(results)
    text = markdown(summary, seeds)
    out = Path(base.out)
    (out / "ablation.md").write_text(text + "\n")
    (out / "ablation.json").write_text(
        json.dumps({"config": base.to_dict(), "rows": summary}, indent=2) + "\n"
    )
    print(text, flush=True)
    return summary
