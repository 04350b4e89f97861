"""Small-sample statistics of the ablation: per-row mean, sample std and a Student-t confidence interval, and
paired per-seed differences between two rows.

Seeds are few (3 to 5), so the interval uses Student's t with n - 1 degrees of freedom, not the normal 1.96:
for n = 3 the 95 % half-width is 4.30 * s / sqrt(n). Paired differences (the same seed, so the same data
order and initialisation in both rows) remove the seed-to-seed variance the two rows share.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95


def t_half_width(values: list[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the two-sided Student-t interval of the mean: t_{(1+c)/2, n-1} * s / sqrt(n).

    NaN for fewer than two values (no spread to estimate)."""
    n = len(values)
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)


@dataclass
class Summary:
    """One row of the table: ``runs`` are the per-seed values; ``ci95`` the Student-t 95 % half-width."""

    row: str
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single run
    runs: list[float]
    ci95: float | None  # half-width: the interval is mean +- ci95; None for a single run
    ci95_bounds: list[float] | None  # [mean - ci95, mean + ci95]

    def to_dict(self) -> dict:
        return asdict(self)


def summarise_row(row: str, values: list[float]) -> Summary:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Summary(row, mean, std, list(values), *_interval(mean, values))


@dataclass
class Paired:
    """a - b per seed (seeds both rows ran), their mean and Student-t 95 % half-width."""

    a: str
    b: str
    seeds: list[int]
    diffs: list[float]
    mean: float
    ci95: float | None  # half-width; the difference is significant at 5 % when |mean| > ci95
    ci95_bounds: list[float] | None

    def to_dict(self) -> dict:
        return asdict(self)


def paired(a: str, b: str, by_seed_a: dict[int, float], by_seed_b: dict[int, float]) -> Paired | None:
    """The paired difference a - b over the seeds both rows have; None when they share none."""
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        return None
    diffs = [by_seed_a[s] - by_seed_b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    return Paired(a, b, seeds, diffs, mean, *_interval(mean, diffs))


def _interval(mean: float, values: list[float]) -> tuple[float | None, list[float] | None]:
    """(half-width, [lo, hi]), or (None, None) when one value gives no spread (JSON has no NaN)."""
    half = t_half_width(values)
    return (None, None) if math.isnan(half) else (half, [mean - half, mean + half])
