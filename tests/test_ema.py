"""EMA weights (trainer.ema): the average, its resume, its validation and best.pt's choice."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.configs import compose_config, one_thread, tiny_config
from helpers.interrupt import interrupted_at
from torch import nn

from deeplab.artifacts.checkpoint import load_checkpoint
from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.train.ema import build_ema, ema_decay
from deeplab.train.engine import train


def test_the_average_of_weights_and_batchnorm_statistics():
    assert [ema_decay(0.9, 4, n) for n in (0, 2, 4, 8)] == pytest.approx([0.0, 0.45, 0.9, 0.9])
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = build_ema(model, 0.9, warmup=0)
    ema.update_parameters(model)  # the first update copies
    w0, mean0 = model[0].weight.detach().clone(), model[1].running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(2, 3, 8, 8))  # training mode: BatchNorm's running statistics move
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * w0 + 0.1 * model[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean, 0.9 * mean0 + 0.1 * model[1].running_mean)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked == 1  # an integer buffer: copied


def test_ema_resumes_exactly_is_validated_apart_and_best_pt_keeps_the_better_weights(
    tiny_data, tmp_path, monkeypatch
):
    """Stopped after last.pt at iteration 2 and resumed == 4 uninterrupted iterations, for the weights and
    the EMA (also with gradient accumulation); val/ema/* logged; best.pt holds the weights that scored
    better, which evaluate.py scores."""
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    # with 2 micro-batches per step: the resume continues at the right sample, the EMA counts optimizer steps
    options = {
        "trainer.ema.decay": 0.9, "trainer.ema.warmup": 2, "logger": "[csv]", "trainer.eval_interval": 4,
        "trainer.accumulate": 2, "trainer.batch_size": 4,
    }  # fmt: skip
    with one_thread():
        train(tiny_config(tiny_data, **options), full_dir)
    with interrupted_at(monkeypatch, 2), one_thread(), pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_data, **options), part_dir)
    with one_thread():
        train(tiny_config(tiny_data, **options, **{"trainer.resume": "auto"}), part_dir)
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    part = load_checkpoint(part_dir / "checkpoints" / "last.pt")
    for key in ("model", "ema"):
        assert full[key].keys() == part[key].keys()
        for name, value in full[key].items():
            assert torch.equal(value, part[key][name]), (key, name)
    assert int(full["ema"]["n_averaged"]) == 4  # one update per optimizer step
    assert not torch.equal(
        full["ema"]["module.head.classifier.weight"], full["model"]["head.classifier.weight"]
    )

    saved = json.loads((full_dir / "metrics.json").read_text())
    assert 0 <= saved["ema"]["miou"] <= 1
    header = (full_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/mIoU", "val/ema/mIoU", "val/ema/FWIoU"} <= set(header)

    best = load_checkpoint(full_dir / "checkpoints" / "best.pt")
    weights = best["metrics"]["weights"]
    assert best["card"]["provenance"]["metrics"]["weights"] == weights in ("ema", "model")
    source = {k.removeprefix("module."): v for k, v in full["ema"].items() if k != "n_averaged"}
    if weights == "model":
        source = full["model"]
    assert best["iteration"] == 4 and all(torch.equal(v, source[k]) for k, v in best["model"].items())
    out = tmp_path / "eval"
    out.mkdir()
    with one_thread():
        scored = evaluate_checkpoint(
            compose_config([f"checkpoint={full_dir}", "num_workers=0"], "evaluate"), out
        )
    assert scored["miou"] == pytest.approx(best["metrics"]["miou"], abs=1e-6)


def test_ema_warmup_ramps_the_decay_of_a_training_run(tiny_data, tmp_path) -> None:
    """trainer.ema.warmup: over a long warm-up the EMA of 3 steps stays next to the weights (decay near 0); without
    one it lags behind them (decay 0.99 from the second update)."""
    gaps = {}
    for warmup in (0, 10_000):
        options = {"trainer.ema.decay": 0.99, "trainer.ema.warmup": warmup, "trainer.max_iters": 3,
                   "trainer.eval_interval": 3, "logger": "[]"}  # fmt: skip
        with one_thread():
            train(tiny_config(tiny_data, **options), tmp_path / str(warmup))
        ckpt = load_checkpoint(tmp_path / str(warmup) / "checkpoints" / "last.pt")
        ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
        weights = ckpt["model"]
        gaps[warmup] = max(
            float((ema[k] - v).abs().max()) for k, v in weights.items() if v.is_floating_point()
        )
    assert gaps[10_000] < 0.01 * gaps[0], gaps
