"""The collapse warning: a model that predicts one class nearly everywhere (usually the background).

The rule: one class takes at least COLLAPSE_SHARE (90%) of the predicted pixels, and the other classes
together get under OTHERS_KEPT (a third) of the pixels they hold in the truth. It contains the rule "90%
predicted while the truth has under 60%" (then the others hold over 40% and get at most 10%) and also catches
VOC's collapse to the background (70% of the true pixels, 99% of the predicted ones), without warning about
a model that is right about a class that truly covers 95% of the pixels.

It is checked at each validation (from the confusion matrix) and at the first CHECKED_BOUNDARIES log
boundaries of training, from the training batches' own predictions, counted on the device (no host sync
per step) and summed over DDP ranks with the boundary's named sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

COLLAPSE_SHARE = 0.9
OTHERS_KEPT = 1 / 3
CHECKED_BOUNDARIES = 3


CLASS_REMEDY = (
    "weight the classes (loss.class_weights=auto) or draw images of the rare classes more often "
    "(dataset.sampler=rare_class); if the model trained only briefly from random weights, BatchNorm's running "
    "statistics may lag its weights instead (trainer.precise_bn)"
)


STATISTICS_REMEDY = "weighting the classes would not help: BatchNorm's running statistics lag the weights (see the next warning)"


def collapse_warning(
    predicted: Sequence[float], true: Sequence[float], names: Sequence[str], remedy: str = CLASS_REMEDY
) -> str | None:
    """One line naming the collapsed class, its two shares and the remedy, or None. predicted/true: pixels per
    class (over the pixels scored: the ignore index not counted)."""
    pred, truth = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    if pred.sum() <= 0 or truth.sum() <= 0:
        return None
    pred_share, true_share = pred / pred.sum(), truth / truth.sum()
    c = int(pred_share.argmax())
    if pred_share[c] < COLLAPSE_SHARE or 1 - pred_share[c] >= OTHERS_KEPT * (1 - true_share[c]):
        return None
    return (
        f"the model predicts class {names[c]!r} for {pred_share[c]:.1%} of the pixels, where the truth has "
        f"{true_share[c]:.1%}: it is collapsing to one class; {remedy}"
    )


def matrix_warning(
    matrix: Tensor | np.ndarray, names: Sequence[str], remedy: str = CLASS_REMEDY
) -> str | None:
    """collapse_warning of a confusion matrix (rows = truth, columns = prediction)."""
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    return collapse_warning(m.sum(0).tolist(), m.sum(1).tolist(), names, remedy)


class CollapseWatch:
    """Predicted and true pixels per class of the training batches, at the first log boundaries only."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device,
                 boundaries: int = CHECKED_BOUNDARIES) -> None:  # fmt: skip
        self.num_classes = max(num_classes, 2)  # a one-logit model predicts background or foreground
        self.ignore_index = ignore_index
        self.left = boundaries
        self.counts = torch.zeros(2, self.num_classes, dtype=torch.int64, device=device)  # predicted, true

    def add(self, logits: Tensor, target: Tensor) -> None:
        """logits (B, C, H, W) at the target's size, target (B, H, W): count its valid pixels (no sync)."""
        if self.left <= 0:
            return
        with torch.no_grad():
            pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
            valid = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
            ones = valid.reshape(-1).long()
            self.counts[0].scatter_add_(0, torch.where(valid, pred, 0).reshape(-1), ones)
            self.counts[1].scatter_add_(0, torch.where(valid, target.long(), 0).reshape(-1), ones)

    def named(self) -> dict[str, Tensor]:
        """The counts as named values for distributed.sum_over_ranks (none once the checks are done)."""
        if self.left <= 0:
            return {}
        return {f"{kind}_pixels/{c}": self.counts[k, c] for k, kind in enumerate(("predicted", "true"))
                for c in range(self.num_classes)}  # fmt: skip

    def boundary(self, total: Mapping[str, float], names: Sequence[str]) -> str | None:
        """At a log boundary, with the counts summed over the ranks: the warning, or None. After a warning or
        the last checked boundary, nothing more is counted."""
        if self.left <= 0:
            return None
        n = self.num_classes
        warning = collapse_warning(
            [total[f"predicted_pixels/{c}"] for c in range(n)],
            [total[f"true_pixels/{c}"] for c in range(n)],
            names,
        )
        self.left = 0 if warning else self.left - 1
        self.counts.zero_()
        return warning
