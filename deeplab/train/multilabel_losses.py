"""Losses of a multi-label model (dataset.multilabel): each class is scored on its own, through a sigmoid.

Each function takes logits (B, C, H, W) and a target (B, C, H, W) of 0 (absent), 1 (present) or ignore_index,
skips the ignored (pixel, class) pairs, and returns a scalar averaged once over the whole batch. pos_weight (C,)
multiplies the term of the present pixels of each class (torch's BCEWithLogitsLoss pos_weight).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from deeplab.config import CrossEntropyConfig, DiceConfig, FocalConfig, LossConfig
from deeplab.train.losses import PixelLoss, _precise, _zero


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or logits.shape != target.shape:
        raise ValueError(
            f"multi-label logits {tuple(logits.shape)} do not match target {tuple(target.shape)}"
        )


def _split(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """valid (B, C, H, W) bool and the float 0/1 truth (ignored pairs 0)."""
    valid = target != ignore_index
    return valid, (target == 1).float()


def _class_weight(pos_weight: Tensor | None, like: Tensor) -> Tensor | None:
    return None if pos_weight is None else pos_weight.to(like).view(1, -1, 1, 1)


def binary_cross_entropy(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, pos_weight: Tensor | None = None
) -> Tensor:
    """Mean over the valid (pixel, class) pairs of -(w_c y log s(z) + (1 - y) log(1 - s(z))), w_c = pos_weight."""
    _check(logits, target)
    valid, truth = _split(target, ignore_index)
    z = _precise(logits)
    losses = F.binary_cross_entropy_with_logits(
        z, truth.to(z.dtype), pos_weight=_class_weight(pos_weight, z), reduction="none"
    )
    count = valid.sum()
    return (losses * valid).sum() / count if bool(count > 0) else _zero(logits)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    gamma: float = 2.0,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017): mean over the valid pairs of -w (1 - p_t)^gamma log p_t, p_t the
    probability of the true state (present: s(z), absent: 1 - s(z)); w = pos_weight_c where present, else 1."""
    _check(logits, target)
    valid, truth = _split(target, ignore_index)
    z = _precise(logits)
    truth = truth.to(z.dtype)
    log_pt = -F.binary_cross_entropy_with_logits(z, truth, reduction="none")  # log p_t, stable
    losses = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    weight = _class_weight(pos_weight, z)
    if weight is not None:
        losses = losses * torch.where(truth > 0, weight, torch.ones_like(weight))
    count = valid.sum()
    return (losses * valid).sum() / count if bool(count > 0) else _zero(logits)


def dice_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255, eps: float = 1e-6) -> Tensor:
    """1 - mean over the classes c present in the target of (2 sum_i p_ic g_ic + eps) / (sum_i p_ic + sum_i g_ic
    + eps), sums over the valid pixels i of class c in the batch; p = sigmoid(logits), g the 0/1 truth."""
    _check(logits, target)
    valid, truth = _split(target, ignore_index)
    probs = torch.sigmoid(_precise(logits)) * valid  # (B, C, H, W), ignored pairs 0
    truth = truth.to(probs.dtype)
    dims = (0, 2, 3)
    present = truth.sum(dims) > 0  # (C,)
    if not bool(present.any()):
        return _zero(logits)
    dice = (2.0 * (probs * truth).sum(dims) + eps) / (probs.sum(dims) + truth.sum(dims) + eps)  # (C,)
    return 1.0 - dice[present].mean()


def multilabel_loss_of(cfg: LossConfig, ignore_index: int, pos_weight: Tensor | None = None) -> PixelLoss:
    """The configured loss for a multi-label model (the config refuses the others): cross_entropy is BCE.
    pos_weight: loss.pos_weight resolved (auto computed from the training masks), (C,) or None."""
    if isinstance(cfg, CrossEntropyConfig | FocalConfig):
        if isinstance(cfg.pos_weight, list) and pos_weight is None:
            pos_weight = torch.tensor(cfg.pos_weight, dtype=torch.float32)
        if isinstance(cfg, FocalConfig):
            return functools.partial(
                focal_loss, ignore_index=ignore_index, gamma=cfg.gamma, pos_weight=pos_weight
            )
        return functools.partial(binary_cross_entropy, ignore_index=ignore_index, pos_weight=pos_weight)
    if isinstance(cfg, DiceConfig):
        return functools.partial(dice_loss, ignore_index=ignore_index, eps=cfg.eps)
    raise ValueError(f"loss={cfg.name} has no multi-label form")
