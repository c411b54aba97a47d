"""trainer.deterministic=true: two seeded runs give the same weights; an operation without a deterministic
kernel stops the run with one line naming it."""

from __future__ import annotations

import pytest
import torch
from helpers.configs import one_thread, tiny_config

import deeplab.train.engine as engine
from deeplab.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)  # the setting is global: leave the other tests as they were


def test_two_seeded_runs_give_the_same_weights_and_metrics(tiny_data, tmp_path) -> None:
    weights, metrics = [], []
    for name in ("a", "b"):
        with one_thread():
            metrics.append(engine.train(tiny_config(tiny_data), tmp_path / name))
        state = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
        weights.append(state["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert metrics[0]["miou"] == metrics[1]["miou"]
    assert torch.are_deterministic_algorithms_enabled()


def test_an_operation_without_a_deterministic_kernel_is_one_line(tiny_data, tmp_path, monkeypatch) -> None:
    real = engine._forward_backward

    def with_put(run, state):  # put_ has no deterministic kernel on any device
        torch.zeros(4).put_(torch.tensor([0]), torch.tensor([1.0]))
        return real(run, state)

    monkeypatch.setattr(engine, "_forward_backward", with_put)
    with one_thread(), pytest.raises(ConfigError) as e:
        engine.train(tiny_config(tiny_data), tmp_path / "run")
    assert str(e.value).startswith("trainer.deterministic=true: put_ has no deterministic kernel on cpu; set")
    assert "\n" not in str(e.value)
