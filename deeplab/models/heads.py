"""Segmentation heads on backbone features: DeepLabv3 head, DeepLabv3+ decoder, auxiliary FCN head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.models.aspp import ASPP, ConvBNReLU, SeparableConvBNReLU


class DeepLabV3Head(nn.Module):
    """DeepLabv3 head (arXiv 1706.05587 Sec. 3.3): ASPP, an optional 3x3 conv (torchvision's variant), 1x1 logits."""

    def __init__(self, aspp: ASPP, num_classes: int, head_conv: bool = False) -> None:
        super().__init__()
        self.aspp = aspp
        channels = aspp.out_channels
        self.conv = ConvBNReLU(channels, channels, 3) if head_conv else None
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.aspp(features["out"])  # (B, 256, H/OS, W/OS)
        if self.conv is not None:
            x = self.conv(x)
        return self.classifier(x)  # (B, num_classes, H/OS, W/OS)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+ head (arXiv 1802.02611 Sec. 3.1, Fig. 2): ASPP, then a decoder refining with stride-4 features."""

    def __init__(
        self,
        aspp: ASPP,
        low_channels: int,
        num_classes: int,
        low_level_channels: int = 48,
        channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = aspp
        # Few low-level channels (48) so they do not outweigh the encoder's features (paper Table 1).
        self.reduce = ConvBNReLU(low_channels, low_level_channels, 1)
        conv = SeparableConvBNReLU if separable else ConvBNReLU
        self.fuse = nn.Sequential(
            conv(aspp.out_channels + low_level_channels, channels, 3),
            conv(channels, channels, 3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.reduce(features["low"])  # (B, 48, H/4, W/4)
        x = self.aspp(features["out"])  # (B, 256, H/OS, W/OS)
        # Upsample to the exact low-level size (x4 at OS 16, x2 at OS 8; odd sizes round differently).
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, low], dim=1))  # (B, 304, H/4, W/4) -> (B, 256, H/4, W/4)
        return self.classifier(x)  # (B, num_classes, H/4, W/4)


class FCNHead(nn.Sequential):
    """Auxiliary head on layer3 (torchvision's FCNHead layout): 3x3 conv to C/4 + BN + ReLU + dropout, 1x1 logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )
