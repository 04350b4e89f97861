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


def test_a_same_size_copy_that_keeps_the_mtime_invalidates_its_shard(tmp_path):
    """``cp -p`` (or ``rsync -t``) of other bytes at the same size keeps size and mtime: only the ctime,
    which nobody can set back, tells the shard is stale (issue 17, item 5)."""
    from retrieval_service.build.shards import shard_path
    from retrieval_service.build.stamps import invalidate_changed_shards
    from retrieval_service.index.corpus import SourceRecord

    source = bmp_corpus(tmp_path / "src", per_class=1)
    records = [SourceRecord(i, f"class{i}/img00.bmp", None, i, f"class{i}", "bmp", 0) for i in range(6)]
    shards = tmp_path / "shards"
    assert invalidate_changed_shards(shards, source, records, shard_size=3) == 0  # first run: stamps written
    for index in (0, 1):
        shard_path(shards, index).write_bytes(b"a finished shard")

    first = source / "class0" / "img00.bmp"
    before = first.stat()
    replacement = tmp_path / "other.bmp"
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(replacement)
    first.write_bytes(replacement.read_bytes())
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))  # what cp -p does
    after = first.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    assert invalidate_changed_shards(shards, source, records, shard_size=3) == 1
    assert not shard_path(shards, 0).exists() and shard_path(shards, 1).exists()


def test_workers_of_a_killed_build_end_quietly(tmp_path):
    """SIGKILL the driver of a ``--workers 2`` build mid-extraction: its workers must end with it, silently
    (they used to finish their batch and print BrokenPipeError tracebacks; issue 17, item 9). stderr reaches
    EOF only once every worker holding it has exited."""
    source = bmp_corpus(tmp_path / "src", per_class=40)  # enough batches queued that workers are busy
    args = list(BUILD_ARGS)
    args[args.index("--workers") + 1] = "2"  # the same build, on two worker processes
    proc = cli("build", "--source", str(source), "--out", str(tmp_path / "idx"), *args)
    wait_for_line(proc, "shard 2/60 written", deadline_s=300)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err, err[-3000:]
