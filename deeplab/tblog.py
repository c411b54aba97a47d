"""TensorBoard output: namespaced scalars, example grids, and hyperparameters for comparing runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from deeplab.config import flatten
from deeplab.visualize import display_rgb, draw_segmentation_map

# metrics.json key -> TensorBoard tag
METRIC_TAGS = {
    "pixel_acc": "val/pixel_acc",
    "mean_acc": "val/mean_acc",
    "miou": "val/mIoU",
    "fwiou": "val/FWIoU",
}


def open_writer(run_dir: Path, purge_step: int | None = None) -> SummaryWriter:
    """Writer under run_dir/tensorboard; purge_step drops events from that step on (logged after the checkpoint a run resumes from)."""
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def log_val_metrics(
    writer: SummaryWriter, metrics: Mapping[str, Any], class_names: Sequence[str], step: int
) -> None:
    for key, tag in METRIC_TAGS.items():
        writer.add_scalar(tag, metrics[key], step)
    for name, iou in zip(class_names, metrics["iou_per_class"]):
        if iou is not None and not math.isnan(iou):
            writer.add_scalar(f"val/IoU/{name}", iou, step)


def example_strip(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette: np.ndarray, ignore_index: int
) -> np.ndarray:
    """(H, W, C) photo, (H, W) truth and prediction -> (H, 3W, 3) uint8 strip: input (its first three
    channels) | truth | prediction."""
    return np.concatenate(
        [
            display_rgb(image),
            draw_segmentation_map(truth, palette, ignore_index),
            draw_segmentation_map(pred, palette, ignore_index),
        ],
        axis=1,
    )


def log_examples(
    writer: SummaryWriter,
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    palette: np.ndarray,
    ignore_index: int,
    step: int,
) -> None:
    for i, (image, truth, pred) in enumerate(examples):
        writer.add_image(
            f"val/example_{i}",
            example_strip(image, truth, pred, palette, ignore_index),
            step,
            dataformats="HWC",
        )


def log_confusion_matrix(writer: SummaryWriter, figure: np.ndarray, step: int) -> None:
    """The validation's row-normalised confusion matrix, an (H, W, 3) uint8 figure (deeplab.report)."""
    writer.add_image("val/confusion_matrix", figure, step, dataformats="HWC")


def flat_hparams(
    cfg: Mapping[str, Any],
    sections: Sequence[str] = ("model", "backbone", "optim", "schedule", "trainer", "loss"),
) -> dict[str, Any]:
    """Dotted scalar hyperparameters of the run (lists and null become strings), plus the dataset name."""
    leaves = flatten({s: cfg[s] for s in sections if s in cfg})
    out = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in leaves.items()}
    out["dataset.name"] = str(cfg.get("dataset", {}).get("name", ""))
    return out


def log_train(
    writer: SummaryWriter, step: int, losses: Mapping[str, float], lr: float, images_per_sec: float
) -> None:
    """Mean losses of the last interval ("loss", and "main"/"aux" with an auxiliary head), lr, speed."""
    writer.add_scalar("train/loss", losses["loss"], step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/images_per_sec", images_per_sec, step)
    if "aux" in losses:
        writer.add_scalar("train/loss_main", losses["main"], step)
        writer.add_scalar("train/loss_aux", losses["aux"], step)


def log_hparams(writer: SummaryWriter, hparams: dict[str, Any], metrics: Mapping[str, Any]) -> None:
    """Hyperparameters with the final metrics, in the same run directory (TensorBoard's HPARAMS tab)."""
    final = {f"hparam/{k}": float(metrics[k]) for k in METRIC_TAGS}
    writer.add_hparams(hparams, final, run_name=".")
