"""The trainer's whole configuration: one validated object, printed at start and saved in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

SOURCE_MODES = ("selective", "random", "all", "none")
QUERY_MODES = ("auto", "descriptor", "image")
LR_SCHEDULES = ("cosine", "step")
TRAIN_LAYERS = ("all", "head")


class ConfigError(ValueError):
    """A configuration a run cannot start with; the CLI prints it as one line and exits 2."""


@dataclass
class RunConfig:
    target: str
    service: str
    out: str
    rounds: int = 3
    k0: int = 5
    k_max: int = 50
    sigma0: float = 4.0
    sigma1: float = 2.0
    delta: float | None = None  # None: 0.5 * log(C_target), resolved once the target is loaded
    source_mode: str = "selective"
    adaptive: bool = True
    arch: str = "resnet18"
    weights: str | None = None
    # Round length in optimizer steps, the same for every source mode: --steps-per-round, else
    # ceil(epochs_per_round * n_target / global_batch) when --epochs-per-round is given, else
    # ceil(source_passes * n_target * k0 / (global_batch * source_ratio)) (see round_steps).
    steps_per_round: int | None = None
    epochs_per_round: int | None = None
    source_passes: float = 3.0
    source_ratio: int = 1  # source images per target image in a batch (the paper: 1)
    device: str = "cpu"
    seed: int = 0
    input_size: int = 224
    crop_scale: float = 0.35  # RandomResizedCrop area scale range (crop_scale, 1)
    batch_size: int = 32  # target images per step and rank; each brings source_ratio source images
    lr: float = 0.01
    head_lr: float | None = None  # None: lr
    backbone_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 3% of all steps
    lr_milestones: str = "0.67"  # step schedule: decay by lr_gamma at these fractions of all steps
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    freeze_bn: bool = False
    probe_steps: int = 0  # LP-FT: the first N steps train the heads only
    train_layers: str = "all"  # head: linear probe, backbone frozen
    freeze_until: str | None = None  # frozen trunk up to and including this module (training/model.py)
    reinit_tail: bool = False  # the layers after freeze_until start from a fresh init (training/model.py)
    feature_cache: bool | None = None  # cache trunk outputs (training/features.py); None: on if freeze_until
    views: int = 4  # per image with a frozen trunk: view 0 = centre crop, 1..V-1 = fixed random crops
    feature_memory_mb: int = 1024  # in-memory LRU in front of the on-disk feature cache
    image_cache: int = 10_000  # decoded images kept in memory (LRU)
    match_pool: str | None = None  # random mode: a selective run dir whose per-round pool sizes to match
    leak_guard: bool = True
    selection_report: bool = True  # selection.html/.png/.json after every round (reports/round_report.py)
    leak_threshold: float = 1e-3
    leak_k: int = 3
    max_per_source: int | None = None
    cache_dir: str | None = None
    token: str | None = None
    metric: str = "js"
    workers: int = 0
    fetch_workers: int = 4
    query_mode: str = "auto"
    job_name: str | None = None
    retries: int = 5
    backoff: float = 0.5
    progress: bool = True
    resume: bool = False

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.rounds >= 1, "--rounds must be >= 1"),
            (self.k0 >= 1, "--k0 must be >= 1"),
            (self.k_max >= self.k0, f"--k-max ({self.k_max}) must be >= --k0 ({self.k0})"),
            (self.sigma0 >= 0 and self.sigma1 >= 0, "--sigma0 and --sigma1 must be >= 0"),
            (self.delta is None or self.delta >= 0, "--delta must be >= 0"),
            (self.source_mode in SOURCE_MODES, f"--source-mode must be one of {', '.join(SOURCE_MODES)}"),
            (self.steps_per_round is None or self.steps_per_round >= 1, "--steps-per-round must be >= 1"),
            (self.epochs_per_round is None or self.epochs_per_round >= 1, "--epochs-per-round must be >= 1"),
            (self.source_passes > 0, "--source-passes must be > 0"),
            (self.source_ratio >= 1, "--source-ratio must be >= 1"),
            (self.device == "cpu" or self.device.startswith("cuda"), "--device must be cpu or cuda[:N]"),
            (self.input_size >= 16, "--input-size must be >= 16"),
            (0 < self.crop_scale <= 1, "--crop-scale must be in (0, 1]"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0 and (self.head_lr is None or self.head_lr > 0), "--lr and --head-lr must be > 0"),
            (self.backbone_lr_mult >= 0, "--backbone-lr-mult must be >= 0"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (0 < self.lr_gamma <= 1, "--lr-gamma must be in (0, 1]"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.probe_steps >= 0, "--probe-steps must be >= 0"),
            (self.train_layers in TRAIN_LAYERS, f"--train-layers must be one of {', '.join(TRAIN_LAYERS)}"),
            (self.image_cache >= 1, "--image-cache must be >= 1"),
            (self.views >= 1, "--views must be >= 1"),
            (self.feature_memory_mb >= 0, "--feature-memory-mb must be >= 0"),
            (
                not (self.feature_cache and self.freeze_until is None),
                "--feature-cache needs --freeze-until (only a frozen trunk's outputs can be cached)",
            ),
            (
                not (self.reinit_tail and self.weights is None),
                "--reinit-tail needs --weights (without them every layer starts from a fresh init anyway)",
            ),
            (self.leak_threshold >= 0 and self.leak_k >= 1, "--leak-threshold >= 0 and --leak-k >= 1"),
            (self.max_per_source is None or self.max_per_source >= 1, "--max-per-source must be >= 1"),
            (
                self.match_pool is None or self.source_mode == "random",
                "--match-pool needs --source-mode random",
            ),
            (self.metric in ("js", "skl"), "--metric must be js or skl"),
            (self.workers >= 0 and self.fetch_workers >= 1, "--workers >= 0 and --fetch-workers >= 1"),
            (self.query_mode in QUERY_MODES, f"--query-mode must be one of {', '.join(QUERY_MODES)}"),
            (self.retries >= 0 and self.backoff >= 0, "--retries and --backoff must be >= 0"),
            (
                self.service.startswith(("http://", "https://")),
                f"--service must be an http(s) URL, got {self.service}",
            ),
        ]

    def validate(self) -> RunConfig:
        """Raises ConfigError naming the first bad field. ``--freeze-until`` is checked against the
        architecture by ``trainer.training.model.check_freeze_point`` (the CLI calls it before a run starts,
        building the model calls it again): the model imports this module, never the other way round."""
        for ok, message in self._checks():
            if not ok:
                raise ConfigError(message)
        self.milestones()  # parses
        if not Path(self.target).is_dir():
            raise ConfigError(f"--target {self.target} is not a directory")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"--weights {self.weights} is not a file")
        if self.match_pool is not None and not (Path(self.match_pool) / "metrics.jsonl").is_file():
            raise ConfigError(f"--match-pool {self.match_pool} holds no metrics.jsonl of a selective run")
        return self

    @property
    def caches_features(self) -> bool:
        """Whether trunk outputs come from the feature cache (the default with --freeze-until)."""
        return self.freeze_until is not None and self.feature_cache is not False

    def milestones(self) -> list[float]:
        """--lr-milestones as sorted fractions in (0, 1)."""
        try:
            values = sorted(float(v) for v in self.lr_milestones.split(",") if v.strip())
        except ValueError:
            values = [-1.0]
        if any(not 0 < v < 1 for v in values):
            raise ConfigError(
                f"--lr-milestones must be fractions in (0, 1) like 0.5,0.75, got {self.lr_milestones}"
            )
        return values

    def round_steps(self, n_target: int, world: int = 1) -> int:
        """Optimizer steps per round, independent of the source mode (docstring of trainer/rounds/plan.py)."""
        if self.steps_per_round is not None:
            return self.steps_per_round
        global_batch = self.batch_size * world
        if self.epochs_per_round is not None:
            return max(1, math.ceil(self.epochs_per_round * n_target / global_batch))
        return max(1, math.ceil(self.source_passes * n_target * self.k0 / (global_batch * self.source_ratio)))

    def resolved_delta(self, n_classes: int) -> float:
        return self.delta if self.delta is not None else 0.5 * math.log(n_classes)

    def resolved_cache_dir(self) -> Path:
        # Shared by every run and job of this user by default: a source image is downloaded once per machine.
        return Path(self.cache_dir).expanduser() if self.cache_dir else Path.home() / ".cache" / "sjft"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("token")  # a secret: never printed or saved
        return data

    def describe(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # Fields that may differ between a run and its resumption without changing its results.
    RESUME_FREE = (
        "resume",
        "workers",
        "fetch_workers",
        "cache_dir",
        "service",
        "retries",
        "backoff",
        "device",
        "image_cache",
        "progress",
        "feature_memory_mb",
        "selection_report",
    )

    def resume_mismatches(self, saved: dict) -> list[str]:
        """Names of the fields whose value differs from a checkpoint's config (those that change results)."""
        mine = self.to_dict()
        # A field newer than the checkpoint had its default value then.
        default = RunConfig(self.target, self.service, self.out).to_dict()
        return sorted(k for k in mine if k not in self.RESUME_FREE and saved.get(k, default[k]) != mine[k])
