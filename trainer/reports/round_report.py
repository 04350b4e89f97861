"""A round's sources as people see them: the selection report (``selection.html``, ``.png``, ``.json`` in the
run dir, rewritten at the end of every round by rank 0).

- selective: for every round so far, each target's K_i prefix of its ranked neighbor list with distances
  (the K vector of each round is kept in ``NeighborLists.k_rounds``, saved in the checkpoint, so a resumed
  run redraws the earlier rounds too), and the class table of the last round.
- random / all: the sources are not neighbor lists (the plan pairs a shared pool or the corpus stream with the
  targets, with no distance), so the report holds only the class table of the round's (target, source)
  pairs: what the run trained on, against what selection would prefer. No per-target part.
- none: no sources, no report.

A report is a view of the run, never part of it: ``write_round_report`` turns any failure into a warning.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from trainer.reports.selection import Pick, SelectionReport, write_selection_report
from trainer.rounds.neighbors import NeighborLists
from trainer.rounds.plan import Plan
from trainer.rounds.selection import SourceState


def _class_name(classes: Sequence[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else f"class {label}"


def selective_rounds(lists: NeighborLists, classes: Sequence[str]) -> list[list[list[Pick]]]:
    """``rounds[r][i]``: target i's K_i prefix in round r, nearest first."""
    def picks(i: int, k: int) -> list[Pick]:
        return [Pick(s, d, y, _class_name(classes, y)) for s, d, y in lists.prefix(i, k)]

    return [[picks(i, ki) for i, ki in enumerate(k)] for k in lists.k_rounds]


def paired_sources(
    plan: Plan, n_targets: int, state: SourceState, classes: Sequence[str]
) -> list[list[Pick]]:
    """Per target: the distinct sources the plan paired it with this round, in first-use order (no
    distance: they are not its neighbors)."""
    paired: list[dict[int, None]] = [{} for _ in range(n_targets)]
    for t, row in zip(plan.target.tolist(), plan.source.tolist(), strict=True):
        paired[t].update(dict.fromkeys(row))
    return [
        [Pick(s, math.nan, y, _class_name(classes, y)) for s in ids for y in (state.label(s),)]
        for ids in paired
    ]


def write_round_report(
    out: Path,
    rnd: int,
    state: SourceState,
    plan: Plan,
    target_paths: Sequence[str],
    target_labels: Sequence[int],
    target_classes: Sequence[str],
    index_classes: Callable[[], Sequence[str]],
    source_path: Callable[[int], Path | None],
    seed: int,
) -> SelectionReport | None:
    """The report after round ``rnd``; None in mode none or when writing failed (a warning on stderr).

    ``index_classes`` is called only here (it asks the service), so its failure is a report failure too.
    """
    if state.mode == "none":
        return None
    try:
        classes = list(index_classes())
        if state.mode == "selective":
            rounds, per_class = selective_rounds(state.lists, classes), 3
            first = rnd + 1 - len(rounds)  # > 0 only after resuming a checkpoint that kept no history
            shown = f"rounds {first}-{rnd}" if first < rnd else f"round {rnd}"
            title = f"Source images a selective run selected, {shown}"
        else:
            rounds, per_class = [paired_sources(plan, len(target_paths), state, classes)], 0
            title = (
                f"Source classes trained on in round {rnd} "
                f"({state.mode} mode: sources paired with targets by the plan, not neighbor lists)"
            )
        return write_selection_report(
            out,
            target_paths,
            target_labels,
            target_classes,
            rounds,
            source_paths=source_path,
            index_classes=classes,
            index_class_counts=None,  # GET /v1/index reports no class counts: the baseline is uniform
            excluded_ids=state.leaked,
            per_class=per_class,
            seed=seed,
            title=title,
        )
    except Exception as exc:  # noqa: BLE001 - a report must never fail the training run it describes
        why = f"{type(exc).__name__}: {exc}"
        print(f"warning: selection report of round {rnd} not written: {why}", file=sys.stderr)
        return None
