"""The paper's ablation table on real data: a few-shot target against a source index, every row over seeds.

Finds the data as ../shared/data relative to the project root (or --data), uses --index or builds a Gabor
index of ``<data>/<corpus>`` into bench_out/ once, starts a real service on it (``retrieval_service.testing``;
or uses --service URL), and runs ``python -m trainer ablate`` with every other flag passed through, so each
trainer knob (--arch, --weights, --rounds, --steps-per-round, --k0, --lr, --seeds 0,1,2, --rows ...) is a flag
here too. Prints the table (rows with Student-t 95 % intervals, paired selective - random / - none) and each
row's ratio to ``none``; writes <out>/ablation.json, .md and .png.

    .venv/bin/python bench/ablation.py --seeds 0,1,2 --rounds 2 --arch efficientnet_lite0 --weights W.pt \\
        --input-size 160 --batch-size 32 [--corpus imagenet-source] [--target imagewoof] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval_service.testing import live_server  # noqa: E402
from trainer.cli import main as trainer_main  # noqa: E402

BENCH_OUT = REPO / "bench_out"


def find_or_build_index(explicit: str | None, data: Path, corpus: str, size: int) -> Path:
    """--index, else bench_out/<corpus>-gabor<size>, built here from <data>/<corpus> when missing."""
    if explicit:
        return Path(explicit)
    out = BENCH_OUT / f"{corpus}-gabor{size}"
    if not (out / "index.json").is_file():
        from retrieval_service.build.builder import build_index

        print(f"building {out} from {data / corpus} (once)", flush=True)
        build_index(data / corpus, out, size=size, bins=16, workers=2, progress=True)
    return out


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--corpus", default="imagenet-source", help="source folder under --data")
    p.add_argument("--target", default=None, help="target ImageFolder (default <data>/imagewoof)")
    p.add_argument("--index", default=None, help="an index dir (default bench_out/<corpus>-gabor<size>)")
    p.add_argument("--index-size", type=int, default=160, help="--size of an index built here")
    p.add_argument("--service", default=None, help="use this running service instead of starting one")
    p.add_argument("--out", default=str(BENCH_OUT / "ablation"))
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse(argv)
    # Relative to the working directory (the project root: ../shared/data/...), so the command and config
    # recorded in ablation.json name no machine path.
    target = args.target or os.path.relpath(args.data / "imagewoof")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = args.service
        if url is None:
            index = find_or_build_index(args.index, args.data, args.corpus, args.index_size)
            print(f"index: {index}", flush=True)
            log = Path(args.out + ".server.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            url = stack.enter_context(live_server(index, log, redis_url=os.environ.get("REDIS_URL", "")))
        code = trainer_main(["ablate", "--target", target, "--service", url, "--out", args.out, *passthrough])
    if code != 0:
        return code
    result = json.loads((Path(args.out) / "ablation.json").read_text())
    ref = next((r["mean"] for r in result["rows"] if r["row"] == "none"), None)
    for r in result["rows"]:
        ratio = f"  ratio vs none {r['mean'] / ref:.3f}" if ref else ""
        print(f"{r['row']:>24}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f}{ratio}")
    print(f"total {time.perf_counter() - started:.0f} s; {args.out}/ablation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
