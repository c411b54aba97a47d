from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose the real Hydra config tree with overrides, as train.py would."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


@pytest.fixture
def cfg_factory():
    return compose_config
