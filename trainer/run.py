"""A training run: rounds of (neighbor windows -> downloads -> joint fine-tuning -> evaluation -> K update),
with a checkpoint at every round boundary and exact resumption (``--resume``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from services.client import RetrievalClient, ServiceError, ServiceUnavailableError
from services.schemas import IndexInfo, JobCreate, JobEvent
from trainer import sources as src
from trainer.adaptive import sampling_weights, update_k
from trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainer.config import ConfigError, RunConfig
from trainer.data import ImageStore, load_target
from trainer.distributed import Dist, device_for
from trainer.fetch import NeighborLists, QueryMaker, SourceCache, download, index_key, local_descriptors
from trainer.model import JointModel
from trainer.report import format_line, plot_curves, table, write_metrics
from trainer.train import accuracy, draw_plan, predict, train_epoch


class Reporter:
    """Job registration and events on the service; a service without job routes only costs a warning."""

    def __init__(self, client: RetrievalClient | None, job_id: str | None):
        self.client, self.job_id = client, job_id

    def event(self, event: JobEvent) -> None:
        if self.client is None or self.job_id is None:
            return
        try:
            self.client.job_event(self.job_id, event)
        except ServiceUnavailableError:
            raise
        except ServiceError as exc:
            print(f"warning: job event not recorded: {exc}", file=sys.stderr)

    def failed(self, exc: BaseException) -> None:
        """Best effort: mark the job failed; no error of this call may mask the run's own."""
        if isinstance(exc, ServiceUnavailableError):
            return  # the service is gone: retrying here would only delay the resume hint
        message = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            self.event(JobEvent(type="status", status="failed", message=message))
        except (ServiceError, ServiceUnavailableError):
            pass


def _queries(
    cfg: RunConfig, client: RetrievalClient, info: IndexInfo, paths: list[str], out: Path
) -> QueryMaker:
    """The fixed queries of the target images (trainer/fetch.py docstring); descriptors persist in ``out``."""
    if cfg.query_mode == "image":
        return QueryMaker(paths)
    saved = out / "descriptors.npz"
    if saved.is_file():
        data = np.load(saved)
        if str(data["spec_hash"]) == info.spec_hash and len(data["descriptors"]) == len(paths):
            return QueryMaker(paths, data["descriptors"], info.spec_hash)
    computed = local_descriptors(client.spec(), paths, threads=max(1, cfg.fetch_workers))
    if computed is None:
        if cfg.query_mode == "descriptor":
            raise ConfigError("--query-mode descriptor needs a gabor index (a conv bank needs its weights)")
        return QueryMaker(paths)
    descriptors, spec_hash = computed
    if spec_hash != info.spec_hash:
        raise ConfigError(f"/v1/spec hashes to {spec_hash[:12]}, /v1/index says {info.spec_hash[:12]}")
    tmp = out / "descriptors.tmp.npz"
    np.savez(tmp, descriptors=descriptors, spec_hash=np.array(spec_hash))
    tmp.replace(saved)
    return QueryMaker(paths, descriptors, spec_hash)


