"""Whether a checkpoint fits a config: the differing values of the keys with a given role (architecture, data,
optimiser), as deeplab/config declares the roles, and the one-line error for another model."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel

from deeplab.config import TrainConfig, flatten
from deeplab.config.roles import Kind, key_roles, role_of
from deeplab.errors import CheckpointError


@functools.cache
def _roles() -> dict[str, Kind]:
    """The role of every key of the training config, as deeplab/config.py declares it."""
    return key_roles(TrainConfig)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _plain(cfg: Mapping | DictConfig | BaseModel) -> dict[str, Any]:
    if isinstance(cfg, BaseModel):
        return cfg.model_dump()
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def config_diff(
    saved: Mapping | DictConfig | BaseModel,
    current: Mapping | DictConfig | BaseModel,
    roles: Sequence[Kind] = ("architecture",),
) -> list[str]:
    """Differing leaf values of the keys with these roles, e.g. "backbone.output_stride: checkpoint 16,
    config 8"."""
    old, new = flatten(_plain(saved)), flatten(_plain(current))
    diffs = []
    for leaf in sorted(set(old) | set(new)):
        if role_of(leaf, _roles()) not in roles:
            continue
        a, b = old.get(leaf, _MISSING), new.get(leaf, _MISSING)
        if a != b:
            diffs.append(f"{leaf}: checkpoint {a}, config {b}")
    return diffs


def check_compatible(
    saved_cfg: Mapping | DictConfig | BaseModel,
    cfg: Mapping | DictConfig | BaseModel,
    path: str | Path,
) -> None:
    """Raise CheckpointError listing the architecture keys whose values differ from the checkpoint's."""
    diffs = config_diff(saved_cfg, cfg)
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was made for a different model: {'; '.join(diffs)} "
            f"(drop these overrides, or use a checkpoint trained with them)"
        )
