"""What the demo measures: how often retrieval picks the matching source classes, and the selective-vs-random
comparison of the two training runs (tables on stdout, a figure, ``summary.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from demo.data import DemoManifest
from services.client import RetrievalClient, encode_image
from services.schemas import Query

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


def comparison_table(runs: dict[str, list[dict]]) -> str:
    """Round-by-round validation accuracy of each run, side by side."""
    rows = {name: {r: (mca, top1) for r, mca, top1 in accuracy_by_round(recs)} for name, recs in runs.items()}
    rounds = sorted({r for by_round in rows.values() for r in by_round})
    header = "round  " + "  ".join(f"{name + ' mean-class':>20} {name + ' top-1':>15}" for name in runs)
    lines = [header, "-" * len(header)]
    for r in rounds:
        cells = []
        for name in runs:
            mca, top1 = rows[name].get(r, (None, None))
            cells.append(f"{_fmt(mca):>20} {_fmt(top1):>15}")
        lines.append(f"{r:>5}  " + "  ".join(cells))
    return "\n".join(lines)


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


def plot(out_png: Path, runs: dict[str, list[dict]], fractions: list[MatchingFraction]) -> Path:
    """Left: validation mean class accuracy per round for each run. Right: matching share per target class."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers or CI
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_match) = plt.subplots(1, 2, figsize=(11, 4))
    rounds: set[int] = set()
    for name, records in runs.items():
        points = [(r, mca) for r, mca, _ in accuracy_by_round(records) if mca is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=f"{name} sources")
            rounds.update(r for r, _ in points)
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
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def write_summary(path: Path, runs: dict[str, list[dict]], fractions: list[MatchingFraction],
                  extra: dict) -> None:
    summary = {
        "runs": {name: [dict(zip(("round", "mean_class_acc", "top1"), row, strict=True))
                        for row in accuracy_by_round(recs)] for name, recs in runs.items()},
        "matching_fraction": [asdict(f) for f in fractions],
        **extra,
    }
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
