"""EMA weights (trainer.ema): an exponential moving average of the model's weights, updated after each
optimizer step, validated apart (val/ema/*) and saved in last.pt.

torch.optim.swa_utils.AveragedModel keeps the copy. BatchNorm's running statistics (buffers) are averaged
like the weights (use_buffers=True, as torchvision's --model-ema and timm's ModelEmaV3 by default): the EMA
model's statistics follow the averaged weights without a pass over the data. Integer buffers
(num_batches_tracked) are the model's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from deeplab.errors import CheckpointError

log = logging.getLogger(__name__)


def ema_decay(decay: float, warmup: int, updates: int) -> float:
    """The decay of the update after `updates` earlier ones: it ramps linearly from 0 (a copy of the
    weights) to `decay` over the first `warmup` optimizer steps, so the average is not dominated by the
    initial weights."""
    if warmup <= 0:
        return decay
    return decay * min(1.0, updates / warmup)


def build_ema(model: nn.Module, decay: float | None, warmup: int) -> AveragedModel | None:
    """The EMA copy of `model` on its device (None when trainer.ema.decay is null)."""
    if decay is None:
        return None

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # ema <- d * ema + (1 - d) * current, one fused op per group of same device and dtype
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - ema_decay(decay, warmup, int(num_averaged)))
        else:
            torch._foreach_copy_(ema, current)

    averaged = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    averaged.eval()  # never trained: it only receives averages
    return averaged


def restore_ema(ema: AveragedModel | None, ckpt: dict[str, Any], path: Path) -> None:
    """The EMA of the checkpoint a run resumes from; a checkpoint without one (EMA switched on at resume)
    starts it from the resumed weights at the next step."""
    if ema is None:
        if "ema" in ckpt:
            log.warning(
                "%s holds EMA weights but trainer.ema.decay is null: the resumed run drops them (its best.pt "
                "holds the plain weights from now on); resume with the checkpoint's trainer.ema.decay to keep them",
                path,
            )
        return
    if "ema" not in ckpt:
        log.info("%s holds no EMA weights: the EMA starts from the resumed weights", path)
        return
    try:
        ema.load_state_dict(ckpt["ema"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: its EMA weights do not fit this model ({str(e).splitlines()[0]})"
        ) from None
