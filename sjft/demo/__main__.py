"""``python -m sjft.demo`` (what ``make demo`` runs): see ``sjft/demo/pipeline.py``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.clihelp import HelpFormatter
from sjft.demo.pipeline import DemoConfig, main
from sjft.demo.procs import install_signal_handlers
from trainer.ablation.harness import parse_seeds
from trainer.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sjft.demo", formatter_class=HelpFormatter,
        description="Selective vs random joint fine-tuning end to end, on synthetic data.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output dir (default demo_out)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny data and one short round (about a minute)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the service (and Redis) running at the end until Ctrl-C")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--seeds", default=None,
                        help="training seeds, comma-separated (default 0,1,2; 0 with --quick): selective and "
                             "random run once per seed, and the demo reports the mean and paired difference")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for the index build, service, trainer")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis for the service (default $REDIS_URL); '' runs without Redis")
    parser.add_argument("--no-random", action="store_true", help="skip the random-selection comparison run")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes of the index build")
    return parser


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    try:  # the same reading as `trainer ablate --seeds`: the seeds themselves, never a count
        seeds = tuple(parse_seeds(args.seeds or ("0" if args.quick else "0,1,2")))
    except ConfigError as exc:
        parser.error(str(exc))
    return DemoConfig(out=args.out, rounds=rounds, quick=args.quick, keep_running=args.keep_running,
                      seed=args.seed, seeds=seeds, device=args.device, redis_url=args.redis_url,
                      compare_random=not args.no_random, workers=args.workers)


if __name__ == "__main__":
    install_signal_handlers()
    sys.exit(main(parse_args()))
