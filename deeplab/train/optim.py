"""SGD (the papers') or AdamW with separate backbone and head learning rates, and poly learning-rate decay with
optional linear warmup."""

from __future__ import annotations

import inspect

from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from deeplab.config import OptimConfig, ScheduleConfig
from deeplab.errors import ConfigError


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP ("module") or torch.compile ("_orig_mod") wrappers."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def build_optimizer(o: OptimConfig, model: nn.Module) -> Optimizer:
    """SGD over the trainable parameters: backbone at optim.lr, the rest at lr * optim.head_lr_mult; or
    AdamW: backbone at lr * optim.backbone_lr_mult, the rest at optim.lr.

    Move the model to its device first: the fused implementations are used when every parameter is on CUDA.
    """

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
        no_decay = o.no_decay_norm and p.ndim <= 1
        groups.setdefault((has_backbone and id(p) not in backbone_ids, no_decay), []).append(p)
    if not groups:
        raise ConfigError("the model has no trainable parameters (check the model config's frozen parts)")

    param_groups = []
    for (is_head, no_decay), params in sorted(groups.items()):
        if o.name == "sgd":
            group_lr = o.lr * o.head_lr_mult if is_head else o.lr
        else:
            group_lr = o.lr if is_head else o.lr * o.backbone_lr_mult
        param_groups.append(
            {
                "params": params,
                "lr": group_lr,
                "initial_lr": group_lr,  # the schedulers' base lr
                "weight_decay": 0.0 if no_decay else o.weight_decay,
                "name": ("head" if is_head else "backbone") + ("_no_decay" if no_decay else ""),
            }
        )
    all_params = [p for g in param_groups for p in g["params"]]
    cls = SGD if o.name == "sgd" else AdamW
    fused = "fused" in inspect.signature(cls.__init__).parameters and all(
        p.is_cuda and p.is_floating_point() for p in all_params
    )
    if o.name != "sgd":
        return AdamW(
            param_groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps, weight_decay=o.weight_decay,
            fused=True if fused else None,
        )  # fmt: skip
    return SGD(
        param_groups,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
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


def build_scheduler(s: ScheduleConfig, max_iters: int, optimizer: Optimizer) -> LRScheduler:
    """Poly decay over max_iters with optional linear warmup, stepped once per iteration.

    To resume, build the optimizer and this scheduler, then load both state dicts (optimizer first):
    the next step continues the same curve.
    """

    # A closure, not an object: LambdaLR then keeps it out of its state dict, so the curve always comes
    # from the config while last_epoch (the iteration) comes from the checkpoint.
    def factor(it: int) -> float:
        return poly_factor(it, max_iters, s.power, s.warmup_iters, s.warmup_factor)

    return LambdaLR(optimizer, lr_lambda=factor)
