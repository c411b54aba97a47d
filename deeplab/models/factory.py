"""Models without a config, as torchvision's `deeplabv3_resnet50(weights=, num_classes=)` and SMP's
`DeepLabV3Plus(encoder_name=)` build them; build_model(cfg) passes a config's values to these functions.

    from deeplab.models import deeplabv3plus
    model = deeplabv3plus("resnet50", num_classes=21, output_stride=16, pretrained=True)
    logits = model(images)["out"]   # images (B, 3, H, W) normalised with ImageNet's mean and std
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from deeplab.artifacts.checkpoint import load_file
from deeplab.config.model import default_aspp_rates
from deeplab.models.aspp import ASPP
from deeplab.models.backbone import Backbone
from deeplab.models.deeplab import DeepLab
from deeplab.models.heads import DeepLabV3Head, DeepLabV3PlusDecoder, FCNHead
from deeplab.models.input_channels import widen_input
from deeplab.models.mobilenet import MobileNetBackbone
from deeplab.models.pretrained import download_weights, imagenet_weights, load_backbone_state
from deeplab.models.resnet import ResNetBackbone
from deeplab.models.timm_backbone import TimmBackbone

log = logging.getLogger(__name__)

RESNETS = ("resnet_tiny", "resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v2", "mobilenet_v3_large")
# torchvision's ImageNet weights of each backbone (configs/backbone/*.yaml, backbone.weights)
IMAGENET_WEIGHTS = {
    "resnet18": "IMAGENET1K_V1", "resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2",
    "resnet101": "IMAGENET1K_V2", "mobilenet_v2": "IMAGENET1K_V1", "mobilenet_v3_large": "IMAGENET1K_V1",
}  # fmt: skip


def backbone(
    name: str,
    output_stride: int = 16,
    *,
    multi_grid: Sequence[int] | None = None,
    dilation_style: str = "deeplab",
    pretrained: bool | str = False,
    weights: str | None = None,
) -> Backbone:
    """A dilated feature extractor: torchvision's resnet18/34/50/101 and mobilenet_v2/_v3_large, or any timm
    model with features_only (xception65, tf_efficientnet_lite0, ...; "timm:resnet50" for timm's own ResNet). pretrained: ImageNet weights (True:
    torchvision's `weights`, timm's from the Hugging Face hub or an installed package; a path: that file).
    multi_grid multiplies the rates of a ResNet's last stage: [1, 2, 4] ([1, 2] for ResNet-18's two units)."""
    if name.startswith("timm:"):
        return TimmBackbone(name.removeprefix("timm:"), output_stride, pretrained)
    if name in RESNETS:
        grid = list(multi_grid) if multi_grid is not None else ([1, 2] if name == "resnet18" else [1, 2, 4])
        net: Backbone = ResNetBackbone.build(name, output_stride, grid, dilation_style)
    elif name in MOBILENETS:
        net = MobileNetBackbone.build(name, output_stride)
    else:  # timm loads its own weights as it builds
        return TimmBackbone(name, output_stride, pretrained)
    if pretrained is True:
        state = download_weights(
            imagenet_weights(name, weights or IMAGENET_WEIGHTS[name]), "backbone.pretrained"
        )
        load_backbone_state(net, state, f"torchvision's {name} ImageNet weights", name)
    elif pretrained:
        load_backbone_state(net, load_file(Path(pretrained), "backbone.pretrained"), f"backbone.pretrained file {pretrained}", name)  # fmt: skip
    return net


def assemble(
    net: Backbone,
    num_classes: int,
    *,
    decoder: bool,
    aspp_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    image_pooling: bool = True,
    separable: bool = False,
    dropout: float = 0.1,
    head_conv: bool = False,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
    decoder_separable: bool = False,
    aux_head: bool = False,
) -> DeepLab:
    """DeepLab around a built backbone: ASPP on its output-stride features, the DeepLabv3 head or the v3+
    decoder on its stride-4 features, an optional auxiliary FCN head; channel counts read from the backbone."""
    rates = list(aspp_rates) if aspp_rates else default_aspp_rates(net.output_stride)
    aspp = ASPP(net.out_channels, rates, aspp_channels, image_pooling, separable, dropout)
    head: DeepLabV3Head | DeepLabV3PlusDecoder
    if decoder:
        head = DeepLabV3PlusDecoder(
            aspp, net.low_channels, num_classes, low_level_channels, decoder_channels, decoder_separable
        )
    else:
        head = DeepLabV3Head(aspp, num_classes, head_conv)
    return DeepLab(net, head, FCNHead(net.aux_channels, num_classes) if aux_head else None)


def deeplabv3(
    backbone_name: str = "resnet50",
    num_classes: int = 21,
    *,
    output_stride: int = 16,
    pretrained: bool | str = False,
    in_channels: int = 3,
    multi_grid: Sequence[int] | None = None,
    aspp_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    image_pooling: bool = True,
    separable: bool = False,
    aux_head: bool = False,
) -> DeepLab:
    """DeepLabv3 (Chen et al. 2017, arXiv 1706.05587): a dilated backbone and ASPP (rates 6, 12, 18 at output
    stride 16, doubled at 8). pretrained: the backbone's ImageNet weights; in_channels != 3 widens the first
    convolution (the RGB filters kept, each extra channel their mean). Returns {"out": logits} at the input's
    size (and "aux" while training with aux_head)."""
    net = backbone(backbone_name, output_stride, multi_grid=multi_grid, pretrained=pretrained)
    model = assemble(net, num_classes, decoder=False, aspp_rates=aspp_rates, aspp_channels=aspp_channels,
                     image_pooling=image_pooling, separable=separable, aux_head=aux_head)  # fmt: skip
    if in_channels != 3:
        widen_input(model.backbone, in_channels)
    return model


def deeplabv3plus(
    backbone_name: str = "resnet50",
    num_classes: int = 21,
    *,
    output_stride: int = 16,
    pretrained: bool | str = False,
    in_channels: int = 3,
    multi_grid: Sequence[int] | None = None,
    aspp_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    image_pooling: bool = True,
    separable: bool = False,
    decoder_channels: int = 256,
    low_level_channels: int = 48,
    aux_head: bool = False,
) -> DeepLab:
    """DeepLabv3+ (Chen et al. 2018, arXiv 1802.02611): DeepLabv3 plus a decoder that refines the ASPP output
    with the backbone's stride-4 features (48 channels), two 3x3 convolutions of 256. Arguments as deeplabv3;
    separable: atrous separable convolutions in ASPP and decoder (the paper's Xception variant)."""
    net = backbone(backbone_name, output_stride, multi_grid=multi_grid, pretrained=pretrained)
    model = assemble(net, num_classes, decoder=True, aspp_rates=aspp_rates, aspp_channels=aspp_channels,
                     image_pooling=image_pooling, separable=separable, decoder_channels=decoder_channels,
                     low_level_channels=low_level_channels, decoder_separable=separable, aux_head=aux_head)  # fmt: skip
    if in_channels != 3:
        widen_input(model.backbone, in_channels)
    return model
