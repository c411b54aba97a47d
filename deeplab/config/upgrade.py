"""Older configs brought up to date: the keys added since a checkpoint was written get the values it was trained
with (declared next to each key, deeplab/config/roles.py), and class names that only a dataset's name implied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deeplab.config.labels import with_official_names
from deeplab.config.roles import upgrade
from deeplab.config.train import TrainConfig


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys added since it was written filled in, with the values that
    reproduce how it was trained (declared next to each key in deeplab/config.py; the loss group: see
    LossConfig); class names that only the dataset's name implied are written out."""
    upgraded = upgrade(TrainConfig, config)
    if isinstance(upgraded.get("dataset"), Mapping):
        upgraded["dataset"] = with_official_names(upgraded["dataset"])
    return upgraded
