"""build_model(cfg): the one place where the model and backbone config nodes become modules."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, DeepLabV3_ResNet101_Weights

from deeplab.checkpoint import load_file
from deeplab.errors import ConfigError
from deeplab.models.aspp import ASPP
from deeplab.models.backbone import DILATION_STYLES, OUTPUT_STRIDES, RESNETS, ResNetBackbone, build_backbone
from deeplab.models.deeplab import DeepLab
from deeplab.models.heads import DeepLabV3Head, DeepLabV3PlusDecoder, FCNHead
from deeplab.models.pretrained import (
    convert_torchvision_state_dict,
    download_state_dict,
    drop_mismatched_classifiers,
    load_backbone_state,
    load_torchvision_deeplabv3,
)

__all__ = [
    "ASPP",
    "DeepLab",
    "DeepLabV3Head",
    "DeepLabV3PlusDecoder",
    "FCNHead",
    "ModelSettings",
    "ResNetBackbone",
    "build_model",
    "build_model_from_settings",
    "convert_torchvision_state_dict",
    "default_aspp_rates",
    "drop_mismatched_classifiers",
    "load_torchvision_deeplabv3",
    "validate_model_config",
]

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS = {"resnet50": ResNet50_Weights, "resnet101": ResNet101_Weights}
DEEPLABV3_WEIGHTS = {"resnet50": DeepLabV3_ResNet50_Weights, "resnet101": DeepLabV3_ResNet101_Weights}


@dataclass(frozen=True)
class ModelSettings:
    """The validated model/backbone settings of a config, as plain values."""

    num_classes: int
    backbone: str
    output_stride: int
    multi_grid: tuple[int, int, int]
    dilation_style: str
    backbone_pretrained: bool | str  # True: torchvision ImageNet weights; str: local file
    backbone_weights: str
    aspp_rates: tuple[int, ...]  # at `output_stride`
    aspp_channels: int
    image_pooling: bool
    aspp_separable: bool
    aspp_dropout: float
    head_conv: bool
    decoder: bool
    low_level_channels: int
    decoder_channels: int
    decoder_separable: bool
    aux_head: bool
    pretrained: str | None  # None | "torchvision" | path to torchvision's deeplabv3 weights


def default_aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The papers' ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 (arXiv 1706.05587 Sec. 3.3)."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


_ABSENT = object()


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key} is not set (???); set it on the command line, e.g. {key}=...") from None
    if value is _ABSENT:
        raise ConfigError(f"{key} is missing from the config; add it (see configs/ for its default)")
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bool(cfg: DictConfig, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _positive_int(cfg: DictConfig, key: str, hint: str = "") -> int:
    value = _get(cfg, key)
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{key} must be a positive integer{hint}, got {value!r}")
    return value


def _choice(cfg: DictConfig, key: str, choices: tuple) -> Any:
    value = _get(cfg, key)
    if value not in choices or isinstance(value, bool):
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def _int_list(cfg: DictConfig, key: str, length: int | None, example: str) -> tuple[int, ...]:
    value = _get(cfg, key)
    size = f"{length} " if length else ""
    if (
        not isinstance(value, list)
        or not value
        or (length is not None and len(value) != length)
        or not all(_is_int(v) and v > 0 for v in value)
    ):
        raise ConfigError(
            f"{key} must be a list of {size}positive integers, e.g. {key}={example}, got {value!r}"
        )
    return tuple(value)


def validate_model_config(cfg: DictConfig) -> ModelSettings:
    """Read and check every model-related key of a composed train config; a mistake raises ConfigError naming it."""
    num_classes = _positive_int(cfg, "dataset.num_classes", " (1 = binary: one logit channel)")
    backbone = _choice(cfg, "backbone.name", tuple(sorted(RESNETS)))
    output_stride = _choice(cfg, "backbone.output_stride", OUTPUT_STRIDES)
    multi_grid = _int_list(cfg, "backbone.multi_grid", 3, "[1,2,4]")
    dilation_style = _choice(cfg, "backbone.dilation_style", DILATION_STYLES)

    backbone_pretrained = _get(cfg, "backbone.pretrained")
    if not isinstance(backbone_pretrained, (bool, str)) or backbone_pretrained == "":
        raise ConfigError(
            f"backbone.pretrained must be true, false or a path to a .pth file, got {backbone_pretrained!r}"
        )
    weights = _get(cfg, "backbone.weights")
    if backbone_pretrained is True and weights not in IMAGENET_WEIGHTS[backbone].__members__:
        raise ConfigError(
            f"backbone.weights must name torchvision's {IMAGENET_WEIGHTS[backbone].__name__} weights, one of "
            f"{sorted(IMAGENET_WEIGHTS[backbone].__members__)}, got {weights!r}"
        )

    if _get(cfg, "model.aspp.rates") is None:
        rates = default_aspp_rates(output_stride)
    else:
        rates = _int_list(cfg, "model.aspp.rates", None, "[6,12,18]")
    dropout = _get(cfg, "model.aspp.dropout")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.aspp.dropout must be a probability in [0, 1), got {dropout!r}")

    decoder = _bool(cfg, "model.decoder.enabled")
    head_conv = _bool(cfg, "model.head_conv")
    if head_conv and decoder:
        raise ConfigError(
            "model.head_conv (the extra 3x3 conv of torchvision's DeepLabv3 head) cannot be used with "
            "model.decoder.enabled=true; set one of them to false"
        )
    pretrained = _get(cfg, "model.pretrained")
    if pretrained is not None and (not isinstance(pretrained, str) or pretrained == ""):
        raise ConfigError(
            f"model.pretrained must be null, torchvision, or a path to torchvision's deeplabv3 .pth, got {pretrained!r}"
        )

    return ModelSettings(
        num_classes=num_classes,
        backbone=backbone,
        output_stride=output_stride,
        multi_grid=multi_grid,  # type: ignore[arg-type]
        dilation_style=dilation_style,
        backbone_pretrained=backbone_pretrained,
        backbone_weights=str(weights),
        aspp_rates=rates,
        aspp_channels=_positive_int(cfg, "model.aspp.channels"),
        image_pooling=_bool(cfg, "model.aspp.image_pooling"),
        aspp_separable=_bool(cfg, "model.aspp.separable"),
        aspp_dropout=float(dropout),
        head_conv=head_conv,
        decoder=decoder,
        low_level_channels=_positive_int(cfg, "model.decoder.low_level_channels"),
        decoder_channels=_positive_int(cfg, "model.decoder.channels"),
        decoder_separable=_bool(cfg, "model.decoder.separable"),
        aux_head=_bool(cfg, "model.aux_head"),
        pretrained=pretrained,
    )


def build_model_from_settings(s: ModelSettings) -> DeepLab:
    """The randomly initialised model (torchvision's initialisation in the backbone) for validated settings."""
    backbone = build_backbone(s.backbone, s.output_stride, s.multi_grid, s.dilation_style)
    head: DeepLabV3Head | DeepLabV3PlusDecoder
    if s.decoder:
        head = DeepLabV3PlusDecoder(
            backbone.out_channels,
            backbone.low_channels,
            s.num_classes,
            s.aspp_rates,
            s.aspp_channels,
            s.image_pooling,
            s.aspp_separable,
            s.aspp_dropout,
            s.low_level_channels,
            s.decoder_channels,
            s.decoder_separable,
        )
    else:
        head = DeepLabV3Head(
            backbone.out_channels,
            s.num_classes,
            s.aspp_rates,
            s.aspp_channels,
            s.image_pooling,
            s.aspp_separable,
            s.aspp_dropout,
            s.head_conv,
        )
    aux_head = FCNHead(backbone.aux_channels, s.num_classes) if s.aux_head else None
    return DeepLab(backbone, head, aux_head)


def build_model(cfg: DictConfig) -> DeepLab:
    """The model described by a composed train config, with the pretrained weights it asks for (on CPU)."""
    s = validate_model_config(cfg)
    # Weights are fetched before the network is built, so a missing file fails at once.
    if s.pretrained is not None:
        # The whole network comes from torchvision's DeepLabv3 weights: no ImageNet download needed.
        if s.pretrained == "torchvision":
            source = DEEPLABV3_WEIGHTS[s.backbone].COCO_WITH_VOC_LABELS_V1.url
            obj = download_state_dict(source, "model.pretrained")
        else:
            source = f"model.pretrained file {s.pretrained}"
            obj = load_file(s.pretrained, "model.pretrained")
        model = build_model_from_settings(s)
        load_torchvision_deeplabv3(model, obj, source)
        log.info("loaded torchvision DeepLabv3 weights from %s", source)
        return model
    if s.backbone_pretrained is False:
        return build_model_from_settings(s)
    if s.backbone_pretrained is True:
        source = IMAGENET_WEIGHTS[s.backbone][s.backbone_weights].url
        obj = download_state_dict(source, "backbone.pretrained")
    else:
        obj = load_file(s.backbone_pretrained, "backbone.pretrained")
        source = f"backbone.pretrained file {s.backbone_pretrained}"
    model = build_model_from_settings(s)
    load_backbone_state(model.backbone, obj, source, s.backbone)
    log.info("loaded %s weights from %s", s.backbone, source)
    return model
