"""The train config composed from overrides, as `python train.py OVERRIDES` composes it (for the commands and
tools that need one outside train.py: checking data, rebuilding torchvision's models, the benchmarks)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from deeplab.config.validation import config_dir


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The train config as `python train.py OVERRIDES` would compose it (also inside a Hydra app)."""
    if GlobalHydra.instance().is_initialized():  # evaluate.py and predict run in Hydra apps on configs/
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)
