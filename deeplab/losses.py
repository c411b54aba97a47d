"""Training loss: pixel-wise cross-entropy (BCE for one class) with an ignore index and an aux term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SegmentationLoss(nn.Module):
    """Mean loss over the non-ignored pixels of the whole batch, plus aux_weight * the aux head's loss."""

    def __init__(self, num_classes: int, ignore_index: int = 255, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """outputs["out"] (and "aux"): (B, C, H, W) logits; target: (B, H, W) labels -> (total, parts)."""
        main = self.pixel_loss(outputs["out"], target)
        total = main
        parts = {"main": main.detach()}
        if "aux" in outputs:
            aux = self.pixel_loss(outputs["aux"], target)
            total = total + self.aux_weight * aux
            parts["aux"] = aux.detach()
        return total, parts

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Sum of per-pixel losses divided once by the number of valid pixels in the batch."""
        if logits.ndim != 4 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
            raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels for {self.num_classes} classes")
        target = target.long()
        valid = target != self.ignore_index  # (B, H, W)
        # Clamped so that a batch with no valid pixel gives 0 (with a graph), not 0/0 = NaN.
        count = valid.sum().clamp(min=1)
        if self.num_classes == 1:
            # One foreground channel: target 1 is the class, 0 background; ignored pixels masked out.
            per_pixel = F.binary_cross_entropy_with_logits(
                logits[:, 0].float(), (target == 1).float(), reduction="none"
            )
            total = torch.where(valid, per_pixel, 0.0).sum()
        else:
            # The same value as reduction="mean" (no class weights), which would be NaN for no valid pixel.
            total = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="sum")
        return total / count
