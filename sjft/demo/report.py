"""What the demo measures: how often retrieval picks the matching source classes, and the selective-vs-random
comparison of the training runs over seeds (tables on stdout, a figure, ``summary.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from services.client import RetrievalClient, encode_image
from services.fileio import atomic_write
from services.schemas import Query
from sjft.demo.data import DemoManifest
from trainer.ablation.stats import paired
from trainer.reports.metrics import save_figure

Runs = dict[int, dict[str, list[dict]]]  # training seed -> source mode -> metrics.jsonl rows
SELECTION_REPORT = "selection.html"  # written into a run dir by the trainer's selection report, when present

# Fields of the trainer's metrics.jsonl rows (trainer/run.py): validation accuracies of each round.
MEAN_CLASS_KEY, TOP1_KEY = "mean_class_acc", "top1"


@dataclass
class MatchingFraction:
    """Share of retrieved source images whose class is one the target class was built from, at depth k."""

    k: int
    per_class: dict[str, float]  # target class -> mean over its training images
    overall: float  # mean over all target training images
    random_per_class: dict[str, float]  # what uniform random selection gives in expectation
    random_overall: float


def target_images(target_dir: Path, split: str = "train") -> list[tuple[str, Path]]:
    """(class name, path) of every image of ``target_dir/split``, sorted for reproducibility."""
    return [(p.parent.name, p) for p in sorted((Path(target_dir) / split).glob("*/*")) if p.is_file()]


def matching_fractions(base_url: str, manifest: DemoManifest, target_dir: Path, depths: list[int],
                       token: str | None = None) -> list[MatchingFraction]:
    """Ask the service for the ``max(depths)`` nearest source images of every target training image and count,
    at each depth, the share that comes from the target class's matching source classes."""
    images = target_images(target_dir)
    queries = [Query(id=str(i), image_b64=encode_image(path.read_bytes()))
               for i, (_, path) in enumerate(images)]
    with RetrievalClient(base_url, token=token) as client:
        response = client.neighbors(queries, k=max(depths))
    hits: list[tuple[str, list[bool]]] = []  # per image: its class, whether each ranked neighbor matches
    for (cls, _), result in zip(images, response.results, strict=True):
        matching = set(manifest.mapping[cls])
        hits.append((cls, [n.class_name in matching for n in result.neighbors]))
    classes = sorted(manifest.mapping)
    random_per_class = {c: manifest.random_fraction(c) for c in classes}
    counts = {c: sum(1 for cls, _ in hits if cls == c) for c in classes}
    random_overall = sum(random_per_class[c] * counts[c] for c in classes) / max(1, len(hits))
    out = []
    for k in depths:
        share = [(cls, sum(h[:k]) / k) for cls, h in hits]
        per_class = {c: sum(s for cls, s in share if cls == c) / max(1, counts[c]) for c in classes}
        overall = sum(s for _, s in share) / max(1, len(share))
        out.append(MatchingFraction(k, per_class, overall, random_per_class, random_overall))
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-round records of a trainer run (``metrics.jsonl``), oldest first."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy_by_round(records: list[dict]) -> list[tuple[int, float | None, float | None]]:
    """(round, mean class accuracy, top-1) per round record."""
    return [(int(r.get("round", i)), r.get(MEAN_CLASS_KEY), r.get(TOP1_KEY)) for i, r in enumerate(records)]


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def outcome(runs: Runs) -> dict:
    """Final-round mean class accuracy per mode and seed, the means, and selective - random paired by seed."""
    per_seed: dict[str, dict[int, float]] = {}
    for seed, modes in runs.items():
        for mode, records in modes.items():
            finals = [mca for _, mca, _ in accuracy_by_round(records) if mca is not None]
            if finals:
                per_seed.setdefault(mode, {})[seed] = finals[-1]
    means = {mode: sum(v.values()) / len(v) for mode, v in per_seed.items()}
    diff = None
    if "selective" in per_seed and "random" in per_seed:
        found = paired("selective", "random", per_seed["selective"], per_seed["random"])
        diff = found.to_dict() if found else None
    return {"metric": MEAN_CLASS_KEY, "per_seed": per_seed, "mean": means, "paired": diff}


