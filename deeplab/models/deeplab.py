"""DeepLab: backbone + head (+ auxiliary head), logits at the input's size."""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.errors import ConfigError
from deeplab.models.backbone import OUTPUT_STRIDES, Backbone
from deeplab.models.heads import DeepLabV3Head, DeepLabV3PlusDecoder


class DeepLab(nn.Module):
    """DeepLabv3 (arXiv 1706.05587) or DeepLabv3+ (arXiv 1802.02611), depending on the head."""

    def __init__(
        self,
        backbone: Backbone,
        head: DeepLabV3Head | DeepLabV3PlusDecoder,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone  # the optimiser treats every other parameter as "head"
        self.head = head
        self.aux_head = aux_head

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate the backbone and rescale the ASPP rates in place, keeping the weights (e.g. train 16, eval 8)."""
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        factor = Fraction(self.output_stride, output_stride)
        rates = [rate * factor for rate in self.head.aspp.rates]
        if any(rate.denominator != 1 for rate in rates):
            raise ConfigError(
                f"ASPP rates {self.head.aspp.rates} at output stride {self.output_stride} have no integer "
                f"equivalent at output stride {output_stride}; choose rates divisible by 2"
            )
        self.backbone.set_output_stride(output_stride)
        self.head.aspp.set_rates([int(rate) for rate in rates])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)  # low (B, C_low, H/4, W/4), aux (B, C_aux, ...), out (B, C, H/OS, W/OS)
        logits = self.head(features)
        result = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result
