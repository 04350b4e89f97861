"""The leakage guard against a real service: a source that is a byte copy of a target val image, or a near
copy of a target train image, is found, saved, counted in every row, and never trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.client import RetrievalClient
from services.fileio import file_sha256
from trainer.remote.leak import find_leaks
from trainer.remote.queries import QueryMaker, local_descriptors

from .conftest import run_trainer, trainer_cmd
from .helpers import make_target

pytestmark = pytest.mark.timeout(240)
THRESHOLD = "5e-3"  # at 32 px a one-pixel change measures ~1.4e-3 JS; distinct images >= ~3e-2


@pytest.fixture(scope="module")
def leaky(tmp_path_factory, index_dir: Path, service) -> tuple[Path, list[int]]:
    """A target whose val/ holds a byte copy of source A and train/ a one-pixel change of source B."""
    root = make_target(tmp_path_factory.mktemp("leaky"), train=3, val=2)
    images = sorted((index_dir.parent / "images").rglob("*.png"))
    a, b = images[3], images[17]
    shutil.copy(a, root / "val" / "dots" / "copy.png")
    pixels = np.asarray(Image.open(b).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(root / "train" / "stripes" / "near.png")
    with RetrievalClient(service) as client:
        found = client.sources_by_sha256([file_sha256(a), file_sha256(b)])
    ids = sorted(found[file_sha256(a)] + found[file_sha256(b)])
    return root, ids


def test_byte_copies_and_near_copies_are_found(leaky, service):
    root, ids = leaky
    paths = sorted(str(p) for p in root.rglob("*.png"))
    with RetrievalClient(service) as client:
        desc, spec_hash = local_descriptors(client.spec(), paths)
        report = find_leaks(client, QueryMaker(paths, desc, spec_hash), 3, float(THRESHOLD), "js")
        strict = find_leaks(client, QueryMaker(paths, desc, spec_hash), 3, 1e-9, "js")
    assert set(ids) <= set(report.ids) and report.same_bytes >= 1 and report.near_copy >= 2
    assert ids[0] in strict.ids or ids[1] in strict.ids  # the byte copy sits at distance 0


def test_a_run_never_trains_on_leaked_sources(leaky, service, tmp_path: Path):
    root, ids = leaky
    cmd = trainer_cmd(root, service, tmp_path / "run", tmp_path / "cache", "--leak-threshold", THRESHOLD,
                      "--k0", "5")
    done = run_trainer(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    leaked = json.loads((tmp_path / "run" / "leaked.json").read_text())["ids"]
    assert set(ids) <= set(leaked)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["leaked_excluded"] == len(leaked) for r in rows)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    used = {s for ranked in ckpt["sources"]["lists"]["ranked"] for s in ranked}
    assert used and not used & set(leaked)


def test_no_leak_guard_keeps_them(leaky, service, tmp_path: Path):
    root, ids = leaky
    cmd = trainer_cmd(root, service, tmp_path / "run", tmp_path / "cache", "--no-leak-guard", "--rounds", "1",
                      "--k0", "5")
    done = run_trainer(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "run" / "leaked.json").exists()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    used = {s for ranked in ckpt["sources"]["lists"]["ranked"] for s in ranked}
    assert used & set(ids)  # without the guard the copies are among the nearest neighbors
