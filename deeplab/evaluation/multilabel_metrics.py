"""Metrics of a multi-label model (dataset.multilabel): each class scored on its own, at a threshold.

Per class c, over the (pixel, class) pairs whose truth is not the ignore index, with the prediction
p = [probability > threshold]: TP_c, FP_c, FN_c, TN_c. From them (in float64):

    IoU_c        = TP / (TP + FP + FN)       precision_c = TP / (TP + FP)     recall_c = TP / (TP + FN)
    miou         = mean of IoU_c over the classes with TP + FP + FN > 0
    mean_acc     = mean of recall_c over the classes present in the truth (as mean_acc is for one label:
                   the mean per-class recall)
    pixel_acc    = sum (TP + TN) / sum (TP + FP + FN + TN): the share of (pixel, class) decisions right
    fwiou        = sum over the classes present of (TP + FN) / sum (TP + FN) * IoU_c

The keys are those of ConfusionMatrix.compute(), so that best.pt, early stopping, the loggers and the Hydra
sweeps read a multi-label run as they read any other; precision, recall and F1 per class come with them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from deeplab.runtime import distributed

COUNT_NAMES = ("true_positive", "false_positive", "false_negative", "true_negative")


class MultiLabelMetrics:
    """Accumulates (num_classes, 4) int64 counts TP, FP, FN, TN on the device of its inputs."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, 4, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred (B, C, H, W) bool (probability above the threshold), target (B, C, H, W) of 0 / 1 / ignore."""
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != self.num_classes:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, {self.num_classes}, H, W)"
            )
        target = target.to(self.counts.device)
        pred = pred.to(self.counts.device, torch.bool)
        valid = target != self.ignore_index
        truth = target == 1
        dims = (0, 2, 3)
        self.counts[:, 0] += (pred & truth & valid).sum(dims)
        self.counts[:, 1] += (pred & ~truth & valid).sum(dims)
        self.counts[:, 2] += (~pred & truth & valid).sum(dims)
        self.counts[:, 3] += (~pred & ~truth & valid).sum(dims)

    def reset(self) -> None:
        self.counts.zero_()

    def all_reduce(self) -> MultiLabelMetrics:
        """Sum the counts over all ranks when torch.distributed is initialised (once per evaluation)."""
        distributed.all_reduce_sum(self.counts)
        return self

    def compute(self) -> dict[str, Any]:
        return metrics_from_counts(self.counts)


def metrics_from_counts(counts: Tensor) -> dict[str, Any]:
    """The module's metrics of (C, 4) counts TP, FP, FN, TN; undefined per-class values are NaN."""
    c = counts.detach().to("cpu", torch.float64)
    tp, fp, fn, tn = c.unbind(1)
    nan = torch.tensor(float("nan"), dtype=torch.float64)

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), nan)

    iou, precision, recall = ratio(tp, tp + fp + fn), ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    present, seen = (tp + fn) > 0, (tp + fp + fn) > 0
    total = c.sum()
    return {
        "pixel_acc": float((tp + tn).sum() / total) if total > 0 else 0.0,
        "mean_acc": float(recall[present].mean()) if present.any() else 0.0,
        "miou": float(iou[seen].mean()) if seen.any() else 0.0,
        "fwiou": float(((tp + fn)[present] / (tp + fn).sum() * iou[present]).sum()) if present.any() else 0.0,
        "iou_per_class": iou.tolist(),
        "precision_per_class": precision.tolist(),
        "recall_per_class": recall.tolist(),
        "f1_per_class": f1.tolist(),
    }
