"""Gradient accumulation (trainer.accumulate): micro-batches of one optimizer step."""

from __future__ import annotations

import pytest
import torch
from helpers.configs import one_thread, tiny_config

from deeplab.artifacts.checkpoint import load_checkpoint
from deeplab.errors import ConfigError
from deeplab.train.engine import train


def test_two_micro_batches_equal_one_batch_with_batchnorm_frozen(trained_run, tmp_path):
    """Two optimizer steps of batch 4 as 2 x 2 micro-batches == as one batch of 4, on the same samples (with
    BatchNorm frozen, its statistics cannot tell micro-batches apart), within 1e-5; both count 2 iterations."""
    run_dir, _, data_dir = trained_run
    states = {}
    for accumulate in (1, 2):
        options = {
            "trainer.accumulate": accumulate, "trainer.batch_size": 4, "trainer.max_iters": 2,
            "trainer.eval_interval": 2, "trainer.ckpt_interval": 2, "trainer.freeze_bn": "true",
            "model.init_from": run_dir / "checkpoints" / "last.pt", "logger": "[]",
        }  # fmt: skip
        with one_thread():
            train(tiny_config(data_dir, **options), tmp_path / f"acc{accumulate}")
        ckpt = load_checkpoint(tmp_path / f"acc{accumulate}" / "checkpoints" / "last.pt")
        assert ckpt["iteration"] == 2 and ckpt["scheduler"]["last_epoch"] == 2  # optimizer steps
        states[accumulate] = ckpt["model"]
    moved = 0.0
    for name, value in states[1].items():
        if value.is_floating_point():
            torch.testing.assert_close(states[2][name], value, atol=1e-5, rtol=0, msg=name)
    init = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    moved = max(float((states[1][k] - init[k]).abs().max()) for k in init if init[k].is_floating_point())
    assert moved > 1e-4  # the two steps did change the weights


def test_a_batch_that_does_not_split_is_refused(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, **{"trainer.accumulate": 3, "trainer.batch_size": 4})
    with pytest.raises(
        ConfigError, match=r"trainer.batch_size=4 .* trainer.accumulate=3; choose a multiple of 3"
    ):
        train(cfg, tmp_path / "run")