def outcome_table(result: dict) -> str:
    """One line per mode: each seed's final accuracy and the mean; then the paired difference."""
    seeds = sorted({s for v in result["per_seed"].values() for s in v})
    header = f"{'source mode':<12} " + " ".join(f"{'seed ' + str(s):>8}" for s in seeds) + f" {'mean':>8}"
    lines = [header, "-" * len(header)]
    for mode, values in result["per_seed"].items():
        lines.append(f"{mode:<12} " + " ".join(f"{_fmt(values.get(s)):>8}" for s in seeds)
                     + f" {_fmt(result['mean'][mode]):>8}")
    diff = result["paired"]
    if diff:
        ci = "" if diff["ci95"] is None else f", 95 % CI (Student t) +-{100 * diff['ci95']:.1f} points"
        per = ", ".join(f"{100 * d:+.1f}" for d in diff["diffs"])
        lines.append(f"selective - random: {100 * diff['mean']:+.1f} points on average (per seed {per}{ci})")
    return "\n".join(lines)


def selection_reports(runs_dir: Path) -> list[Path]:
    """The selection reports (``selection.html``) the selective runs wrote, if any."""
    return sorted(Path(runs_dir).glob(f"seed*/selective/{SELECTION_REPORT}"))


def matching_table(fractions: list[MatchingFraction], manifest: DemoManifest) -> str:
    """Per target class: matching source classes, retrieved share at each depth, random expectation."""
    header = (f"{'target class':<12} {'matching source classes':<38} "
              + " ".join(f"{'@' + str(f.k):>7}" for f in fractions) + f" {'random':>7}")
    lines = [header, "-" * len(header)]
    for cls in sorted(manifest.mapping):
        lines.append(f"{cls:<12} {', '.join(manifest.mapping[cls]):<38} "
                     + " ".join(f"{100 * f.per_class[cls]:6.1f}%" for f in fractions)
                     + f" {100 * fractions[0].random_per_class[cls]:6.1f}%")
    lines.append(f"{'all':<12} {'':<38} " + " ".join(f"{100 * f.overall:6.1f}%" for f in fractions)
                 + f" {100 * fractions[0].random_overall:6.1f}%")
    return "\n".join(lines)


def plot(out_png: Path, runs: Runs, fractions: list[MatchingFraction]) -> Path:
    """Left: validation mean class accuracy per round, thin lines per seed and a thick mean per mode.
    Right: matching share per target class."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers or CI
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_match) = plt.subplots(1, 2, figsize=(11, 4))
    rounds: set[int] = set()
    modes = sorted({m for by_mode in runs.values() for m in by_mode}, reverse=True)  # selective first
    for colour, mode in zip(("tab:blue", "tab:orange", "tab:green"), modes, strict=False):
        curves = [[(r, mca) for r, mca, _ in accuracy_by_round(by_mode[mode]) if mca is not None]
                  for by_mode in runs.values() if mode in by_mode]
        for points in curves:
            if points:
                ax_acc.plot(*zip(*points, strict=True), color=colour, alpha=0.3, linewidth=1)
                rounds.update(r for r, _ in points)
        by_round: dict[int, list[float]] = {}
        for points in curves:
            for r, mca in points:
                by_round.setdefault(r, []).append(mca)
        xs = sorted(by_round)
        ax_acc.plot(xs, [sum(by_round[r]) / len(by_round[r]) for r in xs], color=colour, marker="o",
                    linewidth=2.5, label=f"{mode} sources (mean of {len(curves)} seeds)")
    n_classes = len(fractions[0].per_class)
    ax_acc.axhline(1 / n_classes, color="grey", linestyle=":", label="chance")
    ax_acc.set_xticks(sorted(rounds))
    ax_acc.set(xlabel="round", ylabel="val mean class accuracy", ylim=(0, 1), title="Joint fine-tuning")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    first = fractions[0]
    classes = sorted(first.per_class)
    xs = range(len(classes))
    ax_match.bar([x - 0.2 for x in xs], [first.per_class[c] for c in classes], width=0.4,
                 label=f"selective (k={first.k})")
    ax_match.bar([x + 0.2 for x in xs], [first.random_per_class[c] for c in classes], width=0.4,
                 label="random (expected)")
    ax_match.set_xticks(list(xs), classes, rotation=30)
    ax_match.set(ylim=(0, 1.2), ylabel="share from matching source classes", title="What retrieval picks")
    ax_match.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax_match.legend(loc="upper center", ncol=2)
    return save_figure(fig, out_png, dpi=110)


def write_summary(path: Path, runs: Runs, fractions: list[MatchingFraction], extra: dict) -> None:
    summary = {
        "runs": {f"seed{seed}": {name: [dict(zip(("round", "mean_class_acc", "top1"), row, strict=True))
                                        for row in accuracy_by_round(recs)] for name, recs in by_mode.items()}
                 for seed, by_mode in runs.items()},
        "matching_fraction": [asdict(f) for f in fractions],
        **extra,
    }
    atomic_write(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
