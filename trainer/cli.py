"""``sjft-train`` / ``python -m trainer`` ``run|ablate|convert-weights``: the flags of DESIGN.md section 2
plus a few extras.

Exit codes: 0 done; 1 the service failed (the message says how to resume); 2 bad input (one line saying what
to fix).
"""

from __future__ import annotations

import argparse
import sys

from services.client import ClientError
from services.clihelp import HelpFormatter
from services.errors import SJFTError
from trainer.ablation.harness import ABLATE_ONLY, add_ablate_flags
from trainer.config import LR_SCHEDULES, QUERY_MODES, SOURCE_MODES, TRAIN_LAYERS, ConfigError, RunConfig
from trainer.training.convert import add_parser as add_convert_parser
from trainer.training.convert import main as convert_main


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # every subcommand's help shows the defaults, as the top level's
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message by default)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def _run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig("", "", "")
    p.add_argument("--target", required=True, help="ImageFolder with train/ and val/")
    p.add_argument("--service", required=True, help="retrieval service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, curves.png)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="rounds of select, fetch, train, grow K")
    p.add_argument("--k0", type=int, default=d.k0, help="neighbors per target image in round 0 (K0)")
    p.add_argument("--k-max", type=int, default=d.k_max, help="cap of K_i")
    p.add_argument("--sigma0", type=float, default=d.sigma0, help="K_i grows by sigma0 * K0 if misclassified")
    p.add_argument("--sigma1", type=float, default=d.sigma1,
                   help="K_i grows by sigma1 * K0 when correct but uncertain (entropy >= --delta)")
    p.add_argument("--delta", type=float, default=None, help="entropy threshold (default 0.5 * log C_target)")
    p.add_argument("--no-adaptive", dest="adaptive", action="store_false", help="keep K_i = K0 in all rounds")
    p.add_argument("--arch", default=d.arch,
                   help="a torchvision classification model name, else a timm one (timm/NAME forces timm)")
    p.add_argument("--weights", default=None,
                   help="local state dict file (classifier keys ignored; its recorded normalisation is used: "
                        "see convert-weights); default: random init")
    _budget_flags(p, d)
    _optim_flags(p, d)
    _source_flags(p, d)
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, sampling and augmentation")
    p.add_argument("--input-size", type=int, default=d.input_size, help="training and evaluation crop, px")
    p.add_argument("--crop-scale", type=float, default=d.crop_scale,
                   help="training RandomResizedCrop area scale range (S, 1); evaluation: centre crop")
    p.add_argument("--image-cache", type=int, default=d.image_cache,
                   help="decoded images kept in memory (LRU; about 0.2 MB each at 224 px)")
    p.add_argument("--cache-dir", default=None, help="source image cache (default ~/.cache/sjft)")
    p.add_argument("--token", default=None, help="bearer token of the service (default: none sent)")
    p.add_argument("--metric", default=d.metric, choices=("js", "skl"), help="divergence of the ranking")
    p.add_argument("--workers", type=int, default=d.workers, help="image decoding threads")
    p.add_argument("--fetch-workers", type=int, default=d.fetch_workers, help="parallel source streams")
    p.add_argument("--query-mode", default=d.query_mode, choices=QUERY_MODES,
                   help="auto: local descriptors with a gabor index, else image bytes")
    p.add_argument("--retries", type=int, default=d.retries, help="retries of a failed service call")
    p.add_argument("--backoff", type=float, default=d.backoff, help="first retry delay, s (doubles)")
    p.add_argument("--job-name", default=None, help="job name on the service (default: sjft:<--out name>)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-round progress bar")
    p.add_argument("--no-selection-report", dest="selection_report", action="store_false",
                   help="do not write selection.html/.png/.json (the sources each round used) into --out")


def _budget_flags(p: argparse.ArgumentParser, d: RunConfig) -> None:
    p.add_argument(
        "--steps-per-round", type=int, default=None,
        help="optimizer steps per round, the same in every --source-mode. Default: "
        "ceil(source_passes * n_target * k0 / (batch_size * world * source_ratio)), so every selected source "
        "is seen about source_passes times in round 0",
    )
    p.add_argument("--epochs-per-round", type=int, default=None,
                   help="alternative round length: ceil(E * n_target / (batch_size * world)) steps "
                        "(default: unset, see --steps-per-round)")
    p.add_argument("--source-passes", type=float, default=d.source_passes,
                   help="times round 0 sees each selected source (sizes an unset --steps-per-round)")
    p.add_argument("--source-ratio", type=int, default=d.source_ratio,
                   help="source images per target image in a batch (the paper: 1)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="target images per step and rank (each with --source-ratio sources)")


def _optim_flags(p: argparse.ArgumentParser, d: RunConfig) -> None:
    p.add_argument("--lr", type=float, default=d.lr, help="base learning rate (SGD)")
    p.add_argument("--head-lr", type=float, default=None, help="LR of both heads (default --lr)")
    p.add_argument("--backbone-lr-mult", type=float, default=d.backbone_lr_mult, help="backbone LR = lr * M")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="over all rounds' steps: warm-up + cosine, or warm-up + step decay")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default 3%% of all steps)")
    p.add_argument("--lr-milestones", default=d.lr_milestones,
                   help="step schedule: fractions of all steps where the LR is multiplied by --lr-gamma")
    p.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="LR factor at each of --lr-milestones")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="of both cross-entropies")
    p.add_argument("--freeze-bn", action="store_true", help="BatchNorm in eval mode (frozen statistics)")
    p.add_argument("--probe-steps", type=int, default=d.probe_steps,
                   help="LP-FT: train only the heads for the first N steps, then everything")
    p.add_argument("--train-layers", default=d.train_layers, choices=TRAIN_LAYERS,
                   help="all: fine-tune everything; head: linear probe (backbone frozen)")
    _freeze_flags(p, d)


