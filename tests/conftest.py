"""Shared test helpers: the real config tree composed with overrides, the tiny experiment, one trained run."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
# The tests' label-count cache lives in a temporary folder, not the user's ~/.cache (inherited by the
# train.py processes the tests start).
os.environ["DEEPLAB_CACHE"] = tempfile.mkdtemp(prefix="deeplab-test-cache-")
# No test reaches the network: the Hugging Face hub (timm's weights) fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (the default, see pyproject.toml): one torch thread per worker, so the two workers share
    # the two cores instead of fighting over them.
    torch.set_num_threads(1)


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


@pytest.fixture
def cfg_factory():
    return compose_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The generated dataset of the tiny experiment, written once per session (tests copy it to change it)."""
    from deeplab.data import build_dataset

    path = tmp_path_factory.mktemp("tiny") / "data"
    build_dataset(tiny_config(path), "val")
    return path


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> tuple[Path, dict, Path]:
    """One tiny training run (4 iterations, validation at 2 and 4) shared by the tests that only read it:
    (run dir, returned metrics, data dir)."""
    from deeplab.engine import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with one_thread():
        metrics = train(tiny_config(tiny_data), run_dir)
    return run_dir, metrics, tiny_data
