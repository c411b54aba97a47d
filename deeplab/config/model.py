"""configs/model and configs/backbone: the architecture (DeepLabv3 or v3+, ASPP, decoder, backbone)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from deeplab.config.base import (
    PositiveInt,
    Section,
    flag_or_path,
)
from deeplab.config.roles import WEIGHTS, Added
from deeplab.errors import ConfigError

Pretrained = Annotated[bool | str, flag_or_path((True, False), "true, false")]


class TorchvisionBackbone(Section):
    """A torchvision network; `weights` names its ImageNet weights."""

    output_stride: Literal[8, 16]
    """16: the last stage dilated; 8: the last two stages dilated (arXiv 1706.05587 Sec. 3.1)."""
    pretrained: Annotated[Pretrained, WEIGHTS]
    """true: torchvision's ImageNet weights (`weights`); false: random; a path: a local state dict of the
    torchvision network."""
    weights: Annotated[str, WEIGHTS]
    """Member of the network's torchvision weights enum (ResNet50_Weights, MobileNet_V2_Weights, ...), checked
    when the weights are loaded (deeplab.models.pretrained.imagenet_weights)."""

    @model_validator(mode="after")
    def _weights(self) -> TorchvisionBackbone:
        name = getattr(self, "name", "")
        if self.pretrained is True and name == "resnet_tiny":
            raise ConfigError("backbone.pretrained: resnet_tiny has no published weights; set it to false")
        return self


class ResNetConfig(TorchvisionBackbone):
    """configs/backbone/resnet*: torchvision ResNets (bottleneck 50/101, basic blocks 18/34, the tiny test one)."""

    name: Literal["resnet_tiny", "resnet18", "resnet34", "resnet50", "resnet101"]
    multi_grid: Annotated[list[PositiveInt], Field(min_length=2, max_length=3)]
    """Multiplies the rates of layer4's units (DeepLabv3, Sec. 3.2): [1, 2, 4] gives 2, 4, 8 at OS 16.
    One value per layer4 unit: three, two for ResNet-18."""
    dilation_style: Literal["deeplab", "torchvision"]
    """deeplab: every unit of a dilated layer uses its rate; torchvision: the first unit keeps the previous one."""

    @model_validator(mode="after")
    def _multi_grid(self) -> ResNetConfig:
        units = 2 if self.name == "resnet18" else 3
        if len(self.multi_grid) != units:
            raise ConfigError(
                f"backbone.multi_grid needs {units} values for {self.name} (one per layer4 unit), got "
                f"{self.multi_grid}"
            )
        return self


class MobileNetConfig(TorchvisionBackbone):
    """configs/backbone/mobilenet_*: torchvision's MobileNetV2 and MobileNetV3-Large (no multi-grid)."""

    name: Literal["mobilenet_v2", "mobilenet_v3_large"]


class TimmConfig(Section):
    """configs/backbone/xception65 and timm: encoders of the timm library (pip install -e ".[timm]")."""

    name: Literal["xception65", "timm"]
    model: str
    """timm's model name (for backbone=timm; xception65 is the DeepLabv3+ paper's aligned Xception-65)."""
    output_stride: Literal[8, 16]
    pretrained: Annotated[Pretrained, WEIGHTS]
    """true: timm's ImageNet weights (from the Hugging Face hub); false: random; a path: a local
    .safetensors or .pth file of that model."""


BackboneConfig = Annotated[ResNetConfig | MobileNetConfig | TimmConfig, Field(discriminator="name")]


# Bounds of the keys that size a tensor, far above any published DeepLab (ASPP 256 channels, rates up to 36), so
# that a typo (channels=1000000000) is one line instead of an allocator's traceback.
MAX_CHANNELS = 8192
MAX_RATE = 512


class ASPPConfig(Section):
    rates: Annotated[list[Annotated[int, Field(ge=1, le=MAX_RATE)]], Field(min_length=1, max_length=8)] | None
    """Atrous rates at the training output stride; null: (6, 12, 18) at OS 16, (12, 24, 36) at OS 8."""
    channels: Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
    image_pooling: bool
    separable: bool
    """Depthwise-separable atrous convolutions (DeepLabv3+ paper, Sec. 3.1)."""
    dropout: Annotated[float, Field(ge=0, lt=1)]


class DecoderConfig(Section):
    enabled: bool
    """The DeepLabv3+ decoder on stride-4 features; true exactly for model=deeplabv3plus."""
    low_level_channels: Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
    """Channels the stride-4 features are reduced to (48 in the paper, Table 1)."""
    channels: Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
    separable: bool


class ModelConfig(Section):
    """configs/model: the head on the backbone."""

    name: Literal["deeplabv3", "deeplabv3plus"]
    aspp: ASPPConfig
    head_conv: bool
    """The extra 3x3 conv + BN + ReLU after ASPP that torchvision's DeepLabHead has."""
    decoder: DecoderConfig
    aux_head: bool
    """Auxiliary FCN head on layer3, trained with loss.aux_weight (training only)."""
    pretrained: Annotated[str | None, flag_or_path((None, "torchvision"), "null, torchvision"), WEIGHTS]
    """null; torchvision (its published COCO/VOC-label DeepLabV3 weights); or a path to that .pth file."""
    init_from: Annotated[str | None, WEIGHTS, Added(None)]
    """A new run's starting weights: one of our checkpoints (.pt) or torchvision's DeepLabV3 .pth, any class
    count. Every tensor whose name and shape fit is loaded, the rest keep their initialisation (one log line
    lists them). Not a resume: the optimiser and the iteration start afresh."""

    @model_validator(mode="after")
    def _head(self) -> ModelConfig:
        if self.decoder.enabled != (self.name == "deeplabv3plus"):
            want = "deeplabv3plus" if self.decoder.enabled else "deeplabv3"
            raise ConfigError(
                f"model.decoder.enabled={str(self.decoder.enabled).lower()} does not match model.name="
                f"{self.name}; choose the head with model={want}"
            )
        if self.head_conv and self.decoder.enabled:
            raise ConfigError(
                "model.head_conv (the extra 3x3 conv of torchvision's DeepLabv3 head) cannot be used with "
                "the DeepLabv3+ decoder; set model.head_conv=false or use model=deeplabv3"
            )
        if self.init_from is not None and self.pretrained is not None:
            raise ConfigError(
                "model.init_from and model.pretrained both give the starting weights; set one of them"
            )
        return self


def default_aspp_rates(output_stride: int) -> list[int]:
    """The papers' ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 (arXiv 1706.05587 Sec. 3.3)."""
    return [r * 16 // output_stride for r in (6, 12, 18)]
