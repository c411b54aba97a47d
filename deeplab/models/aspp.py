"""Atrous Spatial Pyramid Pooling (DeepLabv3, arXiv 1706.05587 Sec. 3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.errors import ConfigError


class ConvBNReLU(nn.Sequential):
    """Conv (no bias, BN follows) + BatchNorm + ReLU; a 3x3 conv is padded by its dilation to keep the size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Atrous separable conv (DeepLabv3+, arXiv 1802.02611 Sec. 3.1): depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ImagePooling(nn.Sequential):
    """Image-level features (arXiv 1706.05587 Sec. 3.3): global average pool, 1x1 conv + BN + ReLU, upsampled back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = super().forward(x)  # (B, C, 1, 1)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """ASPP (arXiv 1706.05587 Sec. 3.3): 1x1 conv, one 3x3 atrous conv per rate, image pooling, concat, 1x1 projection.

    The layout (`convs` = [1x1, atrous..., pooling], `project`) matches torchvision's ASPP, so its state
    dict loads unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: Sequence[int],
        out_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        atrous = SeparableConvBNReLU if separable else ConvBNReLU
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [atrous(in_channels, out_channels, 3, int(rate)) for rate in atrous_rates]
        if image_pooling:
            branches.append(ImagePooling(in_channels, out_channels))
        self.num_atrous = len(atrous_rates)
        self.out_channels = out_channels
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def _atrous_convs(self) -> list[nn.Conv2d]:
        # The first layer of each atrous branch (plain or depthwise) is its dilated 3x3 conv.
        return [branch[0] for branch in self.convs[1 : 1 + self.num_atrous]]

    @property
    def rates(self) -> list[int]:
        return [conv.dilation[0] for conv in self._atrous_convs()]

    def set_rates(self, rates: Sequence[int]) -> None:
        """Change the atrous rates in place (weights untouched), e.g. doubled when the output stride goes 16 -> 8."""
        if len(rates) != self.num_atrous or not all(isinstance(r, int) and r > 0 for r in rates):
            raise ConfigError(f"ASPP needs {self.num_atrous} positive integer rates, got {list(rates)}")
        for conv, rate in zip(self._atrous_convs(), rates):
            conv.dilation = (rate, rate)
            conv.padding = (rate, rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, h, w) -> each branch (B, C, h, w) -> concat (B, n*C, h, w) -> (B, C, h, w)
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
