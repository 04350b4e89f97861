"""Everything a run does before round 0: lock the run dir, load the target, contact the service (index,
fixed queries, leak guard, job), build the model, optimizer and schedule, or restore them all from the
checkpoint; and what a round boundary saves."""

from __future__ import annotations

from pathlib import Path

import torch

from services.client import RetrievalClient
from services.schemas import JobEvent
from trainer.config import ConfigError, RunConfig
from trainer.remote.fetch import SourceCache
from trainer.remote.jobs import Reporter, register_job
from trainer.remote.leak import find_leaks, save_leaks
from trainer.remote.queries import index_key, target_queries
from trainer.remote.selector import Selector, matched_pool_sizes
from trainer.reports.metrics import write_metrics
from trainer.rounds.neighbors import NeighborLists
from trainer.rounds.selection import SourceState
from trainer.rundir import lock_run_dir
from trainer.training.checkpoint import load_checkpoint, rng_state, set_rng_state
from trainer.training.data import ImageStore, load_target
from trainer.training.distributed import Dist, device_for
from trainer.training.features import open_features
from trainer.training.model import JointModel
from trainer.training.optim import build_optimizer, replace_source_head


class RunSetup:
    """A run's state between rounds, set up fresh or restored from ``<out>/checkpoint.pt``."""

    def __init__(self, cfg: RunConfig, d: Dist):
        self.cfg, self.d, self.out = cfg, d, Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.client: RetrievalClient | None = None
        self.lock = lock_run_dir(self.out) if d.is_main else None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        cfg, d = self.cfg, self.d
        self.device = device_for(cfg.device, d)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        ckpt = self._checkpoint_to_resume()
        if d.is_main:
            print("config:", cfg.describe(), flush=True)
        self.store = ImageStore(cfg.input_size, max(2, cfg.workers), cfg.image_cache, cfg.crop_scale)
        self.target = load_target(cfg.target, self.store)
        self.n_train = len(self.target.train)
        self.steps = cfg.round_steps(self.n_train, d.world)
        self.uses_service = cfg.source_mode != "none"
        self._open_service()
        self._build_model()
        self.k = torch.full((self.n_train,), cfg.k0, dtype=torch.long)
        self.state = SourceState(
            cfg.source_mode, self.index_size, NeighborLists([[] for _ in range(self.n_train)])
        )
        self.source_class: dict[int, int] = {}
        self.rows: list[dict] = []
        self.job_id, self.start = None, 0
        if ckpt is not None:
            self._restore(ckpt)
        elif self.uses_service and cfg.leak_guard:
            self._guard_leaks()
        self._start_reporting()

    def _checkpoint_to_resume(self) -> dict | None:
        cfg = self.cfg
        if not cfg.resume and (self.out / "checkpoint.pt").exists():
            raise ConfigError(
                f"{self.out} already holds a run: add --resume to continue it, or choose another --out"
            )
        ckpt = load_checkpoint(self.out) if cfg.resume else None
        if ckpt is not None and (diff := cfg.resume_mismatches(ckpt["config"])):
            raise ConfigError(f"--resume with settings that differ from the checkpoint: {', '.join(diff)}")
        return ckpt

    def _open_service(self) -> None:
        cfg, d = self.cfg, self.d
        self.client = (
            RetrievalClient(cfg.service, cfg.token, retries=cfg.retries, backoff=cfg.backoff)
            if d.is_main
            else None
        )
        info = self.client.index_info() if self.client and self.uses_service else None
        key, self.index_size = d.broadcast((index_key(info), info.size) if info else None) or (None, 0)
        self.cache = SourceCache(cfg.resolved_cache_dir(), key) if key else None
        paths = self.target.train_paths + self.target.val_paths
        self.queries = target_queries(cfg, self.client, info, paths, self.out) if info else None

    def _build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = JointModel(
            cfg.arch, len(self.target.classes), 1, cfg.weights, cfg.freeze_until, cfg.reinit_tail
        )
        if cfg.train_layers == "head":
            self.model.backbone.requires_grad_(False)  # a linear probe: no backbone gradients at all
        self.model.to(self.device)
        self.features = (
            open_features(cfg, self.model, self.store, self.device) if cfg.freeze_until is not None else None
        )
        self.total_steps = self.steps * cfg.rounds
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")

    def _restore(self, ckpt: dict) -> None:
        old = self.model.source_head
        self.model.resize_source_head(ckpt["source_head_rows"])
        replace_source_head(self.optimizer, old, self.model.source_head)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.k, self.source_class = ckpt["k"], ckpt["source_class"]
        self.state = SourceState.from_state(ckpt["sources"])
        self.rows, self.job_id, self.start = ckpt["metrics"], ckpt.get("job_id"), ckpt["round"] + 1
        set_rng_state(ckpt["rng"])
        if self.d.is_main:
            print(f"resuming after round {ckpt['round']} from {self.out / 'checkpoint.pt'}", flush=True)

    def _guard_leaks(self) -> None:
        cfg = self.cfg
        report = None
        if self.d.is_main:
            report = find_leaks(self.client, self.queries, cfg.leak_k, cfg.leak_threshold, cfg.metric)
            save_leaks(self.out, report)
            print(
                f"leak guard: {len(report.ids)} source images duplicate target images and are excluded "
                f"({report.same_bytes} same bytes, {report.near_copy} within {cfg.leak_threshold})",
                flush=True,
            )
        self.state.leaked = self.d.broadcast(report.ids if report else None)

    def _start_reporting(self) -> None:
        if self.d.is_main:
            write_metrics(self.out / "metrics.jsonl", self.rows)
            if self.job_id is None:
                self.job_id = register_job(self.cfg, self.client)
        self.reporter = Reporter(self.client, self.job_id, self.out if self.d.is_main else None)
        self.reporter.event(JobEvent(type="status", status="running"))
        if self.start == 0 and self.state.leaked:
            self.reporter.event(
                JobEvent(type="log", message=f"leak guard: {len(self.state.leaked)} source images excluded")
            )
        cfg = self.cfg
        pool_sizes = matched_pool_sizes(cfg.match_pool) if cfg.match_pool else None
        self.selector = Selector(
            self.state, self.client, self.queries, cfg.metric, cfg.seed, cfg.max_per_source, pool_sizes
        )

    def _checkpoint(self, rnd: int) -> dict:
        return {
            "round": rnd,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "k": self.k,
            "sources": self.state.to_state(),
            "source_class": self.source_class,
            "source_head_rows": self.model.source_head.out_features,
            "metrics": self.rows,
            "job_id": self.job_id,
            "query_mode": self.queries.mode if self.queries else None,
        }

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.lock is not None:
            self.lock.release()
