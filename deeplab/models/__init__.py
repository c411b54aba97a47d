"""build_model(cfg): the one place where the model and backbone config nodes become modules."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
)

from deeplab.artifacts.checkpoint import load_file
from deeplab.config import (
    BackboneConfig,
    MobileNetConfig,
    ModelConfig,
    ResNetConfig,
    TimmConfig,
    TrainConfig,
    default_aspp_rates,
    train_config,
)
from deeplab.models.aspp import ASPP
from deeplab.models.backbone import Backbone
from deeplab.models.deeplab import DeepLab
from deeplab.models.heads import DeepLabV3Head, DeepLabV3PlusDecoder, FCNHead
from deeplab.models.input_channels import widen_input
from deeplab.models.mobilenet import MobileNetBackbone
from deeplab.models.pretrained import (
    convert_torchvision_state_dict,
    download_weights,
    imagenet_weights,
    load_backbone_state,
    load_torchvision_deeplabv3,
)
from deeplab.models.resnet import ResNetBackbone
from deeplab.models.timm_backbone import TimmBackbone

__all__ = [
    "ASPP",
    "Backbone",
    "DeepLab",
    "DeepLabV3Head",
    "DeepLabV3PlusDecoder",
    "FCNHead",
    "MobileNetBackbone",
    "ResNetBackbone",
    "TimmBackbone",
    "build_architecture",
    "build_backbone",
    "build_model",
    "build_network",
    "convert_torchvision_state_dict",
    "load_torchvision_deeplabv3",
]

log = logging.getLogger(__name__)

DEEPLABV3_WEIGHTS = {
    "resnet50": DeepLabV3_ResNet50_Weights,
    "resnet101": DeepLabV3_ResNet101_Weights,
    "mobilenet_v3_large": DeepLabV3_MobileNet_V3_Large_Weights,
}


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """A randomly initialised backbone (its library's initialisation; a timm encoder with cfg.pretrained loads
    timm's weights as it builds); other weights are loaded separately."""
    if isinstance(cfg, ResNetConfig):
        return ResNetBackbone.build(cfg.name, cfg.output_stride, cfg.multi_grid, cfg.dilation_style)
    if isinstance(cfg, MobileNetConfig):
        return MobileNetBackbone.build(cfg.name, cfg.output_stride)
    return TimmBackbone(cfg.model, cfg.output_stride, cfg.pretrained)


def build_network(cfg: TrainConfig) -> DeepLab:
    """The randomly initialised model of a validated config (torchvision's initialisation in the backbone)."""
    return build_architecture(cfg.model, cfg.backbone, cfg.dataset.num_classes)


def build_architecture(m: ModelConfig, b: BackboneConfig, num_classes: int) -> DeepLab:
    """The randomly initialised model of the architecture sections (a timm backbone with b.pretrained loads
    its weights as it builds)."""
    backbone = build_backbone(b)
    rates = m.aspp.rates or default_aspp_rates(b.output_stride)
    aspp = ASPP(
        backbone.out_channels, rates, m.aspp.channels, m.aspp.image_pooling, m.aspp.separable, m.aspp.dropout
    )
    head: DeepLabV3Head | DeepLabV3PlusDecoder
    if m.decoder.enabled:
        d = m.decoder
        head = DeepLabV3PlusDecoder(
            aspp, backbone.low_channels, num_classes, d.low_level_channels, d.channels, d.separable
        )
    else:
        head = DeepLabV3Head(aspp, num_classes, m.head_conv)
    aux_head = FCNHead(backbone.aux_channels, num_classes) if m.aux_head else None
    return DeepLab(backbone, head, aux_head)


def build_model(cfg: TrainConfig | DictConfig) -> DeepLab:
    """The model a train config describes, with the pretrained weights it asks for (on the CPU), its first
    convolution widened to dataset.in_channels (the RGB filters kept)."""
    cfg = train_config(cfg)
    model = _build_rgb_model(cfg)
    if cfg.dataset.in_channels != 3:
        widen_input(model.backbone, cfg.dataset.in_channels)
    return model


def _build_rgb_model(cfg: TrainConfig) -> DeepLab:
    b, m = cfg.backbone, cfg.model
    # Weights are fetched before the network is built, so a missing file fails at once.
    if m.pretrained is not None:
        # The whole network comes from torchvision's DeepLabv3 weights: no ImageNet download needed.
        if m.pretrained == "torchvision":
            weights = DEEPLABV3_WEIGHTS[b.name].COCO_WITH_VOC_LABELS_V1
            state, source = download_weights(weights, "model.pretrained"), weights.url
        else:
            state, source = (
                load_file(m.pretrained, "model.pretrained"),
                f"model.pretrained file {m.pretrained}",
            )
        model = build_network(cfg)
        load_torchvision_deeplabv3(model, state, source)
        log.info("loaded torchvision DeepLabv3 weights from %s", source)
        return model
    if b.pretrained is False or isinstance(b, TimmConfig):  # timm loads its weights as it builds
        return build_network(cfg)
    if b.pretrained is True:
        weights = imagenet_weights(b.name, b.weights)
        state, source = download_weights(weights, "backbone.pretrained"), weights.url
    else:
        state, source = (
            load_file(b.pretrained, "backbone.pretrained"),
            f"backbone.pretrained file {b.pretrained}",
        )
    model = build_network(cfg)
    load_backbone_state(model.backbone, state, source, b.name)
    log.info("loaded %s weights from %s", b.name, source)
    return model
