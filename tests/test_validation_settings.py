"""Validation in training is evaluate.py: the same function with the same eval.* settings."""

from __future__ import annotations

import json

from helpers.configs import compose_config, one_thread, tiny_config

from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.deploy.restore import load_trained_model
from deeplab.evaluation.loop import at_output_stride
from deeplab.train.engine import train

METRIC_KEYS = ("pixel_acc", "mean_acc", "miou", "fwiou", "iou_per_class")
SLIDE = {
    "eval.mode": "slide", "eval.window": 24, "eval.overlap": 0.5, "eval.output_stride": 8,
    "eval.scales": "[0.75,1.0]", "eval.flip": "true", "eval.batch_size": 2,
}  # fmt: skip


def _evaluate(checkpoint, out, settings: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"checkpoint={checkpoint}", "num_workers=0"] + [f"{k}={v}" for k, v in settings.items()]
    with one_thread():
        evaluate_checkpoint(compose_config(overrides, "evaluate"), out)
    return json.loads((out / "metrics.json").read_text())


def test_whole_image_validation_equals_evaluate_py(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = _evaluate(run_dir / "checkpoints" / "last.pt", tmp_path / "eval", {})
    assert {k: trained[k] for k in METRIC_KEYS} == {k: evaluated[k] for k in METRIC_KEYS}


def test_slide_validation_uses_the_eval_settings_and_equals_evaluate_py(tiny_data, tmp_path, monkeypatch):
    """eval.mode=slide, window, overlap, output stride 8, two scales, flip and batch 2 in training: its
    metrics.json is evaluate.py's on last.pt with the same settings, and the model trains on at its own
    output stride."""
    run_dir = tmp_path / "run"
    options = {"trainer.max_iters": 2, "trainer.eval_interval": 2, "trainer.ckpt_interval": 2, **SLIDE}
    import deeplab.evaluation.loop as evaluation

    seen, real = [], evaluation.predict_probs

    def recording(model, images, **kwargs):
        seen.append((model.output_stride, kwargs, images.shape[0]))
        return real(model, images, **kwargs)

    monkeypatch.setattr(evaluation, "predict_probs", recording)
    with one_thread():
        train(tiny_config(tiny_data, **options), run_dir)
    monkeypatch.setattr(evaluation, "predict_probs", real)
    want = {
        "scales": [0.75, 1.0],
        "flip": True,
        "mode": "slide",
        "window": 24,
        "overlap": 0.5,
        "multilabel": False,
    }
    assert seen and all(s == (8, want, 2) for s in seen)  # 4 validation images in batches of 2
    trained = json.loads((run_dir / "metrics.json").read_text())
    last = run_dir / "checkpoints" / "last.pt"
    evaluated = _evaluate(last, tmp_path / "eval", SLIDE)
    assert evaluated["mode"] == "slide" and evaluated["output_stride"] == 8
    assert {k: trained[k] for k in METRIC_KEYS} == {k: evaluated[k] for k in METRIC_KEYS}
    # validation at output stride 8 gives the model back at its own stride, to train on
    model, _ = load_trained_model(last)
    with at_output_stride(model, 8):
        assert model.output_stride == 8
    assert model.output_stride == 16
