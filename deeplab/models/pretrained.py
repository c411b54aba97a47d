"""Pretrained weights: torchvision ImageNet ResNets for the backbone, torchvision's DeepLabv3 for the whole model."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torchvision.models import WeightsEnum

from deeplab.artifacts.checkpoint import load_file, why_unreadable
from deeplab.artifacts.locate import WEIGHTS_FILE, locate, read_weights_file
from deeplab.errors import CheckpointError, ConfigError, first_line

log = logging.getLogger(__name__)

# torchvision DeepLabV3 key prefix -> ours. DeepLabHead is Sequential(ASPP, conv3x3, BN, ReLU, conv1x1);
# the backbone and the ASPP internals share torchvision's names (its MobileNetV3's blocks sit directly under
# "backbone.", ours under "backbone.features.").
_TORCHVISION_PREFIXES = {
    "backbone.": "backbone.",
    "classifier.0.": "head.aspp.",
    "classifier.1.": "head.conv.0.",
    "classifier.2.": "head.conv.1.",
    "classifier.4.": "head.classifier.",
    "aux_classifier.": "aux_head.",
}
# Layers whose shape depends on the number of classes: dropped when fine-tuning to other classes.
_CLASSIFIER_PREFIXES = ("head.classifier.", "aux_head.4.")


def imagenet_weights(name: str, member: str) -> WeightsEnum:
    """torchvision's ImageNet weights `member` of a backbone (backbone.weights), e.g. ResNet50_Weights.IMAGENET1K_V2;
    read when the weights are loaded, so that checking a config does not import torchvision."""
    import torchvision.models as tvm

    enums = {
        "resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights, "resnet50": tvm.ResNet50_Weights,
        "resnet101": tvm.ResNet101_Weights, "mobilenet_v2": tvm.MobileNet_V2_Weights,
        "mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights,
    }  # fmt: skip
    enum = enums[name]
    if member not in enum.__members__:
        raise ConfigError(
            f"backbone.weights must name torchvision's {enum.__name__} weights, one of {sorted(enum.__members__)}, "
            f"got {member!r}"
        )
    return enum[member]


def download_weights(weights: WeightsEnum, key: str) -> dict[str, Any]:
    """A torchvision weights file, from torch's hub cache or downloaded (hash checked), read weights-only.

    Failure names `key` and how to pass the file offline.
    """
    filename = Path(urlparse(weights.url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:  # the cached file holds objects weights_only refuses
        raise CheckpointError(why_unreadable(cached, f"{key} (torch hub cache)", e)) from None
    except (OSError, RuntimeError) as e:  # URLError and socket errors are OSErrors; a bad hash RuntimeError
        raise ConfigError(
            f"{key}: could not download {weights.url} ({first_line(e)}); on a machine without internet "
            f"download that file elsewhere and pass {key}=/path/to/{filename} (or copy it to {cached}), or "
            f"train from random weights with {key}={'null' if key.startswith('model.') else 'false'} (much lower "
            "accuracy)"
        ) from None


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A plain state dict from a loaded file: raw, or nested under "state_dict"/"model"; DDP's "module." removed."""
    for nested in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nested), dict):
            obj = obj[nested]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source} does not hold a state dict (a dict of tensors, possibly under 'state_dict')"
        )
    state = dict(obj)
    consume_prefix_in_state_dict_if_present(state, "module.")  # saved from a DDP wrapper
    return state


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _fill_bn_counters(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
    # Files saved before PyTorch 0.4.1 have no BatchNorm num_batches_tracked; the count is not a weight.
    for k, v in target.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v.clone()


def check_fits(module: nn.Module, state: dict[str, torch.Tensor], source: str, expected: str) -> None:
    """CheckpointError listing missing, unexpected and wrongly shaped keys unless `state` loads strictly."""
    target = module.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = [
            f"{len(found)} {what} ({_examples(found)})"
            for found, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (shapes, "keys of another shape"),
            )
            if found
        ]
        raise CheckpointError(f"{source} does not fit: {'; '.join(parts)}; it should hold {expected}")


