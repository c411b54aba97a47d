"""The models: deeplabv3(...) and deeplabv3plus(...) without a config (factory.py), and build_model(cfg), the one
place where the model and backbone config nodes become modules (through the same functions)."""

from __future__ import annotations

import logging

import torch
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
    train_config,
)
from deeplab.models import factory
from deeplab.models.aspp import ASPP
from deeplab.models.backbone import Backbone
from deeplab.models.deeplab import DeepLab
from deeplab.models.factory import deeplabv3, deeplabv3plus
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
    "deeplabv3",
    "deeplabv3plus",
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
        return factory.backbone(
            cfg.name, cfg.output_stride, multi_grid=cfg.multi_grid, dilation_style=cfg.dilation_style
        )
    if isinstance(cfg, MobileNetConfig):
        return factory.backbone(cfg.name, cfg.output_stride)
    return factory.backbone(f"timm:{cfg.model}", cfg.output_stride, pretrained=cfg.pretrained)


def build_network(cfg: TrainConfig) -> DeepLab:
    """The randomly initialised model of a validated config (torchvision's initialisation in the backbone)."""
    return build_architecture(cfg.model, cfg.backbone, cfg.dataset.num_classes)


def build_architecture(m: ModelConfig, b: BackboneConfig, num_classes: int) -> DeepLab:
    """The randomly initialised model of the architecture sections (a timm backbone with b.pretrained loads
    its weights as it builds): deeplab.models.factory with the sections' values."""
    a, d = m.aspp, m.decoder
    return factory.assemble(
        build_backbone(b), num_classes, decoder=d.enabled, aspp_rates=a.rates, aspp_channels=a.channels,
        image_pooling=a.image_pooling, separable=a.separable, dropout=a.dropout, head_conv=m.head_conv,
        low_level_channels=d.low_level_channels, decoder_channels=d.channels, decoder_separable=d.separable,
        aux_head=m.aux_head,
    )  # fmt: skip


def parameter_count(cfg: TrainConfig) -> int:
    """The parameters of the model a validated config describes, counted on the meta device: nothing is
    allocated and no weights are read."""
    bare = cfg.model_copy(deep=True)
    bare.backbone.pretrained = False
    with torch.device("meta"):
        model = build_network(bare)
    return sum(p.numel() for p in model.parameters())


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
