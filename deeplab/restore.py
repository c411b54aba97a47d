"""Rebuild a trained model from a file: our checkpoint (config inside) or torchvision's published weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from torch import nn

from deeplab.checkpoint import load_file, load_model_state, upgrade_config
from deeplab.config import EvalDatasetOverrides, TrainConfig, config_dir, flatten, train_config
from deeplab.errors import CheckpointError, ConfigError
from deeplab.models import build_model, convert_torchvision_state_dict
from deeplab.models.pretrained import is_torchvision_mobilenet


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The train config as `python train.py OVERRIDES` would compose it (also inside a Hydra app)."""
    if GlobalHydra.instance().is_initialized():  # evaluate.py and predict run in Hydra apps on configs/
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _torchvision_experiment(state: dict[str, Any]) -> str:
    """The experiment of a torchvision DeepLabV3 state dict: its backbone, from the keys."""
    if is_torchvision_mobilenet(state):
        return "torchvision_deeplabv3_mobilenet_v3_large"
    units = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}  # 23 in ResNet-101
    return "torchvision_deeplabv3_r101" if len(units) == 23 else "torchvision_deeplabv3_r50"


def load_trained_model(path: str | Path) -> tuple[nn.Module, TrainConfig]:
    """(model with the file's weights, in eval mode, on CPU; the config that built it)."""
    obj = load_file(path, "checkpoint")
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        try:
            cfg = train_config(upgrade_config(obj["config"]))
        except ConfigError as e:
            raise CheckpointError(f"checkpoint {path} holds a config this version cannot use ({e})") from None
        state = obj["model"]
    elif isinstance(obj, dict) and any(k.startswith("classifier.0.convs") for k in obj):
        cfg = train_config(
            compose_train_config([f"experiment={_torchvision_experiment(obj)}", "dataset=voc"])
        )
        state = convert_torchvision_state_dict(obj)
    else:
        raise CheckpointError(
            f"checkpoint {path} is neither a deeplab checkpoint (a dict with 'model' and 'config', as train.py "
            "writes) nor torchvision's DeepLabV3 weights (deeplabv3_resnet50/101, deeplabv3_mobilenet_v3_large)"
        )
    # The weights come from the file: nothing to download.
    cfg.backbone.pretrained = False
    cfg.model.pretrained = None
    model = build_model(cfg)
    load_model_state(model, state, path)
    model.eval()
    return model, cfg


def with_dataset_overrides(cfg: TrainConfig, overrides: EvalDatasetOverrides) -> TrainConfig:
    """cfg with every non-null value of evaluate's `dataset` node put in its dataset node, validated."""
    plain = cfg.model_dump()
    for key, value in flatten(overrides.model_dump()).items():
        if value is None:
            continue
        node = plain["dataset"]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return train_config(plain)
