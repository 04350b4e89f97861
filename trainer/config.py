"""The trainer's whole configuration: one validated object, printed at start and saved in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

SOURCE_MODES = ("selective", "random", "all", "none")
QUERY_MODES = ("auto", "descriptor", "image")


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
    epochs_per_round: int = 1
    device: str = "cpu"
    seed: int = 0
    input_size: int = 224
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_epochs: int = 0  # 0: decay once, after 2/3 of each round's epochs (at least 1 epoch in)
    lr_gamma: float = 0.1
    cache_dir: str | None = None
    token: str | None = None
    metric: str = "js"
    workers: int = 0
    fetch_workers: int = 4
    query_mode: str = "auto"
    job_name: str | None = None
    retries: int = 5
    backoff: float = 0.5
    resume: bool = False

    def validate(self) -> RunConfig:
        """Raises ConfigError naming the first bad field."""
        checks = [
            (self.rounds >= 1, "--rounds must be >= 1"),
            (self.k0 >= 1, "--k0 must be >= 1"),
            (self.k_max >= self.k0, f"--k-max ({self.k_max}) must be >= --k0 ({self.k0})"),
            (self.sigma0 >= 0 and self.sigma1 >= 0, "--sigma0 and --sigma1 must be >= 0"),
            (self.delta is None or self.delta >= 0, "--delta must be >= 0"),
            (self.source_mode in SOURCE_MODES, f"--source-mode must be one of {', '.join(SOURCE_MODES)}"),
            (self.epochs_per_round >= 1, "--epochs-per-round must be >= 1"),
            (self.device == "cpu" or self.device.startswith("cuda"), "--device must be cpu or cuda[:N]"),
            (self.input_size >= 16, "--input-size must be >= 16"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0, "--lr must be > 0"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (
                self.lr_step_epochs >= 0 and 0 < self.lr_gamma <= 1,
                "--lr-step-epochs >= 0, 0 < --lr-gamma <= 1",
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
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if not Path(self.target).is_dir():
            raise ConfigError(f"--target {self.target} is not a directory")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"--weights {self.weights} is not a file")
        return self

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
    )

    def resume_mismatches(self, saved: dict) -> list[str]:
        """Names of the fields whose value differs from a checkpoint's config (those that change results)."""
        mine = self.to_dict()
        return sorted(k for k in mine if k not in self.RESUME_FREE and saved.get(k) != mine[k])
