"""A training run: rounds of joint fine-tuning, each round the algorithm's steps — select sources, fetch
them, train ``steps`` optimizer steps, evaluate, grow K — with one optimizer and one LR schedule across
rounds, a checkpoint at every round boundary and exact resumption (``--resume``). Set-up and checkpoint
contents: trainer/setup.py."""

from __future__ import annotations

import json

import torch

from services.schemas import JobEvent
from trainer.config import RunConfig
from trainer.remote.fetch import download
from trainer.remote.jobs import round_event
from trainer.reports.metrics import format_line, plot_curves, table
from trainer.reports.round_report import write_round_report
from trainer.reports.selection import SelectionReport
from trainer.rounds.adaptive import update_k
from trainer.rounds.plan import Plan, levels, target_order, uniforms
from trainer.rounds.selection import consume_stream, needed_ids, pair_sources
from trainer.setup import RunSetup
from trainer.training.checkpoint import save_checkpoint
from trainer.training.distributed import Dist
from trainer.training.features import view_indices
from trainer.training.optim import end_probe, replace_source_head, set_train_mode
from trainer.training.steps import Batch, RoundStats, StepRunner, accuracy, predict, train_round


class Trainer(RunSetup):
    """``run()`` is the algorithm; each round step is one short method."""

    report: SelectionReport | None = None  # the latest selection report (rank 0)
    index_classes: list[str] | None = None  # the index's class names, asked once for the report

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
            print(f"finished: {self.out}; selection report: {self._report_line()}", flush=True)
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
            if cfg.source_mode == "selective":
                self.state.lists.record_round(rnd, self.k.tolist())  # the report redraws every round
            self.selector.select(rnd, self.k, stream_need=len(order) * cfg.source_ratio)
        self.state = self.selector.state = d.broadcast(self.state)
        source = pair_sources(self.state, order, self.k, cfg.source_ratio, cfg.seed, rnd)
        return Plan(order, source, self.steps, cfg.batch_size, d.world)

    def fetch(self, plan: Plan) -> dict[int, tuple[str, int]]:
        """Download the round's sources (rank 0) and map each to (cached path, source head row)."""
        d = self.d
        if d.is_main and self.uses_service:
            consume_stream(self.state, plan.source)
            needed = needed_ids(self.state, self.k, plan.source)
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
            if self.features is not None:
                return self.frozen_batch(targets, sources, u, rows_of)
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
            self.model.normalization,
        )
        return train_round(runner, make_batch, self.steps, before_step, d, f"round {rnd}", cfg.progress)

    def frozen_batch(
        self,
        targets: torch.Tensor,
        sources: torch.Tensor,
        u: torch.Tensor,
        rows_of: dict[int, tuple[str, int]],
    ) -> Batch:
        """A batch of fixed views (--freeze-until): the run's uniforms pick each sample's view index, the
        feature cache gives the trunk's outputs (or the view images, with --no-feature-cache)."""
        ids = sources.flatten().tolist()
        paths = [self.target.train_paths[i] for i in targets.tolist()] + [rows_of[s][0] for s in ids]
        views = view_indices(u.reshape(-1, u.shape[-1]), self.cfg.views).view(u.shape[:2])  # (b, 1 + R)
        x, from_features = self.features.batch(paths, torch.cat([views[:, 0], views[:, 1:].flatten()]))
        y_s = torch.tensor([rows_of[s][1] for s in ids], dtype=torch.long)
        return Batch(x, len(targets), self.target.train_labels[targets], y_s, from_features)

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax predictions on val (for accuracy) and train (for the K rule), sharded over ranks."""
        args = (self.store, self.device, self.cfg.batch_size, self.d)
        val = predict(self.model, self.target.val_paths, *args, features=self.features)
        return val, predict(self.model, self.target.train_paths, *args, features=self.features)

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
            if self.features is not None and self.features.cached:
                print(f"feature cache: round {rnd}: {self.features.take_stats().line()}", flush=True)
            save_checkpoint(self.out, self._checkpoint(rnd))
            if cfg.selection_report:
                self.report = self.write_report(rnd, plan)
            self.reporter.event(round_event(rnd, row, plan.source_ids()), keep=True)
        self.d.barrier()

    def write_report(self, rnd: int, plan: Plan) -> SelectionReport | None:
        """selection.html/.png/.json after round ``rnd`` (reports/round_report.py); None on failure."""
        return write_round_report(
            self.out,
            rnd,
            self.state,
            plan,
            self.target.train_paths,
            self.target.train_labels.tolist(),
            self.target.classes,
            self._index_classes,
            self.cache.path if self.cache else (lambda _: None),
            self.cfg.seed,
        )

    def _index_classes(self) -> list[str]:
        if self.index_classes is None:
            self.index_classes = self.client.index_info().classes
        return self.index_classes

    def _report_line(self) -> str:
        if not self.cfg.selection_report:
            return "off (--no-selection-report)"
        if self.report is None:
            return "none (mode none, or not written: see the warnings)"
        return str(self.report.html)


def run(cfg: RunConfig, d: Dist = Dist()) -> list[dict]:
    """Train ``cfg.rounds`` rounds; returns the per-round metrics rows (round, mean_class_acc, top1,
    sources_in_use, steps, ...)."""
    trainer = Trainer(cfg, d)
    try:
        return trainer.run()
    finally:
        trainer.close()
