"""SGD with a separate head learning rate, and poly learning-rate decay with optional linear warmup."""

from __future__ import annotations

import inspect

from omegaconf import DictConfig
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from deeplab.errors import ConfigError


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP ("module") or torch.compile ("_orig_mod") wrappers."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def _positive(value: float, key: str) -> float:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")
    return float(value)


def _non_negative(value: float, key: str) -> float:
    if not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")
    return float(value)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> Optimizer:
    """SGD over the trainable parameters: backbone at optim.lr, the rest at lr * optim.head_lr_mult.

    Move the model to its device first: fused SGD is used when every parameter is on CUDA.
    """
    o = cfg.optim
    lr = _positive(o.lr, "optim.lr")
    head_mult = _positive(o.head_lr_mult, "optim.head_lr_mult")
    momentum = _non_negative(o.momentum, "optim.momentum")
    weight_decay = _non_negative(o.weight_decay, "optim.weight_decay")
    if o.nesterov and momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")

    model = _unwrap(model)
    backbone = getattr(model, "backbone", None)
    # Without a backbone submodule every parameter trains at optim.lr.
    has_backbone = isinstance(backbone, nn.Module)
    backbone_ids = {id(p) for p in backbone.parameters()} if has_backbone else set()
    # (is head, no decay) -> parameters
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        # One-dimensional parameters are BN/GN weights and biases and conv biases.
        no_decay = bool(o.no_decay_norm) and p.ndim <= 1
        groups.setdefault((has_backbone and id(p) not in backbone_ids, no_decay), []).append(p)
    if not groups:
        raise ConfigError("the model has no trainable parameters (check the model config's frozen parts)")

    param_groups = []
    for (is_head, no_decay), params in sorted(groups.items()):
        group_lr = lr * head_mult if is_head else lr
        param_groups.append(
            {
                "params": params,
                "lr": group_lr,
                "initial_lr": group_lr,  # the schedulers' base lr
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": ("head" if is_head else "backbone") + ("_no_decay" if no_decay else ""),
            }
        )
    all_params = [p for g in param_groups for p in g["params"]]
    fused = "fused" in inspect.signature(SGD.__init__).parameters and all(
        p.is_cuda and p.is_floating_point() for p in all_params
    )
    return SGD(
        param_groups,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=bool(o.nesterov),
        fused=True if fused else None,
    )


def poly_factor(
    it: int, max_iters: int, power: float, warmup_iters: int = 0, warmup_factor: float = 1.0
) -> float:
    """lr / base_lr at iteration it: (1 - it/max_iters)^power, times a linear ramp during warmup."""
    decay = max(0.0, 1.0 - it / max_iters) ** power
    if it < warmup_iters:
        # The ramp scales the poly curve, so after warmup the curve is the same as without warmup.
        decay *= warmup_factor + (1.0 - warmup_factor) * it / warmup_iters
    return decay


def build_scheduler(cfg: DictConfig, optimizer: Optimizer) -> LRScheduler:
    """Poly decay over trainer.max_iters with optional linear warmup, stepped once per iteration.

    To resume, build the optimizer and this scheduler, then load both state dicts (optimizer first):
    the next step continues the same curve.
    """
    max_iters = int(cfg.trainer.max_iters)
    if max_iters <= 0:
        raise ConfigError(f"trainer.max_iters must be > 0, got {max_iters}")
    s = cfg.schedule
    power = _positive(s.power, "schedule.power")
    warmup_iters = int(s.warmup_iters)
    if not 0 <= warmup_iters < max_iters:
        raise ConfigError(
            f"schedule.warmup_iters must be in [0, trainer.max_iters={max_iters}), got {warmup_iters}"
        )
    warmup_factor = float(s.warmup_factor)
    if warmup_iters and not 0 < warmup_factor <= 1:
        raise ConfigError(f"schedule.warmup_factor must be in (0, 1], got {warmup_factor}")

    # A closure, not an object: LambdaLR then keeps it out of its state dict, so the curve always comes
    # from the config while last_epoch (the iteration) comes from the checkpoint.
    def factor(it: int) -> float:
        return poly_factor(it, max_iters, power, warmup_iters, warmup_factor)

    return LambdaLR(optimizer, lr_lambda=factor)