def _freeze_flags(p: argparse.ArgumentParser, d: RunConfig) -> None:
    p.add_argument(
        "--freeze-until", default=None, metavar="MODULE",
        help="freeze the backbone up to and including MODULE (eval mode, no gradients); the rest and the "
        "heads train (default: nothing frozen). timm EfficientNet/MobileNetV2: conv_stem, bn1, blocks.0 .. "
        "blocks.N, conv_head, bn2; "
        "torchvision ResNet: conv1, bn1, relu, maxpool, layer1 .. layer4",
    )
    p.add_argument(
        "--reinit-tail", action="store_true",
        help="with --weights: the layers after --freeze-until (all layers without it) start from a fresh "
        "init instead of the pretrained weights; the frozen trunk keeps them. Emulates a backbone whose "
        "top layers never learnt the target's classes",
    )
    p.add_argument(
        "--feature-cache", dest="feature_cache", action="store_true", default=None,
        help="with --freeze-until (on by default there): cache the trunk's output per (image, view) as "
        "float16 "
        "under <cache-dir>/features/<model key>/, shared by every run and seed of the same model",
    )
    p.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="run the frozen trunk on every step instead (same views; for checking)")
    p.add_argument("--views", type=int, default=d.views,
                   help="with --freeze-until: fixed views per image, 0 = centre crop, 1..V-1 = random crops "
                        "+ flips seeded by the image alone; each training sample takes one of 1..V-1")
    p.add_argument("--feature-memory-mb", type=int, default=d.feature_memory_mb,
                   help="in-memory LRU of cached features, in MiB")


def _source_flags(p: argparse.ArgumentParser, d: RunConfig) -> None:
    p.add_argument("--match-pool", default=None, metavar="RUN_DIR",
                   help="random mode: draw as many sources per round as this selective run used (default: "
                        "count them by "
                        "asking for the neighbor windows)")
    p.add_argument("--no-leak-guard", dest="leak_guard", action="store_false",
                   help="do not exclude sources that duplicate target train/val images")
    p.add_argument("--leak-threshold", type=float, default=d.leak_threshold,
                   help="a source within this divergence of a target image is a leak")
    p.add_argument("--leak-k", type=int, default=d.leak_k, help="neighbors per target image checked")
    p.add_argument("--max-per-source", type=_opt_int, default=d.max_per_source,
                   help="hub control: a source goes to at most N queries of one request (default: no cap)")


def build_parser(prog: str = "python -m trainer") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Train a classifier with source images a retrieval service picks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    summary = "train rounds of selective joint fine-tuning"
    run = sub.add_parser("run", help=summary, description=f"{summary.capitalize()}.")
    _run_flags(run)
    run.add_argument(
        "--source-mode", default="selective", choices=SOURCE_MODES,
        help="selective: K_i nearest sources; random: as many random sources (--match-pool); all: the whole "
        "corpus streamed; none: target only (CE_target with weight 1, no source loss). Every mode runs the "
        "same optimizer steps with the same target images per step",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    summary = "the paper's ablation table: every source mode, with and without adaptive K"
    ablate = sub.add_parser("ablate", help=summary, description=f"{summary[0].upper()}{summary[1:]}.")
    _run_flags(ablate)
    add_ablate_flags(ablate)
    add_convert_parser(sub)
    return parser


def config_of(args: argparse.Namespace) -> RunConfig:
    fields = {k: v for k, v in vars(args).items() if k not in ("command", *ABLATE_ONLY)}
    cfg = RunConfig(**fields).validate()
    if cfg.freeze_until is not None:  # refused before anything starts; the net is built on the meta device
        from trainer.training.model import check_freeze_point

        check_freeze_point(cfg.arch, cfg.freeze_until)
    return cfg


def main(argv: list[str] | None = None, prog: str = "python -m trainer") -> int:
    """The command line; ``prog`` is the name errors and the recorded ablation command use."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "convert-weights":
            return convert_main(args)
        cfg = config_of(args)
        if args.command == "run":
            from trainer.run import run
            from trainer.training.distributed import init_distributed

            d = init_distributed(cfg.device)
            try:
                run(cfg, d)
            finally:
                d.close()
        else:
            from trainer.ablation.harness import main as ablate_main

            return ablate_main(args, cfg, argv, prog)
    except ClientError as exc:
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


def sjft_train() -> int:
    """The installed command ``sjft-train`` (pyproject.toml [project.scripts]): ``main`` under that name."""
    return main(prog="sjft-train")
