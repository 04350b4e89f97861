"""What selective joint fine-tuning picked: ``selection.html``, ``.png`` and ``.json`` in the run dir.

The report takes plain data (no checkpoint, no service), so it can be written at the end of every round and
tested without a run:
- for a seeded sample of target images of each class, its selected sources per round (distance, class);
- target class x source class: the share of the selected sources of each class, against the share a random
  selection would give (the index's class frequencies when known);
- the sources the leakage guard excluded.
Thumbnails are small JPEG files in ``selection_files/`` next to the HTML (one per image, however often shown).
"""

from __future__ import annotations

import html
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from services.fileio import atomic_write
from trainer.reports.sheet import THUMB_PX, contact_sheet, thumbnail

FILES_DIR = "selection_files"
MAX_COLUMNS = 30  # source classes shown in the class table; the rest are summed as "other"


class Pick(NamedTuple):
    """One source image selected for one target image in one round."""

    source_id: int
    distance: float
    label: int
    class_name: str


@dataclass
class SelectionReport:
    html: Path
    png: Path
    json: Path
    shares: dict[str, dict[str, float]] = field(default_factory=dict)  # target class -> source class -> share
    baseline: dict[str, float] = field(default_factory=dict)  # source class -> share under random selection
    baseline_kind: str = ""
    sample: list[int] = field(default_factory=list)  # target indices shown


def write_selection_report(
    run_dir: str | Path,
    target_paths: Sequence[str | Path],
    target_labels: Sequence[int],
    target_classes: Sequence[str],
    rounds: Sequence[Sequence[Sequence[Pick | tuple]]],
    source_paths: Mapping[int, str | Path] | Callable[[int], str | Path | None] | None = None,
    index_classes: Sequence[str] | None = None,
    index_class_counts: Mapping[str, int] | Sequence[int] | None = None,
    excluded_ids: Iterable[int] = (),
    per_class: int = 3,
    max_shown: int = 8,
    seed: int = 0,
    title: str = "Selected source images",
) -> SelectionReport:
    """Write the report into ``run_dir``; returns its paths and the class shares.

    ``rounds[r][i]`` lists the sources target ``i`` uses in round ``r``, best first, each a ``Pick`` or a
    ``(source_id, distance, label, class_name)`` tuple. ``source_paths`` maps a source id to its cached image
    file (a mapping or a callable; None or a missing file shows a placeholder). ``index_class_counts`` (class
    name -> count, or counts in ``index_classes`` order) gives the random-selection baseline; without it the
    baseline is uniform over ``index_classes``, and without those the class mix of the selected sources.
    The class table uses the last round (the deepest selection). ``per_class=0`` leaves the per-target part
    out (sources that are not neighbor lists). ``selection.json`` holds the shares, the baseline and the
    sampled targets' picks of every round.
    """
    run_dir = Path(run_dir)
    if len(target_paths) != len(target_labels):
        raise ValueError(f"{len(target_paths)} target paths but {len(target_labels)} labels")
    rounds = [[[Pick(*p) for p in picks] for picks in per_target] for per_target in rounds]
    if not rounds or any(len(r) != len(target_paths) for r in rounds):
        raise ValueError("rounds must hold one list of picks per target image for every round")
    find = _source_finder(source_paths)
    excluded = sorted({int(s) for s in excluded_ids})

    shares = class_shares(rounds[-1], target_labels, target_classes)
    baseline, kind = random_baseline(index_classes, index_class_counts, rounds[-1])
    sample = sample_targets(target_labels, per_class, seed)

    files = run_dir / FILES_DIR
    thumbs = _Thumbs(files)
    html_text = _html(
        title,
        target_paths,
        target_labels,
        target_classes,
        rounds,
        shares,
        baseline,
        kind,
        sample,
        excluded,
        max_shown,
        thumbs,
        find,
    )
    report = SelectionReport(
        run_dir / "selection.html",
        run_dir / "selection.png",
        run_dir / "selection.json",
        shares,
        baseline,
        kind,
        sample,
    )
    atomic_write(
        report.png,
        contact_sheet(target_paths, target_labels, target_classes, rounds[-1], sample, max_shown, find),
    )
    atomic_write(report.html, html_text)
    summary = {k: v for k, v in asdict(report).items() if k not in ("html", "png", "json")}
    summary |= {"rounds": len(rounds), "targets": len(target_paths), "excluded_ids": excluded}
    summary["picks"] = _sampled_picks(sample, target_paths, target_labels, target_classes, rounds)
    atomic_write(report.json, json.dumps(summary, indent=1, sort_keys=True))
    return report


