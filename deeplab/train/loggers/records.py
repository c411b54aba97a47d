"""What the training loop logs, whatever the logger: namespaced scalars (train/loss, val/mIoU,
val/IoU/<class>), example strips, and the flattened hyperparameters."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deeplab.config import flatten
from deeplab.visualize import display_rgb, draw_labels

# metrics.json key -> logged name
METRIC_TAGS = {
    "pixel_acc": "val/pixel_acc",
    "mean_acc": "val/mean_acc",
    "miou": "val/mIoU",
    "fwiou": "val/FWIoU",
}


def val_scalars(
    metrics: Mapping[str, Any], class_names: Sequence[str], prefix: str = "val"
) -> dict[str, float]:
    """A validation's metrics as scalars; classes absent from the validation set have no IoU (left out); a
    multi-label model's precision and recall per class too."""
    out = {f"{prefix}/{tag.split('/', 1)[1]}": float(metrics[key]) for key, tag in METRIC_TAGS.items()}
    per_class = [
        ("IoU", "iou_per_class"),
        ("precision", "precision_per_class"),
        ("recall", "recall_per_class"),
    ]
    for tag, key in per_class:  # precision and recall: a multi-label model's metrics
        for name, value in zip(class_names, metrics.get(key, [])):
            if value is not None and not math.isnan(value):
                out[f"{prefix}/{tag}/{name}"] = float(value)
    return out


def train_scalars(losses: Mapping[str, float], lr: float, images_per_sec: float) -> dict[str, float]:
    """Mean losses of the last interval ("loss", and "main"/"aux" with an auxiliary head), lr, speed."""
    out = {"train/loss": losses["loss"], "train/lr": lr, "train/images_per_sec": images_per_sec}
    if "aux" in losses:
        out |= {"train/loss_main": losses["main"], "train/loss_aux": losses["aux"]}
    return out


def example_strip(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette: np.ndarray, ignore_index: int
) -> np.ndarray:
    """(H, W, C) photo, (H, W) truth and prediction (multi-label: (K, H, W), overlapping classes blended) ->
    (H, 3W, 3) uint8 strip: input (its first three channels) | truth | prediction."""
    return np.concatenate(
        [
            display_rgb(image),
            draw_labels(truth, palette, ignore_index),
            draw_labels(pred, palette, ignore_index),
        ],
        axis=1,
    )


def flat_hparams(
    cfg: Mapping[str, Any],
    sections: Sequence[str] = ("model", "backbone", "optim", "schedule", "trainer", "loss"),
) -> dict[str, Any]:
    """Dotted scalar hyperparameters of the run (lists and null become strings), plus the dataset name."""
    leaves = flatten({s: cfg[s] for s in sections if s in cfg})
    out = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in leaves.items()}
    out["dataset.name"] = str(cfg.get("dataset", {}).get("name", ""))
    return out
