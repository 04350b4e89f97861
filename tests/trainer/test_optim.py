"""One optimizer and schedule for the whole run: warm-up + cosine or steps, LP-FT, frozen BatchNorm, a
growing source head that keeps its momentum."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.config import ConfigError, RunConfig
from trainer.training.model import JointModel
from trainer.training.optim import build_optimizer, end_probe, lr_factor, replace_source_head, set_train_mode


def cfg(**kw) -> RunConfig:
    return RunConfig("t", "http://x", "o", **kw)


def test_warmup_then_cosine_to_zero_and_step_decay():
    c = cfg(warmup_steps=10)
    assert lr_factor(0, 110, c) == pytest.approx(0.1) and lr_factor(9, 110, c) == pytest.approx(1.0)
    assert lr_factor(10, 110, c) == pytest.approx(1.0) and lr_factor(60, 110, c) == pytest.approx(0.5)
    assert lr_factor(110, 110, c) == pytest.approx(0.0, abs=1e-12)
    s = cfg(warmup_steps=0, lr_schedule="step", lr_milestones="0.5,0.75", lr_gamma=0.1)
    assert [lr_factor(x, 100, s) for x in (0, 49, 50, 75, 99)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    with pytest.raises(ConfigError, match="--lr-milestones"):
        cfg(lr_milestones="1.5").milestones()


def test_groups_lrs_and_a_probe_that_freezes_the_backbone_then_releases_it():
    torch.manual_seed(0)
    model = JointModel("squeezenet1_0", 3, 2)
    c = cfg(lr=0.1, head_lr=0.5, backbone_lr_mult=0.1, warmup_steps=0, probe_steps=2)
    opt, sched = build_optimizer(model, c, total=100)
    assert [g["name"] for g in opt.param_groups] == ["backbone", "target_head", "source_head"]
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[1]["lr"] == pytest.approx(0.5)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    x = torch.randn(4, 3, 32, 32)
    for step in range(3):
        if step == c.probe_steps:
            end_probe(opt, model)
        set_train_mode(model, c, step)
        assert model.backbone.training == (step >= 2)
        t, s = model(x, 2)
        (t.sum() + s.sum()).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters(), strict=True))
        assert moved == (step >= 2)  # frozen during the probe (LR 0), trained after
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 3 / 100)))


def test_frozen_batchnorm_keeps_running_statistics():
    model = JointModel("resnet18", 3, 1)
    set_train_mode(model, cfg(freeze_bn=True), 0)
    bn = next(m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    mean = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32), 2)
    assert torch.equal(bn.running_mean, mean) and model.target_head.training


def test_grown_source_head_keeps_old_rows_momentum_in_the_optimizer():
    model = JointModel("squeezenet1_0", 3, 2)
    opt, _ = build_optimizer(model, cfg(), total=10)
    t, s = model(torch.randn(4, 3, 32, 32), 2)
    (t.sum() + s.sum()).backward()
    opt.step()
    old = model.source_head
    momentum = opt.state[old.weight]["momentum_buffer"].clone()
    model.resize_source_head(5)
    replace_source_head(opt, old, model.source_head)
    params = opt.param_groups[2]["params"]
    assert params[0] is model.source_head.weight and params[1] is model.source_head.bias
    buf = opt.state[model.source_head.weight]["momentum_buffer"]
    assert buf.shape == (5, old.in_features) and torch.equal(buf[:2], momentum) and not buf[2:].any()
    assert old.weight not in opt.state
