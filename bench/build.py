"""Index-build benchmark: build time, images/s, index size on disk and in memory, against a naive loop.

Reference (measured in the same run): the naive pipeline, one image at a time in one process (``load_image``
then ``DescriptorExtractor.histograms`` on a batch of 1), over the first ``--reference-images`` candidates
with the index's own spec. The ratio is build extraction images/s over naive images/s.

    OMP_NUM_THREADS=1 .venv/bin/python bench/build.py --source ../shared/data/cifar100/train \\
        --out bench_out/cifar100-gabor [--limit 1000] [--workers 1]

``--limit N`` indexes a copy of the first N / classes images of every class (a quick run); without it the
whole source is indexed. The build is resumable: the same command, run again after an interruption, continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RSS_PROBE = """
import sys, numpy as np
from retrieval_service.index.loaded import LoadedIndex
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
before = rss()
index = LoadedIndex.load(sys.argv[1], verify=True)
loaded = rss()
queries = index.engine.histograms(np.arange(min(64, index.size)))  # (64, D, B)
index.engine.search(queries, k=10)
print(before, loaded, rss())
"""


def subset(source: Path, dest: Path, limit: int) -> Path:
    """A copy of the first ``limit / classes`` files of every class.

    Copies, not symlinks: links leaving the corpus root are refused by the build.
    """
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = max(1, limit // len(classes))
    for cls in classes:
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(cls.iterdir())[:per_class]:
            if not (dest / cls.name / path.name).exists():
                shutil.copyfile(path, dest / cls.name / path.name)
    return dest


def naive_images_per_s(index_dir: Path, n: int) -> float:
    import numpy as np

    from retrieval_service.index.loaded import LoadedIndex
    from services.extract import DescriptorExtractor
    from services.images import load_image

    index = LoadedIndex.load(index_dir, verify=False)
    extractor = DescriptorExtractor(index.spec, device="cpu")
    records = index.manifest.get_many(range(min(n, index.size)))
    started = time.perf_counter()
    for record in records:
        with index.open_source(record.source_id) as stream:
            image = load_image(stream.read(), index.spec.size)
        extractor.histograms(np.asarray(image)[None])  # (1, D, B)
    return len(records) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0, help="index only about this many images (a copy)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reference-images", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from retrieval_service.build.builder import build_index

    source = args.source
    if args.limit:
        source = subset(args.source, args.out.with_name(args.out.name + "-src"), args.limit)
    started = time.perf_counter()
    report = build_index(
        source,
        args.out,
        size=args.size,
        workers=args.workers,
        batch_size=args.batch_size,
        device="cpu",
        progress=False,
    )
    wall = time.perf_counter() - started
    peak_mb = (
        max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        / 1024
    )
    disk = {p.name: p.stat().st_size for p in args.out.iterdir() if p.is_file()}
    before, loaded, searched = map(
        float,
        subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(args.out)],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split(),
    )
    naive = naive_images_per_s(args.out, args.reference_images)
    result = {
        "source": str(args.source),
        "images": report.size,
        "skipped": len(report.skipped),
        "size_px": args.size,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "resumed_shards": report.resumed_shards,
        "wall_s": round(wall, 1),
        "timings_s": report.timings_s,
        "build_images_per_s": report.images_per_s,
        "naive_images_per_s": round(naive, 2),
        "ratio_vs_naive": round(report.images_per_s / naive, 2),
        "disk_mb": round(sum(disk.values()) / 2**20, 2),
        "disk_files_mb": {k: round(v / 2**20, 2) for k, v in disk.items()},
        "build_peak_rss_mb": round(peak_mb, 1),
        "load_rss_mb": round(loaded - before, 1),
        "after_search_rss_mb": round(searched - before, 1),
    }
    (args.out.parent / f"{args.out.name}-bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(
        f"\nbuild {report.images_per_s:.2f} img/s vs naive loop {naive:.2f} img/s: "
        f"ratio {result['ratio_vs_naive']:.2f}x; {report.size} images in {wall:.0f} s; "
        f"{result['disk_mb']} MB on disk; +{result['load_rss_mb']} MB RSS loaded"
    )


if __name__ == "__main__":
    main()
