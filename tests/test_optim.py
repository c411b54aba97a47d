from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from deeplab.config import train_config
from deeplab.train.optim import build_optimizer, build_scheduler


class Tiny(nn.Module):
    """Stand-in for DeepLab: a `backbone` submodule and a head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


def make_cfg(cfg_factory, *overrides: str):
    return train_config(cfg_factory(["trainer.max_iters=100", *overrides]))


def optimizer_and_schedule(cfg, model):
    optimizer = build_optimizer(cfg.optim, model)
    return optimizer, build_scheduler(cfg.schedule, cfg.trainer.max_iters, optimizer)


def lrs_of(optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


def test_sgd_settings_and_head_multiplier(cfg_factory):
    cfg = make_cfg(cfg_factory, "optim.head_lr_mult=10", "optim.lr=0.01")
    model = Tiny()
    opt = build_optimizer(cfg.optim, model)
    assert isinstance(opt, torch.optim.SGD)
    backbone, head = opt.param_groups
    assert backbone["name"] == "backbone" and head["name"] == "head"
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert backbone["lr"] == backbone["initial_lr"] == pytest.approx(0.01)
    assert head["lr"] == head["initial_lr"] == pytest.approx(0.1)
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 and g["nesterov"] is False


def test_no_decay_norm_and_frozen_parameters(cfg_factory):
    model = Tiny()
    model.backbone[0].weight.requires_grad_(False)
    opt = build_optimizer(make_cfg(cfg_factory, "optim.no_decay_norm=true").optim, model)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"backbone_no_decay", "head", "head_no_decay"}  # frozen conv is left out
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0  # BN weight and bias
    assert by_name["head_no_decay"]["params"] == [model.head.bias]
    assert by_name["head"]["params"] == [model.head.weight] and by_name["head"]["weight_decay"] == 1e-4
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable == 4


def run_lrs(opt, sched, steps: int) -> list[list[float]]:
    """The lr of each group used at each iteration: read, step the optimizer, step the scheduler."""
    seen = []
    for _ in range(steps):
        seen.append(lrs_of(opt))
        opt.step()
        sched.step()
    return seen


def test_poly_lr_follows_the_formula(cfg_factory):
    cfg = make_cfg(cfg_factory, "optim.lr=0.007", "optim.head_lr_mult=10", "schedule.power=0.9")
    seen = run_lrs(*optimizer_and_schedule(cfg, Tiny()), 100)
    for it in (0, 1, 37, 99):
        want = 0.007 * (1 - it / 100) ** 0.9
        assert seen[it][0] == pytest.approx(want, rel=1e-12)
        assert seen[it][1] == pytest.approx(10 * want, rel=1e-12)
    assert seen[99][0] == pytest.approx(0.007 * 0.01**0.9, rel=1e-12)  # lr of the last update is not 0


def test_warmup_ramps_linearly_then_joins_the_poly_curve(cfg_factory):
    cfg = make_cfg(
        cfg_factory,
        "optim.lr=0.01",
        "schedule.warmup_iters=10",
        "schedule.warmup_factor=0.1",
        "schedule.power=2",
    )
    seen = [lrs[0] for lrs in run_lrs(*optimizer_and_schedule(cfg, Tiny()), 100)]
    poly = [0.01 * (1 - it / 100) ** 2 for it in range(100)]
    assert seen[0] == pytest.approx(0.1 * poly[0], rel=1e-12)
    assert seen[5] == pytest.approx((0.1 + 0.9 * 5 / 10) * poly[5], rel=1e-12)
    assert seen[9] == pytest.approx((0.1 + 0.9 * 9 / 10) * poly[9], rel=1e-12)
    for it in (10, 50, 99):
        assert seen[it] == pytest.approx(poly[it], rel=1e-12)


def test_resumed_scheduler_continues_the_same_curve(cfg_factory):
    cfg = make_cfg(
        cfg_factory, "optim.head_lr_mult=10", "schedule.warmup_iters=8", "schedule.warmup_factor=0.01"
    )
    torch.manual_seed(0)
    model = Tiny()
    uninterrupted = run_lrs(*optimizer_and_schedule(cfg, model), 30)

    opt, sched = optimizer_and_schedule(cfg, model)
    first = run_lrs(opt, sched, 12)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as checkpoints are read

    # A fresh process: build both, then load both states.
    opt2, sched2 = optimizer_and_schedule(cfg, model)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    rest = run_lrs(opt2, sched2, 18)
    assert first + rest == uninterrupted  # closed-form lr: exactly equal
