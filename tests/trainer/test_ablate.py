"""The ablation harness: its statistics against scipy, its rows and run order, and a tiny end-to-end ablation
(2 seeds x 2 rows) against a live service, resumed without re-running finished cells."""

from __future__ import annotations

import json
import math

import pytest
import scipy.stats

from trainer.ablation.harness import ROWS, cell_config, cell_dir, parse_rows, parse_seeds, seeds_of
from trainer.ablation.stats import paired, summarise_row, t_half_width
from trainer.cli import main
from trainer.config import ConfigError, RunConfig

from .conftest import FAST_FLAGS


@pytest.mark.parametrize("values", [[0.2, 0.4], [0.51, 0.55, 0.49], [0.1, 0.3, 0.2, 0.25, 0.6]])
def test_t_interval_matches_scipy(values):
    mean = sum(values) / len(values)
    lo, hi = scipy.stats.t.interval(0.95, len(values) - 1, loc=mean, scale=scipy.stats.sem(values))
    assert t_half_width(values) == pytest.approx((hi - lo) / 2, rel=1e-12)
    row = summarise_row("x", values)
    assert row.ci95_bounds == pytest.approx([lo, hi], rel=1e-12)
    assert row.std == pytest.approx(scipy.stats.tstd(values))


def test_three_seeds_use_t_not_the_normal_quantile():
    assert t_half_width([0.0, 1.0, 2.0]) == pytest.approx(4.302652729749464 * 1.0 / math.sqrt(3))
    single = summarise_row("x", [0.4])
    assert single.std == 0.0 and single.ci95 is None and single.ci95_bounds is None


def test_paired_differences_are_per_seed():
    p = paired("selective", "random", {0: 0.6, 1: 0.7, 2: 0.5}, {0: 0.5, 1: 0.65, 3: 0.1})
    assert p.seeds == [0, 1] and p.diffs == pytest.approx([0.1, 0.05]) and p.mean == pytest.approx(0.075)
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=0.075, scale=scipy.stats.sem([0.1, 0.05]))
    assert p.ci95_bounds == pytest.approx([lo, hi])
    assert paired("a", "b", {0: 1.0}, {1: 1.0}) is None


