"""The joint fine-tuning loop and evaluation.

A round's whole sample plan (which target, which of its neighbors, flips) is drawn up front from a generator
seeded by (seed, round), so the batches are identical however the run is split, resumed or sharded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import WeightedRandomSampler

from trainer.data import ImageStore
from trainer.model import JointModel


@dataclass
class Plan:
    """One round's samples, in order: S = epochs * N_target."""

    target: torch.Tensor  # (S,) long, index into the target training list
    source: torch.Tensor  # (S,) long source_id, -1 for none (plain fine-tuning)
    flips: torch.Tensor  # (S, 2) bool, horizontal flip of the target / source image

    def slice(self, lo: int, hi: int) -> Plan:
        return Plan(self.target[lo:hi], self.source[lo:hi], self.flips[lo:hi])

    def shard(self, rank: int, world: int) -> Plan:
        return Plan(self.target[rank::world], self.source[rank::world], self.flips[rank::world])


def draw_plan(
    weights: torch.Tensor,
    epochs: int,
    pick_source: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    generator: torch.Generator,
) -> Plan:
    """Targets drawn with replacement in proportion to ``weights`` (N,); ``pick_source(targets, u)`` maps each
    drawn target and a uniform u in [0, 1) to a source id (None: no sources)."""
    n = len(weights)
    sampler = WeightedRandomSampler(weights, num_samples=n * epochs, replacement=True, generator=generator)
    target = torch.tensor(list(sampler), dtype=torch.long)  # (S,)
    u = torch.rand(len(target), generator=generator, dtype=torch.float64)  # (S,)
    flips = torch.rand(len(target), 2, generator=generator) < 0.5  # (S, 2)
    source = pick_source(target, u) if pick_source else torch.full_like(target, -1)
    return Plan(target=target, source=source, flips=flips)


@dataclass
class EpochStats:
    loss: float
    loss_target: float
    loss_source: float
    images_per_s: float


def train_epoch(
    model: nn.Module,
    plan: Plan,
    target_paths: Sequence[str],
    target_labels: torch.Tensor,
    source_path: Callable[[int], str],
    source_class: dict[int, int],
    store: ImageStore,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    batch_size: int,
) -> EpochStats:
    """One pass over ``plan`` (this rank's share). Loss = 0.5 CE_target + 0.5 CE_source (CE_target alone
    without sources). Target and source images go through the backbone in one batch: shared BatchNorm
    statistics."""
    model.train()
    use_amp = device.type == "cuda"
    totals = torch.zeros(3, dtype=torch.float64)
    steps, seen, start = 0, 0, time.perf_counter()
    for lo in range(0, len(plan.target), batch_size):
        t_idx = plan.target[lo : lo + batch_size]
        s_ids = plan.source[lo : lo + batch_size]
        flips = plan.flips[lo : lo + batch_size]
        x_t = store.batch([target_paths[i] for i in t_idx.tolist()], flips[:, 0])  # (b, 3, S, S)
        y_t = target_labels[t_idx]
        joint = bool((s_ids >= 0).all())
        if joint:
            x_s = store.batch([source_path(s) for s in s_ids.tolist()], flips[:, 1])
            y_s = torch.tensor([source_class[s] for s in s_ids.tolist()], dtype=torch.long)
            x = torch.cat([x_t, x_s])
        else:
            x = x_t
        x, y_t = x.to(device, non_blocking=True), y_t.to(device)
        with torch.autocast(device.type, enabled=use_amp):
            logits_t, logits_s = model(x, len(t_idx))
            loss_t = F.cross_entropy(logits_t.float(), y_t)
            if joint:
                loss_s = F.cross_entropy(logits_s.float(), y_s.to(device))
                loss = 0.5 * loss_t + 0.5 * loss_s
            else:
                # The source head still joins the graph (0 rows) so DDP sees every parameter used.
                loss_s = logits_s.float().sum() * 0.0
                loss = loss_t + loss_s
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals += torch.tensor([loss.item(), loss_t.item(), loss_s.item()], dtype=torch.float64)
        steps += 1
        seen += len(x)
    mean = (totals / max(steps, 1)).tolist()
    return EpochStats(mean[0], mean[1], mean[2], seen / max(time.perf_counter() - start, 1e-9))


@torch.inference_mode()
def predict(
    model: JointModel, paths: Sequence[str], store: ImageStore, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Softmax target predictions (N, C) in eval mode."""
    model.eval()
    out = []
    for lo in range(0, len(paths), batch_size):
        x = store.batch(list(paths[lo : lo + batch_size])).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model.target_head(model.backbone(x))
        out.append(logits.float().softmax(dim=1).cpu())
    return torch.cat(out)


def accuracy(probs: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[float, float]:
    """(mean class accuracy, top-1) of (N, C) predictions; classes without samples are left out of the
    mean."""
    correct = (probs.argmax(dim=1) == labels).double()
    per_class = [correct[labels == c].mean().item() for c in range(n_classes) if bool((labels == c).any())]
    return sum(per_class) / len(per_class), correct.mean().item()
