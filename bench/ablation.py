"""The paper's ablation table in miniature: Imagewoof (20 train / class) against a CIFAR-100 Gabor index.

Rows none / all / random / selective --no-adaptive / selective, ResNet-18 from scratch at 64 px on the CPU,
the same seeds and budgets for every row; the reference is ``none`` (plain fine-tuning), and each row prints
its ratio to it.

    .venv/bin/python bench/ablation.py [--seeds 1] [--rounds 2] [--epochs-per-round 1] [--index DIR]

The index: --index, else bench_out/cifar100-gabor (the build benchmark's), else
bench_out/cifar100-sub20-gabor64, else one built here from the first 10 CIFAR-100 training images per class
(bench_out/ablation-cifar100-sub10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval_service.testing import live_server  # noqa: E402
from trainer.ablate import ablate  # noqa: E402
from trainer.config import RunConfig  # noqa: E402

DATA = Path("/work/shared/data")
BENCH_OUT = REPO / "bench_out"


def find_or_build_index(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for name in ("cifar100-gabor", "cifar100-sub20-gabor64"):
        if (BENCH_OUT / name / "index.json").is_file():
            return BENCH_OUT / name
    out = BENCH_OUT / "ablation-cifar100-sub10"
    if not (out / "index.json").is_file():
        from retrieval_service.build.builder import build_index

        src = BENCH_OUT / "ablation-cifar100-sub10-src"
        for cls in sorted((DATA / "cifar100" / "train").iterdir()):
            (src / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:10]:
                if not (src / cls.name / f.name).exists():
                    shutil.copy(f, src / cls.name / f.name)
        build_index(src, out, size=64, bins=16, batch_size=64, workers=2, progress=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs-per-round", type=int, default=1)
    p.add_argument("--k0", type=int, default=2)
    p.add_argument("--k-max", type=int, default=10)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--index", default=None)
    p.add_argument("--out", default=str(BENCH_OUT / "ablation"))
    args = p.parse_args()
    index = find_or_build_index(args.index)
    print(f"index: {index}", flush=True)
    started = time.perf_counter()
    with live_server(index, Path(args.out + ".server.log"), redis_url=os.environ.get("REDIS_URL", "")) as url:
        cfg = RunConfig(
            target=str(DATA / "imagewoof"), service=url, out=args.out, rounds=args.rounds, k0=args.k0,
            k_max=args.k_max, arch="resnet18", epochs_per_round=args.epochs_per_round,
            input_size=args.input_size, batch_size=32, cache_dir=str(BENCH_OUT / "ablation-cache"), workers=2,
        ).validate()
        summary = ablate(cfg, args.seeds)
    ref = next(s for s in summary if s["row"] == "none")["mean"]
    for s in summary:
        ratio = s["mean"] / ref if ref else float("nan")
        print(f"{s['row']:>24}: {100 * s['mean']:.2f} +- {100 * s['std']:.2f}  ratio vs none {ratio:.3f}")
    print(f"total {time.perf_counter() - started:.0f} s for {len(summary)} rows x {args.seeds} seed(s)")


if __name__ == "__main__":
    main()