def load_backbone_state(backbone: nn.Module, obj: Any, source: str, name: str) -> None:
    """Load a torchvision network's ImageNet state dict into the backbone (its classifier, which the
    backbone does not have, ignored), strictly otherwise."""
    state = unwrap_state_dict(obj, source)
    ignored = getattr(backbone, "ignored_prefixes", ())
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    _fill_bn_counters(state, backbone.state_dict())
    check_fits(backbone, state, source, f"the state dict of torchvision's {name}")
    backbone.load_state_dict(state)


def is_torchvision_mobilenet(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a torchvision DeepLabV3 state dict is deeplabv3_mobilenet_v3_large's (numbered blocks)."""
    return any(k.startswith("backbone.0.") for k in state_dict)


def convert_torchvision_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision deeplabv3_resnet50/101 or deeplabv3_mobilenet_v3_large keys -> ours (the models of
    experiment=torchvision_deeplabv3_r50, _r101 and _mobilenet_v3_large)."""
    backbone = "backbone.features." if is_torchvision_mobilenet(state_dict) else "backbone."
    converted = {}
    for key, value in state_dict.items():
        prefix = next((p for p in _TORCHVISION_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(
                f"key {key!r} is not part of torchvision's DeepLabV3 models (backbone, classifier, "
                "aux_classifier); is this a DeepLabV3 state dict?"
            )
        target = backbone if prefix == "backbone." else _TORCHVISION_PREFIXES[prefix]
        converted[target + key[len(prefix) :]] = value
    return converted


def drop_mismatched_classifiers(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state without the final classifier layers whose class count differs from the model's, dropped keys)."""
    target = model.state_dict()
    dropped = [
        k
        for k, v in state.items()
        if k.startswith(_CLASSIFIER_PREFIXES) and k in target and v.shape != target[k].shape
    ]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def load_torchvision_deeplabv3(model: nn.Module, obj: Any, source: str) -> list[str]:
    """Load torchvision's DeepLabV3 weights into `model`; returns the keys left at their initial values.

    The final 1x1 classifiers are skipped when the model has another number of classes (fine-tuning),
    and the auxiliary head when the model has none. Anything else must fit exactly.
    """
    state = convert_torchvision_state_dict(unwrap_state_dict(obj, source))
    state, skipped = drop_mismatched_classifiers(model, state)
    if getattr(model, "aux_head", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    target = model.state_dict()
    _fill_bn_counters(state, target)
    # The skipped classifiers keep the model's own initial values, so the load can stay strict.
    state.update({k: target[k] for k in skipped})
    check_fits(
        model,
        state,
        source,
        "torchvision's DeepLabV3 state dict, loaded into experiment=torchvision_deeplabv3_r50, _r101 or "
        "_mobilenet_v3_large",
    )
    model.load_state_dict(state)
    if skipped:
        log.info(
            "%s: kept the model's initial values for %s (other number of classes)", source, ", ".join(skipped)
        )
    return skipped


def load_matching(model: nn.Module, path: str | Path) -> list[str]:
    """model.init_from: load every tensor of one of our checkpoints (a file, run folder or exported model folder)
    or of torchvision's DeepLabV3 weights whose name and shape fit `model`; the rest keep their initialisation. Returns the model's keys not loaded."""
    located = locate(path, "model.init_from")
    source = f"model.init_from {located.path}"
    if located.is_graph:
        raise CheckpointError(
            f"{source} is an exported {located.format_name} graph; give the checkpoint or model folder it was exported from"
        )
    obj = (
        read_weights_file(located.path / WEIGHTS_FILE)
        if located.kind == "hub"
        else load_file(located.path, "model.init_from")
    )
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj:
        state = unwrap_state_dict(obj["model"], source)  # ours
    else:
        state = unwrap_state_dict(obj, source)
        if any(k.startswith("classifier.0.convs") for k in state):
            state = convert_torchvision_state_dict(state)
    target = model.state_dict()
    fits = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if not any(k in fits for k in target if not k.endswith("num_batches_tracked")):
        raise CheckpointError(
            f"{source} shares no tensor with this model (its keys: {_examples(list(state))}); is it a "
            "deeplab checkpoint or torchvision's DeepLabV3 weights?"
        )
    model.load_state_dict(fits, strict=False)
    return [k for k in target if k not in fits and not k.endswith("num_batches_tracked")]
