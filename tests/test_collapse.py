"""The collapse warning: a model predicting one class nearly everywhere is named, at validation and at the first
log boundaries of training; a trained model is not. (The 4-iteration tiny run of the other tests is not
trained enough: it does collapse, and is warned about.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from helpers.configs import one_thread, tiny_config

import deeplab.train.engine as engine
from deeplab.evaluation.collapse import CollapseWatch, collapse_warning
from deeplab.train.engine import train

NAMES = ["background", "a", "b"]


def test_the_rule_names_the_class_and_both_shares():
    # the example: 90% predicted while the truth has under 60%
    warning = collapse_warning([92, 4, 4], [55, 25, 20], NAMES)
    assert warning is not None and "\n" not in warning
    assert "'background'" in warning and "92.0%" in warning and "55.0%" in warning
    assert "loss.class_weights=auto" in warning and "dataset.sampler=rare_class" in warning
    # VOC's collapse to a background of 70% of the true pixels
    assert collapse_warning([99, 1, 0], [70, 20, 10], NAMES) is not None
    # a class truly covering 95% of the pixels, predicted at 97%: right, not collapsed
    assert collapse_warning([97, 2, 1], [95, 3, 2], NAMES) is None
    # a healthy model, and one below the 90% predicted share
    assert collapse_warning([55, 25, 20], [55, 25, 20], NAMES) is None
    assert collapse_warning([85, 10, 5], [40, 30, 30], NAMES) is None


def test_watch_counts_valid_pixels_for_its_boundaries_only():
    watch = CollapseWatch(3, 255, torch.device("cpu"), boundaries=2)
    logits = torch.zeros(2, 3, 4, 5)
    logits[:, 1] = 1.0  # class "a" everywhere
    target = torch.zeros(2, 4, 5, dtype=torch.int64)
    target[:, :2] = 2
    target[0, 3] = 255  # ignored: counted neither as true nor as predicted
    watch.add(logits, target)
    total = {k: float(v) for k, v in watch.named().items()}
    assert total["predicted_pixels/1"] == 35 and total["true_pixels/2"] == 20 and total["true_pixels/0"] == 15
    warning = watch.boundary(total, NAMES)
    assert warning is not None and "'a' for 100.0%" in warning
    assert watch.named() == {}  # warned once: nothing more counted


def force_class(cls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model train.py builds predicts `cls` everywhere (its logits replaced by a constant)."""
    real = engine.build_model

    def build(cfg):
        model = real(cfg)

        def forced(module, args, output):
            bias = torch.zeros(output["out"].shape[1], 1, 1)
            bias[cls] = 10.0
            return {**output, "out": output["out"] * 0 + bias.to(output["out"])}

        model.register_forward_hook(forced)
        return model

    monkeypatch.setattr(engine, "build_model", build)


def test_a_model_forced_to_one_class_is_named_in_training_and_validation(
    tiny_data, tmp_path, monkeypatch, caplog
):
    force_class(1, monkeypatch)
    with one_thread(), caplog.at_level(logging.WARNING, logger="deeplab.train.engine"):
        train(tiny_config(tiny_data, **{"trainer.max_iters": 1}), tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if "collapsing to one class" in r.getMessage()]
    assert any(
        m.startswith("iter 1, training batches: the model predicts class 'disc' for 100.0%") for m in warnings
    )
    assert any(
        m.startswith("iter 1, validation: the model predicts class 'disc' for 100.0%") for m in warnings
    )


@pytest.mark.slow
def test_the_quickstart_run_is_not_collapsed(tmp_path: Path, caplog):
    """python train.py experiment=quickstart (40 iterations of ResNet-50, a minute or more on a CPU): no warning
    at its first log boundaries nor at its validations."""
    from helpers.configs import compose_config

    cfg = compose_config(["experiment=quickstart", f"paths.data_dir={tmp_path / 'data'}"])
    with caplog.at_level(logging.WARNING, logger="deeplab.train.engine"):
        metrics = train(cfg, tmp_path / "run")
    assert metrics["miou"] > 0.5
    assert not [r for r in caplog.records if "collapsing" in r.getMessage()]
