"""Rows from separate runs, paired by seed: each row is either a row of a recorded ablation.json
(``NAME=path/ablation.json:row``) or a folder of ``seed<S>/metrics.jsonl`` run dirs (``NAME=dir``; the final
round's mean class accuracy of each). Prints every row (mean, std, Student-t 95 % CI, per seed) and the paired
difference of each row against the first over the seeds both have; ``--json`` writes the same.

    .venv/bin/python bench/paired_rows.py \\
        "gabor js=bench/results/ablation/setting1b/ablation.json:selective" \\
        "conv js=bench_out/exp/s1b-conv-js" [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy.stats import t as student_t


def load_row(spec: str, rounds: int | None = None) -> tuple[str, dict[int, float], dict[int, int]]:
    """(name, {seed: value}, {seed: distinct sources in the last round}) of one NAME=... spec."""
    name, where = spec.split("=", 1)
    values: dict[int, float] = {}
    pools: dict[int, int] = {}
    if ":" in where and where.split(":", 1)[0].endswith(".json"):
        path, row = where.split(":", 1)
        for cell in json.loads(Path(path).read_text())["cells"]:
            if cell["row"] == row:
                values[cell["seed"]] = cell["value"]
                if cell.get("sources_in_use") is not None:
                    pools[cell["seed"]] = cell["sources_in_use"]
        return name, values, pools
    for run in sorted(Path(where).glob("seed*")):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] \
            if (run / "metrics.jsonl").is_file() else []
        final = [r for r in lines if rounds is None or r.get("round") == rounds - 1]
        if final:
            values[int(run.name[4:])] = final[-1]["mean_class_acc"]
            if final[-1].get("sources_in_use") is not None:
                pools[int(run.name[4:])] = final[-1]["sources_in_use"]
    return name, values, pools


def interval(values: list[float]) -> tuple[float, float, float]:
    """mean, std, Student-t 95 % half-width (nan below two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, math.nan
    sd = statistics.stdev(values)
    return mean, sd, float(student_t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+", metavar="NAME=SOURCE")
    p.add_argument("--rounds", type=int, default=None,
                   help="run dirs: only runs that finished this many rounds (default: their last line)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [load_row(s, args.rounds) for s in args.rows]
    out: dict = {"rows": [], "paired": []}
    print("| row | mean % (± std) | 95 % CI | seeds | per seed |\n|---|---|---|---|---|")
    for name, values, pools in rows:
        seeds = sorted(values)
        if not seeds:
            print(f"| {name} | not run | | | |")
            continue
        mean, sd, hw = interval([values[s] for s in seeds])
        per = ", ".join(f"{100 * values[s]:.2f}" for s in seeds)
        ci = f"[{100 * (mean - hw):.2f}, {100 * (mean + hw):.2f}]"
        print(f"| {name} | {100 * mean:.2f} ± {100 * sd:.2f} | {ci} "
              f"| {','.join(map(str, seeds))} | {per} |")
        out["rows"].append({"row": name, "seeds": seeds, "values": [values[s] for s in seeds], "mean": mean,
                            "std": sd, "ci95": hw, "sources_in_use": [pools.get(s) for s in seeds]})
    base_name, base, _ = rows[0]
    print("\n| paired difference | mean, points | 95 % CI | seeds | per seed |\n|---|---|---|---|---|")
    for name, values, _ in rows[1:]:
        seeds = sorted(set(values) & set(base))
        if not seeds:
            continue
        diffs = [values[s] - base[s] for s in seeds]
        mean, _, hw = interval(diffs)
        per = ", ".join(f"{100 * d:+.2f}" for d in diffs)
        ci = f"[{100 * (mean - hw):+.2f}, {100 * (mean + hw):+.2f}]"
        print(f"| {name} - {base_name} | {100 * mean:+.2f} | {ci} "
              f"| {','.join(map(str, seeds))} | {per} |")
        out["paired"].append({"a": name, "b": base_name, "seeds": seeds, "diffs": diffs, "mean": mean,
                              "ci95": hw})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
