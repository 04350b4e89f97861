"""The paper's ablation table in miniature: the same target, seeds and step budget under each source setting.

Rows (``ROWS``; ``--rows`` picks and orders them):
- ``probe``: linear probe, ``--source-mode none --train-layers head`` (the backbone frozen);
- ``none``: plain fine-tuning on the target alone;
- ``random``: as many random sources per round as the ``selective`` run of the same seed used
  (``--match-pool`` that run's directory);
- ``all``: the whole corpus streamed;
- ``selective --no-adaptive``: K_i = K0;
- ``selective``: the method.
Every row gets the same optimizer steps (the trainer matches the budgets: see its README section). Each seed
runs ``selective`` first, so ``random`` can match its pool. Each cell is the final round's mean class accuracy
on val/. Cells live in ``<out>/<row>/seed<S>``: a finished cell is skipped and an interrupted one resumed, so
re-running the same command continues an ablation.

Output: ``<out>/ablation.json`` (rows with mean, std, per-seed runs and the Student-t 95 % interval as a
half-width ``ci95`` plus ``ci95_bounds``; paired per-seed differences selective - random and selective - none;
wall time per row; the exact command), ``ablation.md`` and ``ablation.png``.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from services.fileio import atomic_write
from trainer.ablation.stats import paired, summarise_row
from trainer.config import ConfigError, RunConfig

ROWS: dict[str, dict] = {
    "probe": {"source_mode": "none", "train_layers": "head", "adaptive": True},
    "none": {"source_mode": "none", "train_layers": "all", "adaptive": True},
    "random": {"source_mode": "random", "train_layers": "all", "adaptive": True},
    "all": {"source_mode": "all", "train_layers": "all", "adaptive": True},
    "selective --no-adaptive": {"source_mode": "selective", "train_layers": "all", "adaptive": False},
    "selective": {"source_mode": "selective", "train_layers": "all", "adaptive": True},
}
DEFAULT_ROWS = tuple(ROWS)
RUN_ORDER = ("selective", "selective --no-adaptive", "random", "all", "none", "probe")  # selective first
PAIRS = (("selective", "random"), ("selective", "none"))
METRIC = "mean_class_acc"
CELL_FILE = "ablation_cell.json"


def slug(row: str) -> str:
    """Directory name of a row: ``selective --no-adaptive`` -> ``selective-no-adaptive``."""
    return row.replace(" --", "-").replace(" ", "-")


def parse_rows(text: str) -> list[str]:
    """``probe,none,selective`` -> the rows, checked against ROWS (ConfigError naming an unknown one)."""
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise ConfigError(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    return list(dict.fromkeys(rows))


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: the seeds themselves, ``0`` (seed 0) or ``0,1,2``; never a count (that is ``--num-seeds``,
    so a single number has one reading). ConfigError on anything but distinct integers."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"--seeds takes seeds like 0 or 0,1,2 (a count: --num-seeds N): {text!r}") from exc
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--seeds: give distinct seeds like 0 or 0,1,2, got {text!r}")
    return values


def seeds_of(seeds: str | None, num_seeds: int, first: int) -> list[int]:
    """The ablation's seeds: ``--seeds`` when given, else ``num_seeds`` seeds ``first .. first + N - 1``."""
    if seeds is not None:
        return parse_seeds(seeds)
    if num_seeds < 1:
        raise ConfigError(f"--num-seeds must be >= 1, got {num_seeds}")
    return list(range(first, first + num_seeds))


def cell_dir(out: str | Path, row: str, seed: int) -> Path:
    return Path(out) / slug(row) / f"seed{seed}"


