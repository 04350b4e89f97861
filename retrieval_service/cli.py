"""``sjft-retrieval`` / ``python -m retrieval_service`` ``build|serve|verify``: thin argument parsing over
``build.build_index``, ``server.serve`` and ``index.drift.corpus_drift``.

Every error the project raises on purpose (``SJFTError``) ends the command with ONE line ``error: ...`` on
stderr and exit status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from services.clihelp import HelpFormatter
from services.errors import SJFTError

EXIT_ERROR = 2
EXIT_DRIFT = 1  # verify: the corpus no longer matches the index


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # every subcommand's help shows the defaults, as the top level's
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.")


def build_parser(prog: str = "python -m retrieval_service") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Index an image corpus by filter-bank descriptors and serve it.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{build,serve,verify}", parser_class=_Parser
    )

    build = _command(commands, "build", "build (or resume) an index from a source corpus")
    build.add_argument(
        "--source",
        required=True,
        help="ImageFolder tree; a directory or glob of .tar shards, or one .tar; Parquet files (a file, "
        "directory or glob) or a datasets save_to_disk directory; a .csv or .jsonl list of path,label",
    )
    build.add_argument(
        "--out", required=True, help="index directory to create (work happens in <out>.partial)"
    )
    build.add_argument("--bank", choices=("gabor", "conv"), default="gabor", help="descriptor filter bank")
    build.add_argument("--conv-weights", help="torchvision state dict (default: none; --bank conv needs one)")
    build.add_argument("--conv-arch", default="alexnet", help="torchvision architecture of --conv-weights")
    build.add_argument("--conv-layers", type=int, choices=(1, 2), default=1, help="conv layers histogrammed")
    build.add_argument("--bins", type=_positive, default=16, help="histogram bins per filter")
    build.add_argument(
        "--size", type=_positive, default=224, help="images are resized and centre-cropped to PX"
    )
    build.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    build.add_argument(
        "--workers", type=_non_negative, default=2, help="CPU: decode+extract processes; GPU: decoders"
    )
    build.add_argument("--batch-size", type=_positive, default=64, help="images per extraction batch")
    build.add_argument("--shard-size", type=_positive, default=4096, help="images per resumable shard")
    build.add_argument(
        "--edge-sample", type=_positive, default=2000, help="images sampled to fit the bin edges"
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the edge-fitting sample")
    build.add_argument(
        "--kind", choices=("auto", "flat", "ivf"), default="auto", help="FAISS candidate index"
    )
    build.add_argument(
        "--nlist", type=_positive, help="IVF cells (default: chosen from the corpus size, search/tuning.py)"
    )
    build.add_argument(
        "--nprobe", type=_positive, help="cells probed per query (default: from nlist; serve overrides)"
    )
    build.add_argument("--force", action="store_true", help="replace an existing index at --out")
    build.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="extract shards as Ray tasks (default: no Ray): alone, a Ray instance on this machine; 'auto'"
        " or host:port, a cluster (corpus and --out on storage every node mounts at the same path)",
    )
    build.add_argument(
        "--ray-gpus-per-task", type=float, default=0.0, help="GPUs per Ray task (>0: CUDA)"
    )
    build.add_argument(
        "--image-column", default="image", help="Parquet/Arrow: image bytes or {bytes} struct"
    )
    build.add_argument(
        "--label-column", default="label", help="Parquet/Arrow sources: an integer label or a class name"
    )
    build.add_argument(
        "--follow-symlinks", action="store_true", help="ImageFolder: allow symlinks that leave --source"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    verify = _command(commands, "verify", "report drift between an index and its corpus (exit 1 on drift)")
    verify.add_argument("--index", required=True, help="index directory")
    verify.add_argument("--source", help="corpus location (default: where the index was built from)")
    verify.add_argument("--hash", action="store_true", help="compare every file's sha256, not size/mtime")
    verify.add_argument("--json", action="store_true", help="print the full report as JSON after the summary")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")

    # serve's defaults are the settings' (environment variables, then retrieval_service/api/settings.py).
    serve = _command(commands, "serve", "serve an index over HTTP")
    serve.add_argument("--index", help="index directory (default: $SJFT_INDEX_DIR)")
    serve.add_argument("--host", help="bind address (default: $SJFT_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (default: $SJFT_PORT, else 8000)")
    serve.add_argument("--redis-url", help="Redis URL, '' for none (default: $REDIS_URL, else none)")
    serve.add_argument("--device", help="cpu or cuda (default: $SJFT_DEVICE, else cpu)")
    serve.add_argument(
        "--workers", type=_positive,
        help="worker processes sharing the memory-mapped index (default: $SJFT_WORKERS, else 1)",
    )
    serve.add_argument(
        "--nprobe", type=_positive, help="IVF cells probed per query (default: the index's, engine.json)"
    )
    return parser


def _build(args: argparse.Namespace) -> int:
    from retrieval_service.build.builder import build_index

    report = build_index(
        args.source,
        args.out,
        bank=args.bank,
        conv_weights=args.conv_weights,
        conv_arch=args.conv_arch,
        conv_layers=args.conv_layers,
        bins=args.bins,
        size=args.size,
        device=args.device,
        workers=args.workers,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        edge_sample=args.edge_sample,
        seed=args.seed,
        kind=args.kind,
        nlist=args.nlist,
        nprobe=args.nprobe,
        force=args.force,
        progress=not args.no_progress,
        ray=args.ray,
        ray_gpus_per_task=args.ray_gpus_per_task,
        image_column=args.image_column,
        label_column=args.label_column,
        follow_symlinks=args.follow_symlinks,
    )
    print(
        f"{report.out}: {report.size} images indexed, {len(report.skipped)} skipped, "
        f"spec {report.spec_hash[:12]}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from retrieval_service.index.drift import corpus_drift

    report = corpus_drift(args.index, args.source, hashed=args.hash, progress=not args.no_progress)
    print(report.summary())
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    return 0 if report.clean else EXIT_DRIFT


def _serve(args: argparse.Namespace) -> int:
    from retrieval_service.api.server import serve

    overrides = {
        "index_dir": args.index,
        "host": args.host,
        "port": args.port,
        "redis_url": args.redis_url,
        "device": args.device,
        "workers": args.workers,
        "nprobe": args.nprobe,
    }
    serve(**{key: value for key, value in overrides.items() if value is not None})
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m retrieval_service") -> int:
    args = build_parser(prog).parse_args(argv)  # usage errors: argparse exits 2
    if args.command == "build":
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    try:
        return {"build": _build, "serve": _serve, "verify": _verify}[args.command](args)
    except SJFTError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted (a build resumes from its finished shards when run again)", file=sys.stderr)
        return 130


def sjft_retrieval() -> int:
    """The installed command ``sjft-retrieval`` (pyproject.toml [project.scripts]): ``main`` by that name."""
    return main(prog="sjft-retrieval")
