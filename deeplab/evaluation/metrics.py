"""Segmentation metrics from one confusion matrix: pixel acc, mean acc, IoU, mIoU, FWIoU.

The matrix M has rows = ground truth and columns = prediction, so M[t, p] counts pixels of class t
predicted as p. Pixels whose target is the ignore index are not counted. From M (all in float64):

    pixel_acc = trace(M) / sum(M)
    mean_acc  = mean over classes with rowsum > 0 of diag / rowsum
    IoU_c     = diag_c / (rowsum_c + colsum_c - diag_c)
    miou      = mean of IoU_c over classes with rowsum_c + colsum_c > 0
    fwiou     = sum over classes of (rowsum_c / sum(M)) * IoU_c

A class absent from both truth and prediction has no IoU (NaN) and is left out of the means rather
than counted as 0 or 1. A class predicted but never present in the truth has IoU 0 and counts in
miou (its false positives are real errors).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deeplab.jsonfile import write_json
from deeplab.runtime import distributed

METRIC_NAMES = ("pixel_acc", "mean_acc", "miou", "fwiou")


class ConfusionMatrix:
    """Accumulates a (num_classes, num_classes) int64 confusion matrix on the device of its inputs."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # With device=None the matrix moves to the device of the first update.
        self._device_fixed = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count pixels of integer label tensors of the same shape (e.g. (B, H, W)); no host sync."""
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer label tensors (argmax of the logits)")
        if not self._device_fixed:
            self.matrix = self.matrix.to(target.device)
            self._device_fixed = True
        n = self.num_classes
        pred = pred.reshape(-1).to(self.device, torch.int64)
        target = target.reshape(-1).to(self.device, torch.int64)
        # Ignored pixels are dropped. Labels outside [0, n) cannot occur after the dataset's mask checks;
        # they are dropped too, so that they can never land in another class's cell. Checking them here
        # would need a host sync.
        valid = (target != self.ignore_index) & (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
        cells = torch.where(valid, target * n + pred, 0)
        # scatter_add_ rather than torch.bincount: on CUDA, bincount reads the input's min and max back
        # to the host to size its output (a sync per batch); here the size is known. On a 1-D CUDA tensor
        # scatter_add_ is also deterministic under torch.use_deterministic_algorithms.
        self.matrix.view(-1).scatter_add_(0, cells, valid.to(torch.int64))

    def reset(self) -> None:
        self.matrix.zero_()

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ranks when torch.distributed is initialised (call once per evaluation)."""
        distributed.all_reduce_sum(self.matrix)
        return self

    def compute(self) -> dict[str, Any]:
        """Return pixel_acc, mean_acc, miou, fwiou (floats in [0, 1]) and iou_per_class (NaN: absent)."""
        return metrics_from_matrix(self.matrix)


def metrics_from_matrix(matrix: Tensor) -> dict[str, Any]:
    """The four metrics and per-class IoU of a confusion matrix (rows = truth), computed in float64."""
    m = matrix.detach().to("cpu", torch.float64)
    total = m.sum()
    diag = m.diagonal()
    rows = m.sum(dim=1)  # pixels of each class in the truth
    cols = m.sum(dim=0)  # pixels predicted as each class
    union = rows + cols - diag
    nan = torch.tensor(float("nan"), dtype=torch.float64)

    iou = torch.where(union > 0, diag / union.clamp(min=1), nan)
    in_truth = rows > 0
    seen = union > 0
    if total == 0:  # nothing counted yet: report zeros instead of dividing by zero
        return {
            "pixel_acc": 0.0,
            "mean_acc": 0.0,
            "miou": 0.0,
            "fwiou": 0.0,
            "iou_per_class": iou.tolist(),
        }
    class_acc = diag[in_truth] / rows[in_truth]
    return {
        "pixel_acc": float(diag.sum() / total),
        "mean_acc": float(class_acc.mean()),
        "miou": float(iou[seen].mean()),
        # Classes absent from the truth have weight 0; NaN IoUs only occur there.
        "fwiou": float((rows[in_truth] / total * iou[in_truth]).sum()),
        "iou_per_class": iou.tolist(),
    }


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """A copy of a metrics dict with NaN replaced by None, so json.dump writes valid JSON (null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return clean(metrics)


def format_table(metrics: dict[str, Any], class_names: list[str], title: str = "") -> str:
    """Per-class IoU and the four metrics as a text table, in percent with two decimals, under `title` (what
    was scored: the iteration and checkpoint). A multi-label model's table adds precision and recall."""
    ious = metrics["iou_per_class"]
    if len(class_names) != len(ious):
        raise ValueError(f"{len(class_names)} class names for {len(ious)} classes")
    labels = {"pixel_acc": "pixel acc", "mean_acc": "mean acc", "miou": "mIoU", "fwiou": "FWIoU"}
    width = max([len(name) for name in class_names] + [len(v) for v in labels.values()] + [5])
    extra = [k for k in ("precision_per_class", "recall_per_class") if k in metrics]

    def pct(value: float | None) -> str:
        if value is None or math.isnan(value):
            return "-".rjust(7)  # class absent from truth and prediction
        return f"{100.0 * value:7.2f}"

    heads = ["IoU %", *({"precision_per_class": "prec. %", "recall_per_class": "recall %"}[k] for k in extra)]
    rule = "-" * (width + 9 * len(heads))  # a column: 7 characters and 2 of space
    lines = [title] if title else []
    lines += [f"{'class'.ljust(width)}  {'  '.join(h.rjust(7) for h in heads)}", rule]
    for c, name in enumerate(class_names):
        values = [ious[c], *(metrics[k][c] for k in extra)]
        lines.append(f"{name.ljust(width)}  {'  '.join(pct(v) for v in values)}")
    lines.append(rule)
    lines += [f"{labels[key].ljust(width)}  {pct(metrics[key])}" for key in METRIC_NAMES]
    return "\n".join(lines)


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    """Write metrics as JSON atomically; NaN (a class absent everywhere) becomes null."""
    write_json(path, json_safe(metrics))
