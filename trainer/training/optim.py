"""One optimizer and one learning-rate schedule for the whole run (all rounds), with parameter groups.

Groups: ``backbone`` (its tail: all of it unless --freeze-until) at lr * backbone_lr_mult, ``target_head``
and ``source_head`` at head_lr (default lr).
Schedule over all ``rounds * steps_per_round`` steps: linear warm-up then cosine to 0, or step decay by
lr_gamma at fractions of the run. The backbone's factor is 0 while it is frozen (``--train-layers head``) or
probed (the first ``--probe-steps`` steps: LP-FT). The source head grows when new source classes appear; its
parameters are swapped in the optimizer with their momentum kept (``replace_source_head``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import RunConfig


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    return [
        {
            "name": "backbone",
            "params": list(model.tail.parameters()),  # a frozen trunk (--freeze-until) is left out
            "lr": cfg.lr * cfg.backbone_lr_mult,
        },
        {"name": "target_head", "params": list(model.target_head.parameters()), "lr": head_lr},
        {"name": "source_head", "params": list(model.source_head.parameters()), "lr": head_lr},
    ]


def lr_factor(step: int, total: int, cfg: RunConfig) -> float:
    """Multiplier of the base LR at global ``step`` of ``total``."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.03 * total)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** sum(step >= m * total for m in cfg.milestones())
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def backbone_frozen(step: int, cfg: RunConfig) -> bool:
    return cfg.train_layers == "head" or step < cfg.probe_steps


def build_optimizer(
    model: nn.Module, cfg: RunConfig, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.SGD(
        param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )

    def backbone(step: int) -> float:
        return 0.0 if backbone_frozen(step, cfg) else lr_factor(step, total, cfg)

    def head(step: int) -> float:
        return lr_factor(step, total, cfg)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone, head, head])


def end_probe(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Drop the backbone's momentum gathered at LR 0 during the probe, so fine-tuning starts clean."""
    for p in model.backbone.parameters():
        optimizer.state.pop(p, None)


def replace_source_head(optimizer: torch.optim.Optimizer, old: nn.Linear, new: nn.Linear) -> None:
    """Swap ``old``'s parameters for ``new``'s (more rows) in the optimizer; momentum of old rows is kept."""
    swap = {id(old.weight): new.weight, id(old.bias): new.bias}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if id(p) not in swap:
                continue
            fresh = swap[id(p)]
            group["params"][i] = fresh
            state = optimizer.state.pop(p, None)
            if state and state.get("momentum_buffer") is not None:
                buf = torch.zeros_like(fresh)
                buf[: p.shape[0]] = state["momentum_buffer"]
                optimizer.state[fresh] = {**state, "momentum_buffer": buf}


def set_train_mode(model: nn.Module, cfg: RunConfig, step: int) -> None:
    """Train mode, except BatchNorm with --freeze-bn and the whole backbone while it is frozen."""
    model.train()
    if backbone_frozen(step, cfg):
        model.backbone.eval()
    elif cfg.freeze_bn:
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
