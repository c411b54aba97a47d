"""Rebuild a trained model from a file: our checkpoint (config inside) or torchvision's published weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from deeplab.checkpoint import load_file, load_model_state
from deeplab.errors import CheckpointError
from deeplab.models import build_model, convert_torchvision_state_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The train config as `python train.py OVERRIDES` would compose it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _torchvision_depth(state: dict[str, Any]) -> int:
    """50 or 101 from the number of units in layer3 of a torchvision ResNet state dict."""
    units = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}
    return 101 if len(units) == 23 else 50


def load_trained_model(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """(model with the file's weights, in eval mode, on CPU; the config that built it)."""
    obj = load_file(path, "checkpoint")
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        cfg = OmegaConf.create(obj["config"])
        state = obj["model"]
    elif isinstance(obj, dict) and any(k.startswith("classifier.0.convs") for k in obj):
        depth = _torchvision_depth(obj)
        cfg = compose_train_config([f"experiment=torchvision_deeplabv3_r{depth}", "dataset=voc"])
        state = convert_torchvision_state_dict(obj)
    else:
        raise CheckpointError(
            f"checkpoint {path} is neither a deeplab checkpoint (a dict with 'model' and 'config', as train.py "
            "writes) nor torchvision's deeplabv3_resnet50/101 weights"
        )
    # The weights come from the file: nothing to download.
    cfg.backbone.pretrained = False
    cfg.model.pretrained = None
    model = build_model(cfg)
    load_model_state(model, state, path)
    model.eval()
    return model, cfg


def apply_overrides(cfg: DictConfig, section: str, overrides: DictConfig | dict | None) -> None:
    """Set every non-null leaf of `overrides` at `section.<key>` in cfg (nested keys with dots)."""
    if overrides is None:
        return
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif node is not None:
            flat[prefix] = node

    walk("", OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else overrides)
    for key, value in flat.items():
        OmegaConf.update(cfg, f"{section}.{key}", value, force_add=True)
