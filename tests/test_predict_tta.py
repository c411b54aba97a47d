"""Predict with test-time augmentation (eval.scales, eval.flip): the masks equal those of evaluation's
multi-scale + flip path on the same images, for a checkpoint and for its ONNX export alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers.configs import compose_config, generated_voc, one_thread
from PIL import Image

from deeplab.config import predict_config
from deeplab.data import build_dataset
from deeplab.data.loaders import build_val_loader
from deeplab.deploy.export import export
from deeplab.deploy.predict import predict
from deeplab.deploy.restore import load_trained_model
from deeplab.deploy.segmenter import load_segmenter
from deeplab.evaluation.loop import evaluate

TTA = ["eval.scales=[0.75,1.25]", "eval.flip=true"]


def evaluation_masks(checkpoint: Path, *tta: str) -> list[np.ndarray]:
    """The argmax masks deeplab.evaluation.loop computes on the validation images (in the split's order)."""
    cfg = predict_config(compose_config([f"checkpoint={checkpoint}", "input=x", "output=x", *tta], "predict"))
    _, card = load_trained_model(checkpoint)
    dataset = build_dataset(card.dataset, "val")
    seg = load_segmenter(cfg)
    loader = build_val_loader(dataset, 1, 0, ignore_index=card.dataset.ignore_index)
    result = evaluate(
        seg.model, loader, seg.rt, seg.normalize, cfg.eval, num_classes=card.dataset.num_classes,
        ignore_index=card.dataset.ignore_index, num_examples=len(dataset),
    )  # fmt: skip
    return [pred for _, _, pred in result.examples]


def test_predict_tta_equals_evaluations_multi_scale_flip_path(trained_run, tmp_path) -> None:
    """For the checkpoint and its ONNX export: predict's masks with eval.scales and eval.flip are those of
    deeplab.evaluation.loop (what evaluate.py scores) with the same settings, on the validation images."""
    run_dir, _, data_dir = trained_run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    export_cfg = compose_config(
        [f"checkpoint={checkpoint}", f"output={tmp_path / 'm.onnx'}", "trace_size=[64,80]", "check=false"],
        config_name="export",
    )
    images = sorted((generated_voc(data_dir) / "JPEGImages").glob("val_*.jpg"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in images:
        (photos / p.name).write_bytes(p.read_bytes())
    with one_thread():
        expected = evaluation_masks(checkpoint, *TTA)
        single = evaluation_masks(checkpoint)
        onnx_file = export(export_cfg, tmp_path)
    # ONNX Runtime's last bits may flip a rare near-tie.
    for model, tolerance in ((checkpoint, 0.0), (onnx_file, 0.001)):
        out = tmp_path / model.suffix.lstrip(".")
        cfg = compose_config([f"checkpoint={model}", f"input={photos}", f"output={out}", *TTA], "predict")
        with one_thread():
            written = predict(cfg, out)
        assert [p.stem for p in written] == [p.stem for p in images] and len(written) == len(expected) > 0
        got = [np.asarray(Image.open(p)) for p in written]
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            assert (g != e).mean() <= tolerance
        # The augmentation acts: one scale without flips gives other masks on these images.
        assert sum(int((g != s).sum()) for g, s in zip(got, single)) > 0
