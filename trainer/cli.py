"""``python -m trainer run|ablate``: flags of DESIGN.md section 2 plus a few extras.

Exit codes: 0 done; 1 the service failed (the message says how to resume); 2 bad input (one line saying what
to fix).
"""

from __future__ import annotations

import argparse
import sys

from services.client import ServiceError
from services.errors import SJFTError
from trainer.config import QUERY_MODES, SOURCE_MODES, ConfigError, RunConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message by default)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig("", "", "")
    p.add_argument("--target", required=True, help="ImageFolder with train/ and val/")
    p.add_argument("--service", required=True, help="retrieval service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, curves.png)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--k0", type=int, default=d.k0)
    p.add_argument("--k-max", type=int, default=d.k_max)
    p.add_argument("--sigma0", type=float, default=d.sigma0)
    p.add_argument("--sigma1", type=float, default=d.sigma1)
    p.add_argument("--delta", type=float, default=None, help="entropy threshold (default 0.5 * log C_target)")
    p.add_argument("--no-adaptive", dest="adaptive", action="store_false", help="keep K_i = K0")
    p.add_argument("--arch", default=d.arch, help="any torchvision classification model name")
    p.add_argument("--weights", default=None, help="backbone state dict file (classifier keys ignored)")
    p.add_argument("--epochs-per-round", type=int, default=d.epochs_per_round)
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-step-epochs", type=int, default=d.lr_step_epochs, help="0: after 2/3 of a round")
    p.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    p.add_argument("--cache-dir", default=None, help="source image cache (default ~/.cache/sjft)")
    p.add_argument("--token", default=None, help="bearer token of the service")
    p.add_argument("--metric", default=d.metric, choices=("js", "skl"))
    p.add_argument("--workers", type=int, default=d.workers, help="image decoding threads")
    p.add_argument("--fetch-workers", type=int, default=d.fetch_workers, help="parallel source streams")
    p.add_argument("--query-mode", default=d.query_mode, choices=QUERY_MODES)
    p.add_argument("--retries", type=int, default=d.retries)
    p.add_argument("--backoff", type=float, default=d.backoff)
    p.add_argument("--job-name", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trainer", description="Selective joint fine-tuning against a retrieval service"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train rounds of selective joint fine-tuning")
    _run_flags(run)
    run.add_argument("--source-mode", default="selective", choices=SOURCE_MODES)
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ablate = sub.add_parser(
        "ablate", help="none / all / random / selective --no-adaptive / selective, N seeds"
    )
    _run_flags(ablate)
    ablate.add_argument("--seeds", type=int, default=3)
    return parser


def config_of(args: argparse.Namespace) -> RunConfig:
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "seeds")}
    return RunConfig(**fields).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_of(args)
        if args.command == "run":
            from trainer.distributed import init_distributed
            from trainer.run import run

            d = init_distributed(cfg.device)
            try:
                run(cfg, d)
            finally:
                d.close()
        else:
            from trainer.ablate import ablate

            if args.seeds < 1:
                raise ConfigError("--seeds must be >= 1")
            ablate(cfg, args.seeds)
    except ServiceError as exc:
        print(
            f"error: the retrieval service failed: {exc.message if exc.status == 503 else exc}",
            file=sys.stderr,
        )
        return 1
    except SJFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
