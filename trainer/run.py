"""A training run: rounds of joint fine-tuning, each round the algorithm's five steps —
select sources, fetch them, train ``steps`` optimizer steps, evaluate, grow K — with one optimizer and one
LR schedule across rounds, a checkpoint at every round boundary and exact resumption (``--resume``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from services.client import RetrievalClient
from services.schemas import JobEvent
from trainer import sources as src
from trainer.adaptive import update_k
from trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainer.config import ConfigError, RunConfig
from trainer.data import ImageStore, load_target
from trainer.distributed import Dist, device_for
from trainer.fetch import NeighborLists, SourceCache, download, index_key
from trainer.jobs import Reporter
from trainer.leak import find_leaks, save_leaks
from trainer.model import JointModel
from trainer.optim import build_optimizer, end_probe, replace_source_head, set_train_mode
from trainer.plan import Plan, levels, target_order, uniforms
from trainer.report import format_line, plot_curves, table, write_metrics
from trainer.rundir import lock_run_dir
from trainer.session import register_job, target_queries
from trainer.train import Batch, RoundStats, StepRunner, accuracy, predict, train_round


class Trainer:
    """One run's state between rounds; ``run()`` is the algorithm."""

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
        self.state = src.SourceState(
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

    # -- setup -------------------------------------------------------------------------------------------

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
        self.model = JointModel(cfg.arch, len(self.target.classes), 1, cfg.weights)
        if cfg.train_layers == "head":
            self.model.backbone.requires_grad_(False)  # a linear probe: no backbone gradients at all
        self.model.to(self.device)
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
        self.state = src.SourceState.from_state(ckpt["sources"])
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
        pool_sizes = src.matched_pool_sizes(cfg.match_pool) if cfg.match_pool else None
        self.selector = src.Selector(
            self.state, self.client, self.queries, cfg.metric, cfg.seed, cfg.max_per_source, pool_sizes
        )

    # -- the algorithm -----------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        """Train rounds start .. cfg.rounds - 1; returns every round's metrics row."""
        try:
            for rnd in range(self.start, self.cfg.rounds):
                torch.manual_seed(self.cfg.seed * 1000 + rnd)  # new head rows, dropout
                plan = self.select(rnd)
                rows_of = self.fetch(plan)
                stats = self.train(rnd, plan, rows_of)
                probs_val, probs_train = self.evaluate()
                self.finish_round(rnd, plan, stats, probs_val, probs_train)
        except BaseException as exc:  # KeyboardInterrupt too: the shared service shows the job as failed
            if self.d.is_main:
                self.reporter.failed(exc)
            raise
        if self.d.is_main:
            print(table(self.rows), flush=True)
            plot_curves(self.out / "curves.png", self.rows)
            self.reporter.event(JobEvent(type="status", status="finished"))
        return self.rows

    def select(self, rnd: int) -> Plan:
        """This round's sources (rank 0 asks the service) and the plan pairing targets with them."""
        cfg, d = self.cfg, self.d
        hard = self.uses_service and cfg.adaptive
        order = target_order(
            levels(self.k, cfg.k0) if hard else torch.ones_like(self.k),
            self.steps * cfg.batch_size * d.world,
            cfg.seed,
            rnd,
        )
        if d.is_main:
            self.selector.select(rnd, self.k, stream_need=len(order) * cfg.source_ratio)
        self.state = self.selector.state = d.broadcast(self.state)
        source = src.pair_sources(self.state, order, self.k, cfg.source_ratio, cfg.seed, rnd)
        return Plan(order, source, self.steps, cfg.batch_size, d.world)

    def fetch(self, plan: Plan) -> dict[int, tuple[str, int]]:
        """Download the round's sources (rank 0) and map each to (cached path, source head row)."""
        d = self.d
        if d.is_main and self.uses_service:
            src.consume_stream(self.state, plan.source)
            needed = src.needed_ids(self.state, self.k, plan.source)
            c = self.cfg
            download(
                self.client, needed, self.cache, workers=c.fetch_workers, retries=c.retries, backoff=c.backoff
            )
        self.state = self.selector.state = d.broadcast(self.state)
        d.barrier()  # the other ranks read the images rank 0 just cached
        ids = plan.source_ids()
        for label in sorted({self.state.label(s) for s in ids}):
            self.source_class.setdefault(label, len(self.source_class))
        old = self.model.source_head
        self.model.resize_source_head(len(self.source_class))
        replace_source_head(self.optimizer, old, self.model.source_head)
        return {s: (str(self.cache.path(s)), self.source_class[self.state.label(s)]) for s in ids}

    def train(self, rnd: int, plan: Plan, rows_of: dict[int, tuple[str, int]]) -> RoundStats:
        cfg, d = self.cfg, self.d
        paths = self.target.train_paths
        labels = self.target.train_labels
        first = rnd * self.steps  # global step of this round's first step

        def make_batch(step: int) -> Batch:
            targets, sources = plan.batch(step, d.rank)
            u = uniforms(cfg.seed, rnd, step, plan, d.rank)  # (b, 1 + R, 5)
            x_t = self.store.train_batch([paths[i] for i in targets.tolist()], u[:, 0])
            ids = sources.flatten().tolist()
            x_s = (
                self.store.train_batch([rows_of[s][0] for s in ids], u[:, 1:].reshape(-1, 5))
                if ids
                else x_t[:0]
            )
            y_s = torch.tensor([rows_of[s][1] for s in ids], dtype=torch.long)
            return Batch(torch.cat([x_t, x_s]), len(targets), labels[targets], y_s)

        def before_step(step: int) -> None:
            if first + step == cfg.probe_steps > 0:
                end_probe(self.optimizer, self.model)
            set_train_mode(self.model, cfg, first + step)

        runner = StepRunner(
            d.wrap(self.model, self.device),
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.device,
            cfg.label_smoothing,
        )
        return train_round(runner, make_batch, self.steps, before_step, d, f"round {rnd}", cfg.progress)

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax predictions on val (for accuracy) and train (for the K rule), sharded over ranks."""
        args = (self.store, self.device, self.cfg.batch_size, self.d)
        return predict(self.model, self.target.val_paths, *args), predict(
            self.model, self.target.train_paths, *args
        )

    def finish_round(
        self, rnd: int, plan: Plan, stats: RoundStats, probs_val: torch.Tensor, probs_train: torch.Tensor
    ) -> None:
        """Grow K, record the round's metrics, checkpoint, report."""
        cfg = self.cfg
        mca, top1 = accuracy(probs_val, self.target.val_labels, len(self.target.classes))
        delta = cfg.resolved_delta(len(self.target.classes))
        upd = update_k(
            self.k, probs_train, self.target.train_labels, cfg.k0, cfg.sigma0, cfg.sigma1, delta, cfg.k_max
        )
        row = {
            "round": rnd,
            "mean_class_acc": mca,
            "top1": top1,
            "loss": stats.loss,
            "loss_target": stats.loss_target,
            "loss_source": stats.loss_source,
            "sources_in_use": self.state.in_use,
            "sources_trained": len(plan.source_ids()),
            "leaked_excluded": len(self.state.leaked),
            "misclassified": upd.misclassified,
            "uncertain": upd.uncertain,
            "k_mean": float(self.k.double().mean()),
            "k_max": int(self.k.max()),
            "steps": stats.steps,
            "global_step": (rnd + 1) * self.steps,
            "lr": self.optimizer.param_groups[1]["lr"],
            "steps_per_s": stats.steps_per_s,
            "images_per_s": stats.images_per_s,
        }
        self.rows.append(row)
        if cfg.adaptive and self.uses_service:
            self.k = upd.k
        if self.d.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            print(format_line(row), flush=True)
            save_checkpoint(self.out, self._checkpoint(rnd))
            self.reporter.event(JobEvent(type="round", round=rnd, metrics=row), keep=True)
        self.d.barrier()

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


def run(cfg: RunConfig, d: Dist = Dist()) -> list[dict]:
    """Train ``cfg.rounds`` rounds; returns the per-round metrics rows (round, mean_class_acc, top1,
    sources_in_use, steps, ...)."""
    trainer = Trainer(cfg, d)
    try:
        return trainer.run()
    finally:
        trainer.close()
