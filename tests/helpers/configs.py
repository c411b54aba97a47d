"""The real Hydra config tree composed with overrides, as the entry points compose it; the tiny experiment."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose the real Hydra config tree with overrides, as train.py would."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def tiny_overrides(data_dir: Path, **extra: object) -> list[str]:
    """configs/experiment/tiny.yaml (seconds on a CPU) with its data under data_dir, plus extra overrides."""
    base: dict[str, object] = {"experiment": "tiny", "paths.data_dir": str(data_dir)}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(data_dir: Path, **extra: object) -> DictConfig:
    return compose_config(tiny_overrides(data_dir, **extra))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, as the train.py processes of the tests: same arithmetic, and no slow-down from
    oversubscribed cores when other processes compete for them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generated_voc(data_dir: Path) -> Path:
    """The VOC2012 folder of the generated dataset under data_dir (dataset=synthetic writes each spec to a
    folder of its own, data_dir/synthetic/<spec>/VOC2012; the tests' data_dir holds one)."""
    [voc] = sorted((data_dir / "synthetic").glob("*/VOC2012"))
    return voc