def run(cfg: RunConfig, d: Dist = Dist()) -> list[dict]:
    """Train ``cfg.rounds`` rounds; returns the per-round metrics rows."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = device_for(cfg.device, d)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt = load_checkpoint(out) if cfg.resume else None
    if not cfg.resume and (out / "checkpoint.pt").exists():
        raise ConfigError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
    if ckpt is not None and (diff := cfg.resume_mismatches(ckpt["config"])):
        raise ConfigError(f"--resume with settings that differ from the checkpoint: {', '.join(diff)}")
    if d.is_main:
        print("config:", cfg.describe(), flush=True)

    store = ImageStore(cfg.input_size, threads=max(2, cfg.workers))
    target = load_target(cfg.target, store)
    train_paths = [p for p, _ in target.train]
    delta = cfg.resolved_delta(len(target.classes))
    uses_service = cfg.source_mode != "none"

    client = (
        RetrievalClient(cfg.service, cfg.token, retries=cfg.retries, backoff=cfg.backoff)
        if d.is_main
        else None
    )
    info = client.index_info() if client else None
    key, size = d.broadcast((index_key(info), info.size) if info else None) or (None, 0)
    cache = SourceCache(cfg.resolved_cache_dir(), key) if key else None
    queries = _queries(cfg, client, info, train_paths, out) if client and uses_service else None

    torch.manual_seed(cfg.seed)
    model = JointModel(cfg.arch, len(target.classes), 1, cfg.weights)
    k = torch.full((len(train_paths),), cfg.k0, dtype=torch.long)
    state = src.SourceState(cfg.source_mode, size, NeighborLists([[] for _ in train_paths]))
    source_class: dict[int, int] = {}
    rows: list[dict] = []
    job_id = None
    start = 0
    if ckpt is not None:
        model.resize_source_head(ckpt["source_head_rows"])
        model.load_state_dict(ckpt["model"])
        k, state, source_class = ckpt["k"], src.SourceState.from_state(ckpt["sources"]), ckpt["source_class"]
        rows, job_id, start = ckpt["metrics"], ckpt.get("job_id"), ckpt["round"] + 1
        set_rng_state(ckpt["rng"])
        if d.is_main:
            print(f"resuming after round {ckpt['round']} from {out / 'checkpoint.pt'}", flush=True)
    if d.is_main:
        write_metrics(out / "metrics.jsonl", rows)
        if job_id is None:
            try:
                name = cfg.job_name or f"sjft:{Path(cfg.out).name}"
                job_id = client.create_job(
                    JobCreate(name=name, target=cfg.target, config=cfg.to_dict())
                ).job_id
            except ServiceUnavailableError:
                raise
            except ServiceError as exc:
                print(f"warning: job not registered: {exc}", file=sys.stderr)
    reporter = Reporter(client, job_id)
    reporter.event(JobEvent(type="status", status="running"))
    model.to(device)
    val_paths, val_labels, train_labels = [p for p, _ in target.val], target.val_labels, target.train_labels

    try:
        for rnd in range(start, cfg.rounds):
            torch.manual_seed(cfg.seed * 1000 + rnd)  # new head rows, dropout
            if d.is_main:
                src.prepare_round(state, client, queries, k, cfg.metric, cfg.seed, rnd)
            state = d.broadcast(state)
            plan = draw_plan(
                sampling_weights(k, cfg.k0),
                cfg.epochs_per_round,
                src.picker(state, k),
                src.seeded(cfg.seed, rnd, 0),
            )
            if d.is_main and uses_service:
                needed = src.needed_ids(state, k, plan.source)
                if cfg.source_mode == "all":
                    unknown = [s for s in needed if s not in state.labels]
                    state.labels.update(src.source_labels(client, unknown, cfg.metric) if unknown else {})
                download(
                    client, needed, cache, workers=cfg.fetch_workers, retries=cfg.retries, backoff=cfg.backoff
                )
            state = d.broadcast(state)
            d.barrier()  # the other ranks read the images rank 0 just cached
            used_labels = sorted({state.label(s) for s in set(plan.source.tolist()) if s >= 0})
            for label in used_labels:
                source_class.setdefault(label, len(source_class))
            model.resize_source_head(len(source_class))
            row_of = {s: source_class[state.label(s)] for s in set(plan.source.tolist()) if s >= 0}

            net = d.wrap(model, device)
            optimizer = torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
            step = cfg.lr_step_epochs or max(1, (2 * cfg.epochs_per_round) // 3)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=cfg.lr_gamma)
            scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
            n = len(train_paths)
            for epoch in range(cfg.epochs_per_round):
                part = plan.slice(epoch * n, (epoch + 1) * n).shard(d.rank, d.world)
                stats = train_epoch(
                    net,
                    part,
                    train_paths,
                    train_labels,
                    lambda s: str(cache.path(s)),
                    row_of,
                    store,
                    optimizer,
                    scaler,
                    device,
                    cfg.batch_size,
                )
                scheduler.step()
                if d.is_main:
                    print(
                        f"round {rnd} epoch {epoch + 1}/{cfg.epochs_per_round} loss={stats.loss:.4f} "
                        f"{stats.images_per_s:.1f} img/s",
                        flush=True,
                    )

            if d.is_main:
                probs_val = predict(model, val_paths, store, device, cfg.batch_size)
                probs_train = predict(model, train_paths, store, device, cfg.batch_size)
            result = d.broadcast((probs_val, probs_train) if d.is_main else None)
            probs_val, probs_train = result
            mca, top1 = accuracy(probs_val, val_labels, len(target.classes))
            upd = update_k(k, probs_train, train_labels, cfg.k0, cfg.sigma0, cfg.sigma1, delta, cfg.k_max)
            row = {
                "round": rnd,
                "mean_class_acc": mca,
                "top1": top1,
                "loss": stats.loss,
                "loss_target": stats.loss_target,
                "loss_source": stats.loss_source,
                "sources_in_use": state.in_use,
                "misclassified": upd.misclassified,
                "uncertain": upd.uncertain,
                "k_mean": float(k.double().mean()),
                "k_max": int(k.max()),
            }
            rows.append(row)
            if cfg.adaptive:
                k = upd.k
            if d.is_main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row, sort_keys=True) + "\n")
                print(format_line(row), flush=True)
                save_checkpoint(
                    out,
                    {
                        "round": rnd,
                        "config": cfg.to_dict(),
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": rng_state(),
                        "k": k,
                        "sources": state.to_state(),
                        "source_class": source_class,
                        "source_head_rows": model.source_head.out_features,
                        "metrics": rows,
                        "job_id": job_id,
                        "query_mode": queries.mode if queries else None,
                    },
                )
                reporter.event(JobEvent(type="round", round=rnd, metrics=row))
            d.barrier()
    except BaseException as exc:  # KeyboardInterrupt too: the shared service shows the job as failed
        if d.is_main:
            reporter.failed(exc)
        raise

    if d.is_main:
        print(table(rows), flush=True)
        plot_curves(out / "curves.png", rows)
        reporter.event(JobEvent(type="status", status="finished"))
        client.close()
    return rows
