"""BatchNorm handling: frozen BatchNorm (trainer.freeze_bn), and running statistics left alone while
activation checkpointing recomputes a stage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm2d (SyncBatchNorm included) in module by torchvision's FrozenBatchNorm2d with
    the same statistics, affine parameters and eps: nothing of it trains or updates, in train mode too, and
    nn.SyncBatchNorm.convert_sync_batchnorm leaves it alone. The state-dict keys stay the same (without
    num_batches_tracked). Returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) not in (
            nn.BatchNorm2d,
            nn.SyncBatchNorm,
        ):
            # timm's BatchNormAct2d (normalisation + activation): timm's own converter keeps the activation.
            from timm.layers import freeze_batch_norm_2d

            setattr(module, name, freeze_batch_norm_2d(child))
            replaced += 1
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
            replaced += 1
        else:
            replaced += freeze_batchnorm(child)
    return replaced


@contextlib.contextmanager
def statistics_unchanged(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of module run in train mode (batch statistics) without updating their running
    statistics: for the second forward pass of activation checkpointing, which would count each batch twice."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms
    ]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
