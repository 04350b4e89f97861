"""A build killed, then resumed after a same-size change to an already extracted file, re-extracts it."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval_service.cli import main
from retrieval_service.index.loaded import LoadedIndex
from services.extract import DescriptorExtractor
from services.images import load_image
from tests.retrieval.test_cli import BUILD_ARGS, cli, wait_for_line


def bmp_corpus(root: Path, per_class: int = 10) -> Path:
    """Uncompressed BMPs: a file rewritten with other pixels keeps its exact size."""
    rng = np.random.default_rng(7)
    for c in range(6):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((32, 32, 3)) * (40 + 35 * c)).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"img{i:02d}.bmp")
    return root


def test_resume_re_extracts_a_file_changed_with_the_same_size(tmp_path, caplog):
    source = bmp_corpus(tmp_path / "src")
    killed = tmp_path / "killed"
    proc = cli("build", "--source", str(source), "--out", str(killed), *BUILD_ARGS)
    wait_for_line(proc, "shard 1/15 written", deadline_s=180)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (Path(f"{killed}.partial") / "shards" / "shard-00000.npz").is_file()

    first = source / "class0" / "img00.bmp"  # candidate 0: in the finished shard 0
    size = first.stat().st_size
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(first)  # white now, not noise
    assert first.stat().st_size == size

    caplog.set_level(logging.INFO, logger="retrieval_service.build.builder")
    assert main(["build", "--source", str(source), "--out", str(killed), *BUILD_ARGS]) == 0
    assert "shard 0: files changed since its extraction" in caplog.text
    # Id 0 holds the histogram of the file as it is now, under the edges the first run fitted and kept.
    index = LoadedIndex.load(killed)
    fresh = DescriptorExtractor(index.spec, device="cpu").histograms(load_image(first, index.spec.size)[None])
    stored = index.engine.histograms([0])[0]  # (D, B)
    np.testing.assert_array_equal(stored, fresh[0].astype(np.float16).astype(stored.dtype))
    index.close()
