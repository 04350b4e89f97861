"""The demo, end to end: data -> index -> (Redis) -> service -> selective and random training -> report.

The known answer: retrieval picks the target classes' matching source classes (12 of 64) about 97 % of the
time, random picks about 19 %; with the same optimizer steps and as many distinct source images (random
matches the selective run's pool, ``--match-pool``), selective joint fine-tuning ends above random, averaged
over the training seeds (``--seeds``, default 0,1,2: one seed is noise on 144 validation images).

Every child process is started by a ``Supervisor`` and stopped in ``finally`` (also on Ctrl-C or SIGTERM), so
the demo never leaves a service behind unless ``--keep-running`` asks for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval_service.testing import free_port
from services.fileio import atomic_write
from sjft.demo import report
from sjft.demo.data import FORMAT_VERSION, MANIFEST_NAME, DemoManifest, generate
from sjft.demo.procs import DemoError, Supervisor

REPO_ROOT = Path(__file__).resolve().parent.parent
ENSURE_REDIS = REPO_ROOT / "scripts" / "ensure_redis.sh"


@dataclass(frozen=True)
class Scale:
    """Sizes of one flavour: the full demo (minutes on 2 cores) or ``--quick`` (a test, about a minute)."""

    source_per_class: int
    target_train: int
    target_val: int
    image_size: int  # generated images and index --size
    input_size: int  # trainer --input-size
    k0: int
    k_max: int
    steps_per_round: int
    batch_size: int
    edge_sample: int  # images the build fits the bin edges on (a few per class is plenty)


# Demo defaults differ from the trainer's (224 px input, batch 32, steps from --source-passes) to fit ~5
# minutes on 2 cores: 64 px images, batch 16 and a fixed budget of 36 steps per round, in which each of the
# 72 x k0 = 288 sources selected in round 0 is drawn about twice (576 source draws per round).
FULL = Scale(source_per_class=40, target_train=12, target_val=24, image_size=64, input_size=64,
             k0=4, k_max=32, steps_per_round=36, batch_size=16, edge_sample=640)
QUICK = Scale(source_per_class=6, target_train=4, target_val=6, image_size=64, input_size=32,
              k0=2, k_max=8, steps_per_round=4, batch_size=16, edge_sample=128)


@dataclass
class DemoConfig:
    out: Path = Path("demo_out")
    rounds: int = 2
    quick: bool = False
    keep_running: bool = False
    seed: int = 0  # the data's seed
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds: selective and random run once per seed
    device: str = "cpu"
    redis_url: str = "redis://127.0.0.1:6379/0"  # "" = run the service without Redis
    compare_random: bool = True
    workers: int = 0  # index-build decoding processes: small PNGs decode faster than a process starts
    timeouts_s: dict[str, float] = field(default_factory=lambda: {"build": 600, "train": 900, "ready": 120})

    @property
    def scale(self) -> Scale:
        return QUICK if self.quick else FULL


def prepare_data(cfg: DemoConfig, sup: Supervisor) -> tuple[DemoManifest, bool]:
    """Generate the demo data unless an identical set is there; returns (manifest, regenerated)."""
    data_dir, s = cfg.out / "data", cfg.scale
    wanted = {"format": FORMAT_VERSION, "seed": cfg.seed, "size": s.image_size,
              "source_per_class": s.source_per_class, "target_train": s.target_train,
              "target_val": s.target_val}
    stamp = data_dir / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and (data_dir / MANIFEST_NAME).exists():
        sup.say(f"[data] reusing {data_dir} (same seed and sizes)")
        return DemoManifest.load(data_dir / MANIFEST_NAME), False
    shutil.rmtree(data_dir, ignore_errors=True)  # other sizes would leave stale images in the class folders
    start = time.monotonic()
    manifest = generate(data_dir, seed=cfg.seed, size=s.image_size, source_per_class=s.source_per_class,
                        target_train=s.target_train, target_val=s.target_val)
    atomic_write(stamp, json.dumps(wanted, sort_keys=True))
    n_source = sum(c["count"] for c in manifest.source_classes.values())
    sup.say(f"[data] {n_source} source images in {len(manifest.source_classes)} classes, "
            f"{len(manifest.mapping)} target classes ({s.target_train} train + {s.target_val} val each) "
            f"in {time.monotonic() - start:.1f} s -> {data_dir}")
    return manifest, True


def build_index(cfg: DemoConfig, sup: Supervisor, data_changed: bool) -> Path:
    index_dir = cfg.out / "index"
    if (index_dir / "index.json").exists() and not data_changed:
        sup.say(f"[build] reusing {index_dir} (built from the same data)")
        return index_dir
    sup.run("build", [sys.executable, "-m", "retrieval_service", "build",
                      "--source", str(cfg.out / "data" / "source"), "--out", str(index_dir),
                      "--size", str(cfg.scale.image_size), "--device", cfg.device,
                      "--workers", str(cfg.workers), "--edge-sample", str(cfg.scale.edge_sample), "--force"],
            timeout_s=cfg.timeouts_s["build"])
    return index_dir


def ensure_redis(cfg: DemoConfig, sup: Supervisor) -> tuple[str, bool]:
    """(redis_url to pass the service or "", whether this demo started the server)."""
    if not cfg.redis_url:
        sup.say("[redis] disabled: the service runs without a cache and keeps jobs in memory")
        return "", False
    try:
        proc = subprocess.run(["bash", str(ENSURE_REDIS), cfg.redis_url], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        sup.say(f"[redis] not available ({exc}); the service runs without it")
        return "", False
    for line in (proc.stdout + proc.stderr).splitlines():
        sup.say(f"[redis] {line}")
    if proc.returncode != 0:
        sup.say("[redis] not available; the service runs without it")
        return "", False
    return cfg.redis_url, "starting redis-server" in proc.stdout


def stop_redis(url: str, sup: Supervisor) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=2).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # SHUTDOWN closes the connection: that is success
    except redis.RedisError as exc:
        sup.say(f"[redis] could not stop the server this demo started: {exc}")
        return
    sup.say("[redis] stopped the server this demo started")


def _load_failure(response) -> str | None:
    """The service stays up when its index cannot load, and says why on /readyz: stop waiting then."""
    try:
        reason = response.json().get("reason") or ""
    except ValueError:
        return None
    return reason if reason.startswith(("cannot load index", "no index configured")) else None


def start_service(cfg: DemoConfig, sup: Supervisor, index_dir: Path, redis_url: str) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "retrieval_service", "serve", "--index", str(index_dir),
            "--host", "127.0.0.1", "--port", str(port), "--device", cfg.device]
    if redis_url:
        argv += ["--redis-url", redis_url]
    # Its own key prefix: the demo's cache and jobs never mix with another deployment sharing this Redis.
    proc = sup.start("service", argv, env={"SJFT_REDIS_PREFIX": "sjft-demo", "SJFT_API_TOKENS": ""})
    base_url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    sup.wait_ready("service", proc, f"{base_url}/readyz", cfg.timeouts_s["ready"], fatal=_load_failure)
    sup.say(f"[service] ready at {base_url} after {time.monotonic() - start:.1f} s")
    return base_url


def run_dir(cfg: DemoConfig, seed: int, mode: str) -> Path:
    return cfg.out / "runs" / f"seed{seed}" / mode


def train(cfg: DemoConfig, sup: Supervisor, base_url: str, mode: str, seed: int) -> Path:
    """One trainer run; random draws as many sources per round as selective's run of the same seed used."""
    out, s = run_dir(cfg, seed, mode), cfg.scale
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (no accidental --resume of old runs)
    argv = [
        sys.executable, "-m", "trainer", "run", "--target", str(cfg.out / "data" / "target"),
        "--service", base_url, "--out", str(out), "--rounds", str(cfg.rounds),
        "--k0", str(s.k0), "--k-max", str(s.k_max), "--source-mode", mode,
        "--steps-per-round", str(s.steps_per_round), "--input-size", str(s.input_size),
        "--batch-size", str(s.batch_size), "--device", cfg.device, "--seed", str(seed),
        "--cache-dir", str(cfg.out / "cache"), "--job-name", f"demo-{mode}-seed{seed}", "--no-progress",
    ]
    if mode == "random":
        argv += ["--match-pool", str(run_dir(cfg, seed, "selective"))]
    sup.run(f"train-{mode}-seed{seed}", argv, timeout_s=cfg.timeouts_s["train"])
    return out


