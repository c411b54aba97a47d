"""torchvision's MobileNetV2 and MobileNetV3-Large as dilated feature extractors.

MobileNetV2 (Sandler et al. 2018) stops at its 320-channel block, as VainF's DeepLabV3Plus-MobileNet does
(the final 1x1 conv to 1280 channels is the classifier's). MobileNetV3-Large (Howard et al. 2019) keeps all
of torchvision's `features`, as torchvision's deeplabv3_mobilenet_v3_large does, and reads the auxiliary
features where it does (the first block at stride 8).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large

from deeplab.models.backbone import Backbone


def _spatial_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]


class MobileNetBackbone(Backbone):
    """MobileNet features with a settable output stride (16 or 8) and stride-4 low-level features."""

    def __init__(self, features: nn.Sequential, output_stride: int = 16) -> None:
        super().__init__()
        self.features = features
        # The stride-2 convolutions of each block, recorded before any dilation.
        self._strided = [[c for c in _spatial_convs(b) if c.stride == (2, 2)] for b in features]
        downsampling = [i for i, convs in enumerate(self._strided) if convs]
        # Stages start at the downsampling blocks: the stem (stride 2), then strides 4, 8, 16, 32.
        self.low_pos = downsampling[2] - 1  # the last block at stride 4
        self.aux_pos = downsampling[2]  # the first block at stride 8 (torchvision's choice)
        self.low_channels = _out_channels(features[self.low_pos])
        self.aux_channels = _out_channels(features[self.aux_pos])
        self.out_channels = _out_channels(features[-1])
        self.output_stride = output_stride
        self.set_output_stride(output_stride)

    ignored_prefixes: tuple[str, ...] = ("classifier.",)  # of torchvision's ImageNet weights

    @classmethod
    def build(cls, name: str, output_stride: int) -> MobileNetBackbone:
        if name == "mobilenet_v2":
            backbone = cls(mobilenet_v2(weights=None).features[:-1], output_stride)
            backbone.ignored_prefixes = ("classifier.", "features.18.")  # the 1280-channel conv, not used
            return backbone
        if name == "mobilenet_v3_large":
            return cls(mobilenet_v3_large(weights=None).features, output_stride)
        raise ValueError(f"unknown MobileNet {name!r}")

    def set_output_stride(self, output_stride: int) -> None:
        """Past `output_stride`, strided convs keep stride 1 and every spatial conv from there on is dilated
        by the stride given up (the strided block too, as torchvision's dilated MobileNetV3 does)."""
        reached, rate = 1, 1
        for block, strided in zip(self.features, self._strided):
            dilated = bool(strided) and reached * 2 > output_stride
            if dilated:
                rate *= 2
            elif strided:
                reached *= 2
            for conv in strided:
                conv.stride = (1, 1) if dilated else (2, 2)
            for conv in _spatial_convs(block):
                k = conv.kernel_size[0]
                conv.dilation = (rate, rate)
                conv.padding = (rate * (k - 1) // 2, rate * (k - 1) // 2)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.low_pos:
                features["low"] = x  # (B, 24, H/4, W/4)
            if i == self.aux_pos:
                features["aux"] = x  # (B, 32 or 40, H/8, W/8)
        features["out"] = x  # (B, 320 or 960, H/OS, W/OS)
        return features


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