def cell_config(base: RunConfig, row: str, seed: int, rows: list[str]) -> RunConfig:
    """The run config of one cell: the base knobs, the row's overrides, its own out dir and seed."""
    overrides = dict(ROWS[row])
    if row == "random" and "selective" in rows:
        overrides["match_pool"] = str(cell_dir(base.out, "selective", seed))
    return dataclasses.replace(base, out=str(cell_dir(base.out, row, seed)), seed=seed, **overrides)


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cell(cfg: RunConfig, row: str) -> dict:
    """Run (or resume, or skip when finished) one cell; returns its record: row, seed, value, wall_s."""
    from trainer.run import run
    from trainer.training.checkpoint import CHECKPOINT

    out = Path(cfg.out)
    record_path = out / CELL_FILE
    rows = _metrics(out)
    if record_path.is_file() and any(r.get("round") == cfg.rounds - 1 for r in rows):
        return json.loads(record_path.read_text())
    started = time.perf_counter()
    rows = run(dataclasses.replace(cfg, resume=(out / CHECKPOINT).is_file()))
    final = rows[-1]
    record = {"row": row, "seed": cfg.seed, "value": float(final[METRIC]), "top1": final.get("top1"),
              "steps": final.get("steps"), "sources_in_use": final.get("sources_in_use"),
              "wall_s": time.perf_counter() - started, "run_dir": str(out)}
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    return record


def summarise(cells: list[dict], rows: list[str]) -> dict:
    """Rows (in ``rows`` order), paired differences and wall time per row from the cell records."""
    by_row: dict[str, dict[int, float]] = {r: {} for r in rows}
    wall: dict[str, float] = dict.fromkeys(rows, 0.0)
    for c in cells:
        by_row[c["row"]][c["seed"]] = c["value"]
        wall[c["row"]] += c["wall_s"]
    summary = [summarise_row(r, [v for _, v in sorted(by_row[r].items())]).to_dict()
               for r in rows if by_row[r]]
    pairs = [paired(a, b, by_row[a], by_row[b]) for a, b in PAIRS if a in by_row and b in by_row]
    return {"rows": summary, "paired": [p.to_dict() for p in pairs if p is not None], "wall_s": wall}


def ablate(
    base: RunConfig, seeds: list[int], rows: list[str] | None = None, command: str | None = None
) -> dict:
    """Run every row for every seed; writes ablation.json, ablation.md and ablation.png under ``base.out``."""
    from trainer.ablation.table import markdown, plot

    rows = list(rows or DEFAULT_ROWS)
    order = [r for r in RUN_ORDER if r in rows]
    cells = []
    for seed in seeds:
        for row in order:
            print(f"== ablation: {row}, seed {seed}", flush=True)
            cells.append(run_cell(cell_config(base, row, seed, rows), row))
    result = {
        "command": command or shlex.join([Path(sys.executable).name, *sys.argv]),
        "metric": METRIC,
        "interval": "ci95 = Student-t 95% half-width over seeds (n - 1 dof); ci95_bounds = mean -+ ci95",
        "seeds": seeds,
        **summarise(cells, rows),
        "cells": cells,
        "config": base.to_dict(),
    }
    out = Path(base.out)
    text = markdown(result)
    atomic_write(out / "ablation.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / "ablation.md", text + "\n")
    plot(result, out / "ablation.png")
    print(text, flush=True)
    return result


ABLATE_ONLY = ("seeds", "num_seeds", "rows")  # flags of `ablate` that are not RunConfig fields
DEFAULT_NUM_SEEDS = 3


def add_ablate_flags(parser) -> None:
    """``--seeds`` / ``--num-seeds`` and ``--rows`` on the ``ablate`` subcommand (every ``run`` flag passes
    through). A seed list and a count are two flags, never one, so ``--seeds 0`` can only mean seed 0."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", default=None, metavar="LIST",
                       help="the seeds, e.g. 0 or 0,1,2 (default: --num-seeds seeds from --seed)")
    which.add_argument("--num-seeds", type=int, default=DEFAULT_NUM_SEEDS, metavar="N",
                       help="N seeds --seed .. --seed+N-1, when --seeds is not given")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated rows, from: {', '.join(ROWS)} (default all)")


def main(args, cfg: RunConfig, argv: list[str] | None = None, prog: str = "python -m trainer") -> int:
    """The ``ablate`` subcommand: rows x seeds, then the table; ``argv`` is recorded as the command, after
    ``prog`` (the command name the person typed)."""
    command = shlex.join([*shlex.split(prog), *(sys.argv[1:] if argv is None else argv)])
    seeds = seeds_of(args.seeds, args.num_seeds, cfg.seed)
    ablate(cfg, seeds, parse_rows(args.rows), command)
    return 0
