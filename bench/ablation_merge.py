"""One ablation table from the cells of several ``ablation.json`` files (runs of the same recipe on more
seeds, or in several sessions), with the same summary, paired differences, table and figure as
``trainer ablate``.

The recipes must match: every input's ``config`` must agree on every field except the ones a cell sets itself
(``out``, ``seed``, the row's overrides) and those that cannot change a result (``RunConfig.RESUME_FREE``);
otherwise the merge exits 2 naming the first field that differs. A (row, seed) given twice must carry the same
value (a re-run of the same cell), or the merge exits 2.

    .venv/bin/python bench/ablation_merge.py OUT_DIR A/ablation.json B/ablation.json [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.fileio import atomic_write  # noqa: E402
from trainer.ablation.harness import METRIC, ROWS, summarise  # noqa: E402
from trainer.ablation.table import markdown, plot  # noqa: E402
from trainer.config import RunConfig  # noqa: E402

# Fields a cell sets itself, or that cannot change its result.
CELL_FIELDS = {"out", "seed", "match_pool", *RunConfig.RESUME_FREE, *(k for r in ROWS.values() for k in r)}


class MergeError(ValueError):
    pass


def recipe(config: dict) -> dict:
    """The fields that define the experiment; a field newer than the file had its default value then."""
    defaults = RunConfig("target", "http://service", "out").to_dict()
    full = {**defaults, **config}
    return {k: v for k, v in full.items() if k not in CELL_FIELDS and k in defaults}


def merge(results: list[dict], command: str) -> dict:
    """The merged result: cells of every input (deduplicated by (row, seed)), summarised."""
    first = recipe(results[0]["config"])
    cells: dict[tuple[str, int], dict] = {}
    for result in results:
        mine = recipe(result["config"])
        for key in sorted(first.keys() | mine.keys()):
            if first.get(key) != mine.get(key):
                raise MergeError(f"recipes differ in {key}: {first.get(key)!r} vs {mine.get(key)!r}")
        for cell in result["cells"]:
            key = (cell["row"], int(cell["seed"]))
            if key in cells and cells[key]["value"] != cell["value"]:
                raise MergeError(f"{key[0]} seed {key[1]} given twice with different values")
            cells[key] = cell
    rows = [r for r in ROWS if any(row == r for row, _ in cells)]
    ordered = [cells[k] for k in sorted(cells, key=lambda k: (k[1], rows.index(k[0])))]
    return {
        "command": command,
        "metric": METRIC,
        "interval": results[0]["interval"],
        "seeds": sorted({seed for _, seed in cells}),
        **summarise(ordered, rows),
        "cells": ordered,
        "config": results[0]["config"],
        "merged_from": [r["command"] for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: ablation_merge.py OUT_DIR ABLATION_JSON [ABLATION_JSON ...]", file=sys.stderr)
        return 2
    out, inputs = Path(argv[0]), [Path(p) for p in argv[1:]]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        print(f"error: not a file: {missing[0]}", file=sys.stderr)
        return 2
    try:
        results = [json.loads(p.read_text()) for p in inputs]
        result = merge(results, " ".join(["bench/ablation_merge.py", *argv]))
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(result)
    atomic_write(out / "ablation.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / "ablation.md", text + "\n")
    plot(result, out / "ablation.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
