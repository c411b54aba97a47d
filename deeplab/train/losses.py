"""Training losses. Each function takes logits (B, C, H, W) and a target (B, H, W) of class ids, skips the
pixels equal to ignore_index, and returns a scalar averaged once over the whole batch (never per image and
then again per batch). SegmentationLoss applies the configured one to the main and the aux outputs.

A one-logit (binary) model's logits z are scored as the two logits (0, z): softmax gives (1 - sigmoid(z),
sigmoid(z)), so every loss works on it and cross-entropy is exactly BCE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.config import CrossEntropyConfig, DiceConfig, FocalConfig, LossConfig, OHEMConfig

PixelLoss = Callable[[Tensor, Tensor], Tensor]


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")


def _precise(logits: Tensor) -> Tensor:
    """Half-precision logits (autocast) computed in float32; float32 and float64 as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _zero(logits: Tensor) -> Tensor:
    """0 with a graph: a batch without a valid pixel contributes nothing (not 0/0 = NaN)."""
    return logits.sum() * 0.0


def cross_entropy(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """sum_i w_{y_i} (-log p_{i, y_i}) / sum_i w_{y_i} over the valid pixels i (w = 1 without weights): the
    value of F.cross_entropy's "mean", but 0 instead of NaN when no pixel is valid."""
    _check(logits, target)
    target = target.long()
    valid = target != ignore_index
    total = F.cross_entropy(
        _precise(logits), target, weight=weight, ignore_index=ignore_index, reduction="sum"
    )
    if weight is None:
        return total / valid.sum().clamp(min=1)
    denominator = weight[target[valid]].sum()
    return total / denominator if bool(denominator > 0) else _zero(logits)


def ohem_cross_entropy(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 100000
) -> Tensor:
    """Mean cross-entropy over the kept pixels: the valid pixels whose true-class probability is below
    thresh, and at least the min_kept hardest valid pixels (lowest true-class probability)."""
    _check(logits, target)
    target = target.long()
    nll = F.cross_entropy(_precise(logits), target, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    nll = nll[target != ignore_index]  # (N,)
    if nll.numel() == 0:
        return _zero(logits)
    with torch.no_grad():
        kept = torch.exp(-nll) < thresh  # p_t = exp(-nll)
        k = min(min_kept, nll.numel())
        if k > 0:
            kept[nll.topk(k).indices] = True
    return (nll * kept).sum() / kept.sum().clamp(min=1)


def focal_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255, gamma: float = 2.0) -> Tensor:
    """Mean over the valid pixels of -(1 - p_t)^gamma log p_t (Lin et al. 2017; gamma 0 is cross-entropy)."""
    _check(logits, target)
    target = target.long()
    valid = target != ignore_index
    log_p = F.log_softmax(_precise(logits), dim=1)  # (B, C, H, W)
    log_pt = log_p.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)[valid]  # (N,)
    if log_pt.numel() == 0:
        return _zero(logits)
    return (-((1.0 - log_pt.exp()) ** gamma) * log_pt).mean()


def dice_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255, eps: float = 1e-6) -> Tensor:
    """1 - mean over the classes c present in the target of (2 sum_i p_ic g_ic + eps) / (sum_i p_ic +
    sum_i g_ic + eps), sums over the valid pixels i of the batch; p: softmax, g: one-hot target."""
    _check(logits, target)
    target = target.long()
    valid = target != ignore_index  # (B, H, W)
    num_classes = logits.shape[1]
    probs = F.softmax(_precise(logits), dim=1).permute(0, 2, 3, 1)[valid]  # (N, C)
    truth = F.one_hot(target[valid], num_classes).to(probs.dtype)  # (N, C)
    present = truth.sum(0) > 0  # (C,)
    if not bool(present.any()):
        return _zero(logits)
    dice = (2.0 * (probs * truth).sum(0) + eps) / (probs.sum(0) + truth.sum(0) + eps)  # (C,)
    return 1.0 - dice[present].mean()


def _lovasz_gradient(fg_sorted: Tensor) -> Tensor:
    """g_i = J(first i) - J(first i - 1) of the Jaccard loss J of the pixels taken as errors in sorted order
    (Berman et al. 2018, Alg. 1); fg_sorted: (N,) 1 for the class's pixels, in decreasing error order."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: Tensor, target: Tensor, *, ignore_index: int = 255) -> Tensor:
    """Lovasz-softmax (Berman et al. 2018): for each class c present in the target, the Lovasz extension of
    the Jaccard loss evaluated at the errors |[y_i = c] - p_ic| over all valid pixels of the batch; averaged
    over those classes."""
    _check(logits, target)
    target = target.long()
    valid = target != ignore_index
    probs = F.softmax(_precise(logits), dim=1).permute(0, 2, 3, 1)[valid]  # (N, C)
    labels = target[valid]  # (N,)
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_gradient(fg[order])))
    return torch.stack(losses).mean() if losses else _zero(logits)


def pixel_loss_of(cfg: LossConfig, ignore_index: int, class_weights: Tensor | None = None) -> PixelLoss:
    """The loss function the config names, with its options bound."""
    if isinstance(cfg, CrossEntropyConfig):
        return functools.partial(cross_entropy, ignore_index=ignore_index, weight=class_weights)
    if isinstance(cfg, OHEMConfig):
        return functools.partial(
            ohem_cross_entropy, ignore_index=ignore_index, thresh=cfg.thresh, min_kept=cfg.min_kept
        )
    if isinstance(cfg, FocalConfig):
        return functools.partial(focal_loss, ignore_index=ignore_index, gamma=cfg.gamma)
    if isinstance(cfg, DiceConfig):
        return functools.partial(dice_loss, ignore_index=ignore_index, eps=cfg.eps)
    return functools.partial(lovasz_softmax, ignore_index=ignore_index)


class SegmentationLoss(nn.Module):
    """pixel_loss(out) + aux_weight * pixel_loss(aux); pixel_loss defaults to cross-entropy."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        pixel_loss: PixelLoss | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.multilabel = (
            multilabel  # targets (B, C, H, W) of 0 / 1 / ignore (deeplab/train/multilabel_losses.py)
        )
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.loss = pixel_loss or functools.partial(cross_entropy, ignore_index=ignore_index)

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """outputs["out"] (and "aux"): (B, C, H, W) logits; target: (B, H, W) labels (multi-label: (B, C, H, W))
        -> (total, parts)."""
        main = self.pixel_loss(outputs["out"], target)
        total = main
        parts = {"main": main.detach()}
        if "aux" in outputs:
            aux = self.pixel_loss(outputs["aux"], target)
            total = total + self.aux_weight * aux
            parts["aux"] = aux.detach()
        return total, parts

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels for {self.num_classes} classes")
        if self.multilabel:
            return self.loss(logits, target)
        _check(logits, target)
        if self.num_classes == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # (B, 2, H, W): (0, z)
        return self.loss(logits, target)


def build_criterion(
    cfg: LossConfig,
    num_classes: int,
    ignore_index: int,
    class_weights: Tensor | None = None,
    multilabel: bool = False,
    pos_weight: Tensor | None = None,
) -> SegmentationLoss:
    """class_weights: a single-label model's, resolved; pos_weight: a multi-label model's, resolved."""
    if multilabel:
        from deeplab.train.multilabel_losses import multilabel_loss_of

        loss = multilabel_loss_of(cfg, ignore_index, pos_weight)
        return SegmentationLoss(num_classes, ignore_index, cfg.aux_weight, loss, multilabel=True)
    return SegmentationLoss(
        num_classes, ignore_index, cfg.aux_weight, pixel_loss_of(cfg, ignore_index, class_weights)
    )
