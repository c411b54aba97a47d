"""Rebuild a trained model from what `checkpoint=` names: read the card and the weights, build, load.

A checkpoint of ours (its card, or for one written before cards, the card made from its model, backbone and
dataset sections), an exported model folder (config.json + model.safetensors) or torchvision's published
DeepLabV3 weights. No training-only section is validated and nothing is downloaded: the weights come from
the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deeplab.artifacts.card import ModelCard, card_of_checkpoint, make_card, read_card
from deeplab.artifacts.checkpoint import load_file, load_model_state
from deeplab.artifacts.locate import CARD_FILE, WEIGHTS_FILE, Located, locate, read_weights_file
from deeplab.config import DatasetBase, DatasetConfig, Section, flatten, to_plain, validate
from deeplab.config.compose import compose_train_config
from deeplab.errors import CheckpointError, ConfigError
from deeplab.models import DeepLab, build_architecture, convert_torchvision_state_dict
from deeplab.models.input_channels import widen_input
from deeplab.models.pretrained import is_torchvision_mobilenet


class _DatasetNode(Section):
    """A dataset section on its own, so that a mistake is reported under its key (dataset.root: ...)."""

    dataset: DatasetConfig


def _torchvision_experiment(state: dict[str, Any]) -> str:
    """The experiment of a torchvision DeepLabV3 state dict: its backbone, from the keys."""
    if is_torchvision_mobilenet(state):
        return "torchvision_deeplabv3_mobilenet_v3_large"
    units = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}  # 23 in ResNet-101
    return "torchvision_deeplabv3_r101" if len(units) == 23 else "torchvision_deeplabv3_r50"


def read_model_folder(folder: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """(card, weights) of a folder written by `python -m deeplab.export format=hub`."""
    import json

    try:
        card = json.loads((folder / CARD_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"model card {folder / CARD_FILE} cannot be read ({e})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {folder / CARD_FILE} holds {type(card).__name__}, not an object")
    return read_card(card, folder / CARD_FILE), read_weights_file(folder / WEIGHTS_FILE)


def read_trained(located: Located) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """(card, weights) of a checkpoint or model folder (not an ONNX file: callers run those themselves)."""
    path = located.path
    if located.kind == "hub":
        return read_model_folder(path)
    if located.is_graph:
        raise CheckpointError(
            f"{path} is an exported {located.format_name} graph, not PyTorch weights; give the checkpoint"
        )
    obj = load_file(path, "checkpoint")
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        return card_of_checkpoint(obj, path), obj["model"]
    if isinstance(obj, dict) and any(k.startswith("classifier.0.convs") for k in obj):
        overrides = [f"experiment={_torchvision_experiment(obj)}", "dataset=voc"]
        classes = obj["classifier.4.weight"].shape[0] if "classifier.4.weight" in obj else 21
        if classes != 21:  # fine-tuned to other classes: VOC's names do not apply
            overrides += [f"dataset.num_classes={classes}", "dataset.class_names=null"]
        if not any(k.startswith("aux_classifier.") for k in obj):  # saved with aux_loss=False
            overrides.append("model.aux_head=false")
        config = compose_train_config(overrides)
        return make_card(to_plain(config), stamp=False), convert_torchvision_state_dict(obj)
    raise CheckpointError(
        f"checkpoint {path} is neither a deeplab checkpoint (a dict with 'model' and 'config', as train.py "
        "writes) nor torchvision's DeepLabV3 weights (deeplabv3_resnet50/101, deeplabv3_mobilenet_v3_large)"
    )


def build_from_card(card: ModelCard) -> DeepLab:
    """The card's model with random weights: nothing is downloaded, whatever the card says about pretrained
    weights (the trained ones are loaded next)."""
    backbone = card.backbone.model_copy(update={"pretrained": False})
    model = build_architecture(card.model, backbone, card.dataset.num_classes)
    if card.dataset.in_channels != 3:
        widen_input(model.backbone, card.dataset.in_channels)
    return model


def load_trained_model(setting: str | Path, key: str = "checkpoint") -> tuple[DeepLab, ModelCard]:
    """(model with the trained weights, in eval mode, on the CPU, its input normalisation set from the card for
    model.predict(image); its card) of what `key=setting` names."""
    located = locate(setting, key)
    card, state = read_trained(located)
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise CheckpointError(
            f"{located.path} holds non-finite weights (NaN or inf in {shown}): the run diverged before it was "
            "saved; use an earlier checkpoint"
        )
    model = build_from_card(card)
    load_model_state(model, state, located.path)
    model.mean, model.std = list(card.labels.mean), list(card.labels.std)
    model.multilabel, model.threshold = card.labels.multilabel, card.labels.threshold
    model.eval()
    return model, card


def dataset_with_overrides(
    section: DatasetBase | Mapping[str, Any], overrides: Mapping[str, Any]
) -> DatasetConfig:
    """A dataset section with the non-null values of evaluate's `dataset` node (where the data lies) put in,
    validated."""
    plain = section.model_dump() if isinstance(section, DatasetBase) else dict(section)
    for key, value in flatten(dict(overrides)).items():
        if value is None:
            continue
        node = plain
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return validate(_DatasetNode, {"dataset": plain}).dataset
    except ConfigError as e:
        raise ConfigError(f"{e} (the model's dataset section with evaluate's dataset overrides)") from None


def run_settings(amp: str, channels_last: str | bool, card: ModelCard) -> tuple[str, str | bool]:
    """evaluate's and predict's amp and channels_last: `auto` takes the settings the card says the model was
    validated with (so that evaluate.py gives the training's metrics on the same machine); a card that does not
    record them (written before it did) runs in float32, as evaluate.py and predict did then."""
    trained = card.provenance
    if amp == "auto":
        amp = trained.amp if trained.amp is not None else "off"
    if channels_last == "auto" and trained.channels_last is not None:
        channels_last = trained.channels_last
    return amp, channels_last