def train_all(cfg: DemoConfig, sup: Supervisor, base_url: str, timings: dict, step) -> dict:
    """Per training seed: selective, then random matched to its pool; {seed: {mode: metrics rows}}."""
    modes = ["selective", "random"] if cfg.compare_random else ["selective"]
    runs: dict[int, dict[str, list[dict]]] = {}
    for n, seed in enumerate(cfg.seeds):
        step(4 + n, f"joint fine-tuning, seed {seed}: {' then '.join(modes)}, {cfg.rounds} round(s) each")
        for mode in modes:
            mark = time.monotonic()
            runs.setdefault(seed, {})[mode] = report.read_metrics(train(cfg, sup, base_url, mode, seed))
            timings[f"train_{mode}_seed{seed}_s"] = time.monotonic() - mark
    return runs


def run_demo(cfg: DemoConfig, sup: Supervisor) -> dict:
    """The whole demo; returns the summary also written to ``<out>/summary.json``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    steps = 4 + len(cfg.seeds)

    def step(i: int, title: str) -> None:
        sup.say(f"\n=== [{i}/{steps}] {title}  (t = {time.monotonic() - t0:.0f} s) ===")

    step(1, "demo data")
    manifest, changed = prepare_data(cfg, sup)
    timings["data_s"] = time.monotonic() - t0
    step(2, "index build")
    mark = time.monotonic()
    index_dir = build_index(cfg, sup, changed)
    timings["build_s"] = time.monotonic() - mark
    step(3, "Redis and the retrieval service")
    redis_url, redis_started = ensure_redis(cfg, sup)
    try:
        base_url = start_service(cfg, sup, index_dir, redis_url)
        runs = train_all(cfg, sup, base_url, timings, step)
        step(steps, "report")
        s = cfg.scale
        depths = sorted({s.k0, 2 * s.k0, min(s.k_max, 4 * s.k0)})
        fractions = report.matching_fractions(base_url, manifest, cfg.out / "data" / "target", depths)
        sup.say("\nSource images retrieved for each target class: share from its MATCHING source classes")
        sup.say(report.matching_table(fractions, manifest))
        sup.say("\nValidation mean class accuracy (the paper's measure) after the last round, per seed")
        outcome = report.outcome(runs)
        sup.say(report.outcome_table(outcome))
        figure = report.plot(cfg.out / "comparison.png", runs, fractions)
        selections = report.selection_reports(cfg.out / "runs")
        timings["total_s"] = time.monotonic() - t0
        summary_path = cfg.out / "summary.json"
        report.write_summary(summary_path, runs, fractions,
                             {"config": {**asdict(cfg), "out": str(cfg.out), "scale": asdict(s)},
                              "timings": timings, "service": base_url, "outcome": outcome,
                              "selection_reports": [str(p) for p in selections]})
        sup.say(f"\nwrote {figure}, {summary_path}, run dirs under {cfg.out / 'runs'} "
                f"(total {timings['total_s']:.0f} s)")
        for path in selections:
            sup.say(f"selected sources per target image: {path.resolve().as_uri()}")
        if cfg.keep_running:
            sup.say(f"\nservice still running at {base_url} (index {index_dir}); Ctrl-C stops it")
            sup.background[-1][1].wait()
        return json.loads(summary_path.read_text())
    finally:
        sup.stop_all()
        if redis_started and not cfg.keep_running:
            stop_redis(redis_url, sup)


def main(cfg: DemoConfig) -> int:
    with Supervisor(cfg.out / "logs") as sup:
        try:
            run_demo(cfg, sup)
        except DemoError as exc:
            sup.say(f"\ndemo failed: {exc}")
            return 1
        except KeyboardInterrupt:
            sup.say("\ndemo interrupted: stopping everything it started")
            return 130
    return 0
