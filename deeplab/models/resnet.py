"""torchvision ResNets (bottleneck: 50, 101, the tiny test network; basic blocks: 18, 34) as dilated feature
extractors with a settable output stride and multi-grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.resnet import BasicBlock, Bottleneck

from deeplab.models.backbone import OUTPUT_STRIDES, Backbone

DILATION_STYLES = ("deeplab", "torchvision")


def resnet_tiny() -> nn.Module:
    """A narrow bottleneck ResNet with torchvision's module names: stem 8 channels, bottleneck widths
    4/8/16/32 (outputs 16/32/64/128 channels), units (1, 1, 1, 3), so layer4 still takes a multi-grid.

    For tests and smoke runs: every code path of ResNet-50 (dilation, multi-grid, low-level and aux
    features) at about 0.1M parameters.
    """
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(8)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    channels = 8
    for index, (width, units, stride) in enumerate(zip((4, 8, 16, 32), (1, 1, 1, 3), (1, 2, 2, 2))):
        blocks = []
        for unit in range(units):
            s = stride if unit == 0 else 1
            downsample = None
            if s != 1 or channels != width * Bottleneck.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, width * Bottleneck.expansion, 1, stride=s, bias=False),
                    nn.BatchNorm2d(width * Bottleneck.expansion),
                )
            blocks.append(Bottleneck(channels, width, s, downsample))
            channels = width * Bottleneck.expansion
        setattr(net, f"layer{index + 1}", nn.Sequential(*blocks))
    return net


RESNETS = {
    "resnet_tiny": resnet_tiny,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}


def _atrous_convs(unit: nn.Module) -> list[nn.Conv2d]:
    """The 3x3 convs of a unit that dilation applies to: a bottleneck's conv2, a basic block's two."""
    return [unit.conv2] if isinstance(unit, Bottleneck) else [unit.conv1, unit.conv2]


def _strided_conv(unit: nn.Module) -> nn.Conv2d:
    """Where torchvision puts a unit's stride: a bottleneck's conv2 (ResNet v1.5), a basic block's conv1."""
    return unit.conv2 if isinstance(unit, Bottleneck) else unit.conv1


def _out_channels(unit: nn.Module) -> int:
    return unit.conv3.out_channels if isinstance(unit, Bottleneck) else unit.conv2.out_channels


def unit_rates(
    output_stride: int, multi_grid: Sequence[int], dilation_style: str, units: Sequence[int]
) -> dict[str, list[int]]:
    """Atrous rate of the 3x3 conv of every unit of layer3 and layer4, e.g. {"layer4": [2, 4, 8], ...}.

    `units` holds the number of units of layer3 and layer4. "deeplab" style gives every unit of a dilated
    layer that layer's rate (layer4's three units multiplied by the multi-grid, arXiv 1706.05587 Sec. 3.2);
    "torchvision" style reproduces `replace_stride_with_dilation`: the first unit of a dilated layer keeps
    the rate of the layer before it.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if dilation_style not in DILATION_STYLES:
        raise ValueError(f"dilation style must be one of {DILATION_STYLES}, got {dilation_style!r}")
    layer_rate = {"layer3": 2 if output_stride == 8 else 1, "layer4": 4 if output_stride == 8 else 2}
    previous = {"layer3": 1, "layer4": layer_rate["layer3"]}
    rates = {}
    for name, n in zip(("layer3", "layer4"), units):
        first = (
            previous[name] if dilation_style == "torchvision" and layer_rate[name] > 1 else layer_rate[name]
        )
        rates[name] = [first] + [layer_rate[name]] * (n - 1)
    if len(multi_grid) != len(rates["layer4"]):
        raise ValueError(
            f"multi-grid needs {len(rates['layer4'])} values (one per layer4 unit), got {multi_grid}"
        )
    rates["layer4"] = [r * g for r, g in zip(rates["layer4"], multi_grid)]
    return rates


class ResNetBackbone(Backbone):
    """ResNet (He et al. 2016) without avgpool/fc, layer3/layer4 dilated for output stride 16 or 8 (arXiv 1706.05587).

    Takes a torchvision ResNet (or resnet_tiny()); submodule names equal torchvision's, so a torchvision
    ResNet state dict (minus fc.*) loads 1:1. torchvision's own replace_stride_with_dilation refuses basic
    blocks; here both 3x3 convs of a basic block take the unit's rate.
    """

    ignored_prefixes = ("fc.",)  # parts of torchvision's ImageNet weights the backbone does not have

    def __init__(
        self,
        resnet: nn.Module,
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 2, 4),
        dilation_style: str = "deeplab",
    ) -> None:
        super().__init__()
        if not all(isinstance(unit, Bottleneck | BasicBlock) for unit in (*resnet.layer3, *resnet.layer4)):
            raise TypeError("the backbone must be a torchvision ResNet (bottleneck or basic blocks)")
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.multi_grid = tuple(int(g) for g in multi_grid)
        self.dilation_style = dilation_style
        self.low_channels = _out_channels(self.layer1[-1])  # 256 in ResNet-50/101, 64 in ResNet-18/34
        self.aux_channels = _out_channels(self.layer3[-1])  # 1024, 256
        self.out_channels = _out_channels(self.layer4[-1])  # 2048, 512
        self.output_stride = output_stride
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate layer3/layer4 in place (the weights are untouched): OS 16 or 8."""
        rates = unit_rates(
            output_stride, self.multi_grid, self.dilation_style, (len(self.layer3), len(self.layer4))
        )
        for name, layer_rates in rates.items():
            layer: nn.Sequential = getattr(self, name)
            # A dilated layer keeps the resolution: its first unit's stride 2 becomes 1 (and back).
            # layer4 is dilated at both output strides, layer3 only at 8.
            stride = 2 if name == "layer3" and output_stride == 16 else 1
            first = layer[0]
            _strided_conv(first).stride = (stride, stride)
            if first.downsample is not None:
                first.downsample[0].stride = (stride, stride)
            for unit, rate in zip(layer, layer_rates):
                for conv in _atrous_convs(unit):
                    conv.dilation = (rate, rate)
                    conv.padding = (rate, rate)  # a 3x3 conv with dilation r keeps the size with padding r
        self.output_stride = output_stride

    @classmethod
    def build(
        cls,
        name: str,
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 2, 4),
        dilation_style: str = "deeplab",
    ) -> ResNetBackbone:
        """A randomly initialised ResNet backbone (torchvision's initialisation); weights are loaded separately."""
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(RESNETS)}")
        resnet = RESNETS[name]() if name == "resnet_tiny" else RESNETS[name](weights=None)
        return cls(resnet, output_stride, multi_grid, dilation_style)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        low = self.layer1(x)  # (B, 256, H/4, W/4); 64 channels in ResNet-18/34
        aux = self.run_units(self.layer3, self.layer2(low))  # (B, 1024, H/OS', W/OS'), OS' = 16 or 8
        out = self.run_units(self.layer4, aux)  # (B, 2048, H/OS, W/OS)
        return {"low": low, "aux": aux, "out": out}