def _sampled_picks(sample, paths, labels, classes, rounds) -> list[dict]:
    """The sampled targets' picks of every round, nearest first (a non-finite distance is null)."""
    return [
        {
            "target": i,
            "path": str(paths[i]),
            "class_name": classes[labels[i]],
            "rounds": [
                [
                    {
                        "source_id": p.source_id,
                        "distance": p.distance if math.isfinite(p.distance) else None,
                        "class_name": p.class_name,
                    }
                    for p in per_target[i]
                ]
                for per_target in rounds
            ],
        }
        for i in sample
    ]


def class_shares(
    picks: Sequence[Sequence[Pick]], target_labels: Sequence[int], target_classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per target class: the fraction of its (target, source) selections whose source has each class."""
    counts: dict[str, Counter] = {}
    for label, chosen in zip(target_labels, picks, strict=True):
        counts.setdefault(target_classes[label], Counter()).update(p.class_name for p in chosen)
    return {
        target: {cls: n / total for cls, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))}
        for target, c in sorted(counts.items())
        if (total := sum(c.values()))
    }


def random_baseline(
    index_classes: Sequence[str] | None,
    counts: Mapping[str, int] | Sequence[int] | None,
    picks: Sequence[Sequence[Pick]],
) -> tuple[dict[str, float], str]:
    """(source class -> share a uniformly random selection would give, how it was estimated)."""
    if counts is not None:
        if not isinstance(counts, Mapping):
            if index_classes is None or len(index_classes) != len(counts):
                raise ValueError("index_class_counts as a sequence needs index_classes of the same length")
            counts = dict(zip(index_classes, counts, strict=True))
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items() if n}, "the index's class frequencies"
    if index_classes:
        n = len(index_classes)
        return {c: 1.0 / n for c in index_classes}, f"uniform over the index's {n} classes (no class counts)"
    seen = Counter({p.source_id: p.class_name for chosen in picks for p in chosen}.values())
    total = sum(seen.values()) or 1
    return {c: k / total for c, k in seen.items()}, "the class mix of the selected sources (index unknown)"


def sample_targets(target_labels: Sequence[int], per_class: int, seed: int) -> list[int]:
    """Up to ``per_class`` target indices of each class, drawn with ``seed``; sorted by class, then index."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(target_labels)
    chosen = []
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        chosen += sorted(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    return chosen


def _source_finder(source_paths) -> Callable[[int], Path | None]:
    if source_paths is None:
        return lambda _: None
    if callable(source_paths):
        return lambda s: Path(p) if (p := source_paths(s)) else None
    return lambda s: Path(source_paths[s]) if s in source_paths else None


class _Thumbs:
    """Writes each image's thumbnail once into ``files``; returns its path relative to the HTML."""

    def __init__(self, files: Path):
        self.files, self.done = files, {}

    def __call__(self, name: str, path: Path | None) -> str | None:
        if name not in self.done:
            img = thumbnail(path, THUMB_PX)
            if img is None:
                self.done[name] = None
            else:
                out = io.BytesIO()
                img.save(out, "JPEG", quality=82)
                atomic_write(self.files / name, out.getvalue(), fsync=False)
                self.done[name] = f"{FILES_DIR}/{name}"
        return self.done[name]


CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2330}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:2rem}.muted{color:#667085}.scroll{overflow-x:auto}
table{border-collapse:collapse}th,td{border:1px solid #e3e6ee;padding:2px 6px;text-align:right}
th{background:#f4f5f8;font-weight:600}th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}
td.hi{background:#d7f5de;font-weight:600}tr.base td{color:#667085}
.target{display:flex;gap:1rem;border-top:1px solid #e3e6ee;padding:.6rem 0}
.round{margin:.2rem 0}.picks{display:flex;flex-wrap:wrap;gap:4px}
figure{margin:0;width:100px;font-size:11px}figure img,.ph{width:96px;height:96px;object-fit:contain;
background:#eee;display:block}figure.new{outline:2px solid #2f6fde}
figcaption span{display:block;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
"""


def _figure(thumb: str | None, lines: Sequence[str], css: str = "") -> str:
    """A thumbnail (or a grey placeholder) over caption lines; every text is escaped here."""
    image = f'<img src="{html.escape(thumb)}" alt="">' if thumb else '<div class="ph"></div>'
    caption = "".join(f'<span title="{html.escape(t)}">{html.escape(t)}</span>' for t in lines)
    return f'<figure class="{css}">{image}<figcaption>{caption}</figcaption></figure>'


def _class_table(shares, baseline, kind) -> str:
    totals = Counter()
    for row in shares.values():
        totals.update(row)
    columns = [c for c, _ in totals.most_common(MAX_COLUMNS)]
    other = len(totals) > len(columns)
    head = "".join(f"<th class='col'>{html.escape(c)}</th>" for c in columns)
    head += "<th class='col'>other</th>" if other else ""
    rows = []
    for target, row in shares.items():
        cells = []
        for c in columns:
            share, base = row.get(c, 0.0), baseline.get(c, 0.0)
            hi = ' class="hi"' if share > 0 and share >= 2 * base else ""
            cells.append(f"<td{hi}>{share:.1%}</td>")
        if other:
            cells.append(f"<td>{sum(v for c, v in row.items() if c not in columns):.1%}</td>")
        rows.append(f"<tr><th>{html.escape(target)}</th>{''.join(cells)}</tr>")
    base_cells = "".join(f"<td>{baseline.get(c, 0.0):.1%}</td>" for c in columns)
    if other:
        base_cells += f"<td>{sum(v for c, v in baseline.items() if c not in columns):.1%}</td>"
    rows.append(f'<tr class="base"><th>random selection</th>{base_cells}</tr>')
    return (
        f"<p class='muted'>Share of each target class's selected sources (last round) by source class; "
        f"green: at least twice the random share. Random baseline: {html.escape(kind)}.</p>"
        f"<div class='scroll'><table><tr><th>target \\ source</th>{head}</tr>{''.join(rows)}</table></div>"
    )


def _html(
    title, paths, labels, classes, rounds, shares, baseline, kind, sample, excluded, max_shown, thumbs, find
) -> str:
    distinct = {p.source_id for chosen in rounds[-1] for p in chosen}
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>",
        f"<h1>{html.escape(title)}</h1><p class='muted'>{len(paths)} target images, {len(rounds)} rounds, "
        f"{len(distinct)} distinct sources selected, {len(excluded)} excluded by the leakage guard.</p>",
        "<h2>Source classes per target class</h2>",
        _class_table(shares, baseline, kind),
    ]
    if sample:  # an empty sample (per_class=0) leaves the per-target part out
        parts.append("<h2>Selected sources of sampled target images</h2>")
    for i in sample:
        target = _figure(thumbs(f"t{i}.jpg", Path(paths[i])), [classes[labels[i]], Path(paths[i]).name])
        per_round, before = [], set()
        for r, per_target in enumerate(rounds):
            chosen = per_target[i]
            figures = "".join(
                _figure(
                    thumbs(f"s{p.source_id}.jpg", find(p.source_id)),
                    [f"{p.distance:.4f}", p.class_name, f"#{p.source_id}"],
                    "new" if r and p.source_id not in before else "",
                )
                for p in chosen[:max_shown]
            )
            more = f" (+{len(chosen) - max_shown} more)" if len(chosen) > max_shown else ""
            per_round.append(
                f"<div class='round'>round {r}: K = {len(chosen)}{more}<div class='picks'>"
                f"{figures}</div></div>"
            )
            before = {p.source_id for p in chosen}
        parts.append(f"<div class='target'>{target}<div>{''.join(per_round)}</div></div>")
    parts.append("<h2>Excluded by the leakage guard</h2>")
    if excluded:
        parts.append(
            "<div class='picks'>"
            + "".join(_figure(thumbs(f"s{s}.jpg", find(s)), [f"#{s}"]) for s in excluded)
            + "</div>"
        )
    else:
        parts.append("<p class='muted'>none</p>")
    return "\n".join(parts) + "\n"
