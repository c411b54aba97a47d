"""Fixtures shared by the tests (the tiny dataset, one trained run) and the test environment; the helpers they
use live in tests/helpers/."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers.configs import compose_config, one_thread, tiny_config

# The tests' label-count cache lives in a temporary folder, not the user's ~/.cache (inherited by the
# train.py processes the tests start).
os.environ["DEEPLAB_CACHE"] = tempfile.mkdtemp(prefix="deeplab-test-cache-")
# No test reaches the network: the Hugging Face hub (timm's weights) fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
# absl.logging (imported by OpenVINO's converter when absl is installed, as tensorboard installs it) binds its
# handler to the sys.stderr of its import, here pytest's capture file, and closes that file when logging is
# reconfigured (Hydra does, in the tests that run entry points in-process): every later test would then write to
# a closed file. Bound to the real stderr, which it never closes, it is harmless.
try:
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
except ImportError:
    pass
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (the default, see pyproject.toml): one torch thread per worker, so the two workers share
    # the two cores instead of fighting over them.
    torch.set_num_threads(1)


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
    from deeplab.train.engine import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with one_thread():
        metrics = train(tiny_config(tiny_data), run_dir)
    return run_dir, metrics, tiny_data
