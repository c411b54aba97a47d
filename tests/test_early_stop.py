"""trainer.early_stop: the run ends after `patience` validations without a val mIoU rise of `min_delta`, with
best.pt, status.json saying why, and a resume that knows the run has ended."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.configs import one_thread, tiny_config, tiny_overrides
from helpers.processes import run_cli

from deeplab.config import EarlyStopConfig, train_config
from deeplab.errors import ConfigError
from deeplab.train.engine import early_stop, train


def test_a_rise_below_min_delta_does_not_count() -> None:
    cfg = EarlyStopConfig(patience=2, min_delta=0.01)
    state = {"best": -1.0, "iteration": 0, "stale": 0, "stopped": ""}
    for it, score in [(1, 0.50), (2, 0.505), (3, 0.52), (4, 0.525)]:
        early_stop(state, cfg, score, it)
        assert not state["stopped"]
    assert state["best"] == 0.52 and state["iteration"] == 3 and state["stale"] == 1
    early_stop(state, cfg, 0.529, 5)  # +0.009 over 0.52: not enough, the second in a row
    assert "2 validations without a val mIoU rise of 0.01 over 52.00 at iteration 3" in state["stopped"]
    off = {"best": -1.0, "iteration": 0, "stale": 0, "stopped": ""}
    for it in range(1, 20):
        early_stop(off, EarlyStopConfig(patience=None, min_delta=0.0), 0.1, it)
    assert not off["stopped"]


def test_the_run_ends_early_keeps_best_pt_and_a_resume_does_not_train_on(tiny_data, tmp_path) -> None:
    """min_delta=1 (a rise of 100 points): every validation after the first is stale, so with validation every
    iteration and patience 2 the run ends at iteration 3 of 12."""
    run_dir = tmp_path / "run"
    overrides = {"trainer.max_iters": 12, "trainer.eval_interval": 1, "trainer.ckpt_interval": 5,
                 "trainer.early_stop.patience": 2, "trainer.early_stop.min_delta": 1.0}  # fmt: skip
    proc = run_cli("train.py", *tiny_overrides(tiny_data, **overrides), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished"
    assert status["reason"].startswith("early stop (trainer.early_stop.patience=2): 2 validations without")
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert last["iteration"] == 3 and last["early_stop"]["stopped"] == status["reason"]
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert "iteration 3: early stop" in proc.stdout + proc.stderr
    # A resume (a requeued job) finishes at once: no iteration is trained, the reason is said again.
    with one_thread():
        metrics = train(tiny_config(tiny_data, **overrides, **{"trainer.resume": "auto"}), run_dir)
    assert metrics["stopped_early"] == status["reason"]
    again = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert again["iteration"] == 3


def test_bad_settings_are_one_line(tiny_data, tmp_path) -> None:
    """train.py itself for one (exit 2, one line); the schema's message for the other, which train.py prints
    the same way."""
    bad = "trainer.early_stop.patience=0"
    proc = run_cli("train.py", *tiny_overrides(tiny_data), bad, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and bad.split("=")[0] in proc.stderr
    with pytest.raises(ConfigError, match=r"^trainer.early_stop.min_delta: [^\n]*$"):
        train_config(tiny_config(tiny_data, **{"trainer.early_stop.min_delta": -0.1}))
