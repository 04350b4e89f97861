"""The selection report from plain data: real image files, known picks, known class shares."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from trainer.reports.selection import (
    FILES_DIR,
    THUMB_PX,
    Pick,
    random_baseline,
    sample_targets,
    write_selection_report,
)

TARGET_CLASSES = ["zebra", "leopard <b>"]  # a name with markup: it must come out escaped


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    targets, labels = [], []
    for i in range(6):
        path = tmp_path / "target" / f"t{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
        targets.append(str(path))
        labels.append(i % 2)
    sources = {}
    for s in range(10):
        path = tmp_path / "cache" / f"{s}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        sources[s] = path
    del sources[9]  # not cached: a placeholder

    def picks(i: int, k: int) -> list[tuple]:
        # zebra targets (even) pick stripes sources 0..4, leopard targets dots sources 5..9, one stripes each
        own = range(0, 5) if i % 2 == 0 else range(5, 10)
        chosen = [
            (s, 0.01 * (n + 1), 0 if s < 5 else 1, "stripes" if s < 5 else "dots") for n, s in enumerate(own)
        ]
        if i % 2:
            chosen[-1] = (2, 0.2, 0, "stripes")
        return chosen[:k]

    rounds = [[picks(i, 2) for i in range(6)], [picks(i, 5) for i in range(6)]]
    return {"targets": targets, "labels": labels, "rounds": rounds, "sources": sources}


def test_report_files_shares_and_baseline(tmp_path, data):
    report = write_selection_report(
        tmp_path / "run",
        data["targets"],
        data["labels"],
        TARGET_CLASSES,
        data["rounds"],
        source_paths=data["sources"],
        index_classes=["stripes", "dots", "rings", "noise"],
        index_class_counts={"stripes": 10, "dots": 10, "rings": 20, "noise": 0},
        excluded_ids=[7, 9, 7],
        per_class=2,
        max_shown=4,
    )
    assert report.shares == {"leopard <b>": {"dots": 0.8, "stripes": 0.2}, "zebra": {"stripes": 1.0}}
    assert report.baseline == {"stripes": 0.25, "dots": 0.25, "rings": 0.5}
    assert report.baseline_kind == "the index's class frequencies"
    assert len(report.sample) == 4 and report.sample == sample_targets(data["labels"], 2, 0)

    text = report.html.read_text()
    assert "<b>" not in text and "leopard &lt;b&gt;" in text
    assert "random selection" in text and "25.0%" in text and "80.0%" in text
    assert "K = 5 (+1 more)" in text and "excluded by the leakage guard" in text
    thumbs = re.findall(r'src="([^"]+)"', text)
    assert thumbs and all((report.html.parent / t).is_file() for t in thumbs)
    assert all(t.startswith(f"{FILES_DIR}/") for t in thumbs)
    with Image.open(report.html.parent / thumbs[0]) as img:
        assert img.format == "JPEG" and max(img.size) <= THUMB_PX
    assert text.count('class="ph"') >= 1  # excluded source 9 is not cached
    assert text.count('class="new"') > 0  # sources first used in round 1 are marked

    with Image.open(report.png) as sheet:
        assert sheet.format == "PNG" and sheet.size[1] > 4 * THUMB_PX and sheet.size[0] > 5 * THUMB_PX
    summary = json.loads(report.json.read_text())
    assert summary["excluded_ids"] == [7, 9] and summary["rounds"] == 2 and summary["shares"] == report.shares


def test_baseline_without_counts_is_uniform_then_the_selection_mix():
    picks = [[Pick(1, 0.1, 0, "a"), Pick(2, 0.2, 1, "b")], [Pick(1, 0.1, 0, "a"), Pick(3, 0.1, 1, "b")]]
    uniform, kind = random_baseline(["a", "b", "c", "d"], None, picks)
    assert uniform == {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25} and "uniform" in kind
    mix, kind = random_baseline(None, None, picks)
    assert mix == pytest.approx({"a": 1 / 3, "b": 2 / 3}) and "selected" in kind  # distinct sources 1, 2, 3
    ordered, _ = random_baseline(["a", "b"], [3, 1], picks)
    assert ordered == {"a": 0.75, "b": 0.25}
    with pytest.raises(ValueError, match="same length"):
        random_baseline(["a"], [3, 1], picks)


def test_sample_is_seeded_and_bounded_per_class():
    labels = [0] * 10 + [1] * 2
    a, b = sample_targets(labels, 3, seed=5), sample_targets(labels, 3, seed=5)
    assert a == b and len(a) == 5 and set(a[3:]) == {10, 11}
    assert sample_targets(labels, 3, seed=6) != a or sample_targets(labels, 3, seed=7) != a


def test_inconsistent_input_is_refused(tmp_path, data):
    with pytest.raises(ValueError, match="labels"):
        write_selection_report(tmp_path, data["targets"], data["labels"][:-1], TARGET_CLASSES, data["rounds"])
    with pytest.raises(ValueError, match="one list of picks per target"):
        write_selection_report(
            tmp_path, data["targets"], data["labels"], TARGET_CLASSES, [data["rounds"][0][:3]]
        )
    assert not (tmp_path / "selection.html").exists()
