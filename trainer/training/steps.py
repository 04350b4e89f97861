"""The joint fine-tuning steps of one round, and sharded evaluation.

Loss = 0.5 CE_target + 0.5 CE_source (the paper); without sources (mode none) CE_target alone with weight 1,
as plain fine-tuning. Target and source images go through the backbone in one batch (shared BatchNorm
statistics). Batches are built one step ahead in a background thread while the current step computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from services.backbones import Normalization
from trainer.rounds.plan import shard_indices
from trainer.training.data import ImageStore, normalise
from trainer.training.distributed import Dist
from trainer.training.features import TrunkFeatures


@dataclass
class Batch:
    x: torch.Tensor  # (b + b * R, 3, S, S) uint8: targets first, then their sources; or trunk features
    n_target: int
    y_target: torch.Tensor  # (b,)
    y_source: torch.Tensor  # (b * R,)
    from_features: bool = False  # x holds cached trunk features (b + b * R, C, H, W) float32


@dataclass
class RoundStats:
    loss: float
    loss_target: float
    loss_source: float
    steps: int
    steps_per_s: float
    images_per_s: float  # over all ranks


def joint_loss(
    logits_t: torch.Tensor, y_t: torch.Tensor, logits_s: torch.Tensor, y_s: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, CE_target, CE_source)."""
    loss_t = F.cross_entropy(logits_t.float(), y_t, label_smoothing=smoothing)
    if len(y_s):
        loss_s = F.cross_entropy(logits_s.float(), y_s, label_smoothing=smoothing)
        return 0.5 * loss_t + 0.5 * loss_s, loss_t, loss_s
    # No sources: the source head still joins the graph (0 rows) so DDP sees every parameter used.
    loss_s = logits_s.float().sum() * 0.0
    return loss_t + loss_s, loss_t, loss_s


@dataclass
class StepRunner:
    """What every step needs: the (possibly DDP-wrapped) net, optimizer, schedule and AMP scaler."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    label_smoothing: float
    normalization: Normalization | None = None  # the model's input (mean, std); None: ImageNet's

    def step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step; returns the detached (loss, CE_target, CE_source) (3,)."""
        dev = self.device
        x = batch.x.to(dev, non_blocking=True)
        if not batch.from_features:
            x = normalise(x, self.normalization)
        with torch.autocast(dev.type, enabled=dev.type == "cuda"):
            logits_t, logits_s = self.net(x, batch.n_target, from_features=batch.from_features)
            losses = joint_loss(
                logits_t, batch.y_target.to(dev), logits_s, batch.y_source.to(dev), self.label_smoothing
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses[0]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return torch.stack([v.detach().float() for v in losses])


def train_round(
    runner: StepRunner,
    make_batch: Callable[[int], Batch],
    steps: int,
    before_step: Callable[[int], None],
    d: Dist,
    desc: str,
    progress: bool = True,
) -> RoundStats:
    """``steps`` steps; ``make_batch(s)`` builds step s's batch (prefetched one step ahead),
    ``before_step(s)`` sets modes for step s. Losses are averaged over steps and all-reduced over ranks."""
    totals = torch.zeros(3, dtype=torch.float64, device=runner.device)
    images, start = 0, time.perf_counter()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not (progress and d.is_main), leave=False)
    with ThreadPoolExecutor(1) as prefetch:
        upcoming = prefetch.submit(make_batch, 0)
        for s in range(steps):
            batch = upcoming.result()
            if s + 1 < steps:
                upcoming = prefetch.submit(make_batch, s + 1)
            before_step(s)
            totals += runner.step(batch).double()
            images += len(batch.x)
            bar.update(1)
            if s % 10 == 9 or s + 1 == steps:
                bar.set_postfix(
                    loss=f"{float(totals[0]) / (s + 1):.4f}",
                    img_s=f"{images * d.world / (time.perf_counter() - start):.0f}",
                )
    bar.close()
    seconds = max(time.perf_counter() - start, 1e-9)
    mean = (d.all_reduce_mean(totals) / max(steps, 1)).tolist()
    return RoundStats(mean[0], mean[1], mean[2], steps, steps / seconds, images * d.world / seconds)


@torch.inference_mode()
def predict(
    model: nn.Module,
    paths: Sequence[str],
    store: ImageStore,
    device: torch.device,
    batch_size: int,
    d: Dist,
    features: TrunkFeatures | None = None,
) -> torch.Tensor:
    """Softmax target predictions (N, C) on centre crops in eval mode, each rank scoring its shard of
    ``paths`` (padded as DistributedSampler does) and all ranks receiving the whole (N, C). With cached
    ``features`` the trunk's outputs of view 0 (the centre crop) come from the feature cache."""
    model.eval()
    mine = shard_indices(len(paths), d.rank, d.world)  # (ceil(N / world),)
    out = []
    for lo in range(0, len(mine), batch_size):
        chunk = [paths[i] for i in mine[lo : lo + batch_size].tolist()]
        if features is not None and features.cached:
            f = features.features(chunk, torch.zeros(len(chunk), dtype=torch.long)).to(device)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model.target_head(model.tail(f))
            out.append(logits.float().softmax(dim=1))
            continue
        x = normalise(store.eval_batch(chunk).to(device), getattr(model, "normalization", None))
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model.target_head(model.backbone(x))
        out.append(logits.float().softmax(dim=1))
    probs = torch.cat(out)  # (ceil(N / world), C)
    gathered = d.all_gather(probs)  # world x (ceil(N / world), C)
    full = torch.empty(len(mine) * d.world, probs.shape[1], device=probs.device)
    for rank, part in enumerate(gathered):
        full[rank :: d.world] = part  # rank r scored padded positions r, r + world, ...
    return full[: len(paths)].cpu()


def accuracy(probs: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[float, float]:
    """(mean class accuracy, top-1) of (N, C) predictions; classes without samples are left out of the
    mean."""
    correct = (probs.argmax(dim=1) == labels).double()
    per_class = [correct[labels == c].mean().item() for c in range(n_classes) if bool((labels == c).any())]
    return sum(per_class) / len(per_class), correct.mean().item()