def test_seeds_and_rows_parsing():
    assert parse_seeds("0") == [0]  # a single number is a seed, never a count (issue 19)
    assert parse_seeds("3") == [3]
    assert parse_seeds("0,2,4") == [0, 2, 4]
    for bad in ("", "a,b", "1,1", "3.5"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    assert seeds_of(None, 3, first=5) == [5, 6, 7]  # the count has its own flag, --num-seeds
    assert seeds_of("0", 3, first=5) == [0]
    with pytest.raises(ConfigError, match="--num-seeds must be >= 1"):
        seeds_of(None, 0, first=0)
    assert parse_rows("selective, probe") == ["selective", "probe"]
    with pytest.raises(ConfigError, match="unknown row"):
        parse_rows("selective,best")


def test_ablate_reads_seeds_0_as_seed_0_and_refuses_a_list_with_a_count(small_target, tmp_path, capsys,
                                                                         monkeypatch):
    cells = []

    def fake_cell(cfg, row):  # the cells' seeds are what this test is about, not their training
        cells.append((row, cfg.seed))
        return {"row": row, "seed": cfg.seed, "value": 0.5, "wall_s": 0.0}

    monkeypatch.setattr("trainer.ablation.harness.run_cell", fake_cell)
    base = ["ablate", "--target", str(small_target), "--service", "http://127.0.0.1:9", "--rows", "none"]
    assert main([*base, "--out", str(tmp_path / "a"), "--seeds", "0"]) == 0
    assert cells == [("none", 0)]
    cells.clear()
    assert main([*base, "--out", str(tmp_path / "b"), "--seed", "4", "--num-seeds", "2"]) == 0
    assert cells == [("none", 4), ("none", 5)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*base, "--out", str(tmp_path / "c"), "--seeds", "0", "--num-seeds", "2"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_cells_override_the_base_and_random_matches_the_selective_pool(tmp_path):
    base = RunConfig(str(tmp_path), "http://x", str(tmp_path / "abl"), adaptive=False, train_layers="head")
    rows = list(ROWS)
    random = cell_config(base, "random", 4, rows)
    assert random.match_pool == str(cell_dir(base.out, "selective", 4)) and random.seed == 4
    assert random.out == str(tmp_path / "abl" / "random" / "seed4")
    assert cell_config(base, "selective", 4, rows).adaptive is True  # a base --no-adaptive does not leak
    assert cell_config(base, "none", 4, rows).train_layers == "all"
    probe = cell_config(base, "probe", 4, rows)
    assert (probe.source_mode, probe.train_layers) == ("none", "head")
    assert cell_config(base, "random", 4, ["random", "none"]).match_pool is None


@pytest.mark.timeout(400)
def test_tiny_ablation_end_to_end_and_resume(service, small_target, tmp_path, capsys, monkeypatch):
    out = tmp_path / "abl"
    argv = ["ablate", "--target", str(small_target), "--service", service, "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), *FAST_FLAGS, "--rounds", "1", "--steps-per-round", "4",
            "--seeds", "0,1", "--rows", "random,selective"]
    assert main(argv) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in result["rows"]] == ["random", "selective"]
    by_row = {r["row"]: r for r in result["rows"]}
    assert all(len(r["runs"]) == 2 and r["ci95"] is not None for r in result["rows"])
    (diff,) = result["paired"]  # no `none` row: only selective - random
    assert (diff["a"], diff["b"], diff["seeds"]) == ("selective", "random", [0, 1])
    expected = [s - r for s, r in zip(by_row["selective"]["runs"], by_row["random"]["runs"], strict=True)]
    assert diff["diffs"] == pytest.approx(expected)
    assert set(result["wall_s"]) == {"random", "selective"} and "--rows random,selective" in result["command"]
    # Each seed ran selective first; random drew as many sources as selective's run of the same seed used.
    for seed in (0, 1):
        cells = {c["row"]: c for c in result["cells"] if c["seed"] == seed}
        assert cells["random"]["sources_in_use"] == cells["selective"]["sources_in_use"] > 0
        assert cells["random"]["steps"] == cells["selective"]["steps"]
    assert (out / "ablation.png").stat().st_size > 1000
    assert "| selective - random |" in (out / "ablation.md").read_text()

    # Finished cells are never trained again: the second call only re-reads them.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr("trainer.run.run", refuse)
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads((out / "ablation.json").read_text())["rows"] == result["rows"]


def _result(seeds: list[int], values: dict[str, list[float]], **config) -> dict:
    cfg = RunConfig("t", "http://x", "o").to_dict() | config
    cells = [{"row": row, "seed": s, "value": v, "wall_s": 1.0} for row, vs in values.items()
             for s, v in zip(seeds, vs, strict=True)]
    return {"command": f"ablate {seeds}", "interval": "t", "cells": cells, "config": cfg}


def test_merging_ablations_pools_the_seeds_and_refuses_a_different_recipe(tmp_path):
    from bench.ablation_merge import main as merge_main

    a = _result([0, 1], {"random": [0.2, 0.3], "selective": [0.25, 0.31]}, out="a", workers=2)
    b = _result([2], {"random": [0.4], "selective": [0.44]}, out="b", workers=0)  # free fields may differ
    del b["config"]["reinit_tail"]  # written before the field existed: its default then
    paths = []
    for name, result in (("a", a), ("b", b), ("a_again", a)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    assert merge_main([str(tmp_path / "m"), *map(str, paths)]) == 0
    merged = json.loads((tmp_path / "m" / "ablation.json").read_text())
    assert merged["seeds"] == [0, 1, 2]
    (diff,) = merged["paired"]
    assert diff["diffs"] == pytest.approx([0.05, 0.01, 0.04])
    assert {r["row"]: r["runs"] for r in merged["rows"]}["random"] == pytest.approx([0.2, 0.3, 0.4])
    assert (tmp_path / "m" / "ablation.png").is_file()

    other = tmp_path / "other.json"
    other.write_text(json.dumps(_result([3], {"random": [0.1]}, lr=0.5)))
    assert merge_main([str(tmp_path / "m2"), str(paths[0]), str(other)]) == 2
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps(_result([0], {"random": [0.9]})))
    assert merge_main([str(tmp_path / "m3"), str(paths[0]), str(clash)]) == 2
