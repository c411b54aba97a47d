"""`python evaluate.py checkpoint=PATH`: a checkpoint's metrics on its validation set."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from deeplab import data
from deeplab.config import EvaluateConfig, evaluate_config
from deeplab.evaluation import evaluate
from deeplab.loaders import build_val_loader, shut_down_workers
from deeplab.metrics import format_table, write_metrics_json
from deeplab.restore import load_trained_model, with_dataset_overrides
from deeplab.runtime import make_runtime

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: EvaluateConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate cfg.checkpoint with the options in cfg.eval; writes run_dir/metrics.json and returns it."""
    cfg = evaluate_config(cfg)
    rt = make_runtime(cfg.device, cfg.amp, cfg.channels_last, key="")
    model, train_cfg = load_trained_model(cfg.checkpoint)
    train_cfg = with_dataset_overrides(train_cfg, cfg.dataset)
    ev, d = cfg.eval, train_cfg.dataset
    if ev.output_stride is not None:
        model.set_output_stride(ev.output_stride)
    rt.place(model)

    dataset = data.build_dataset(train_cfg, "val")
    loader = build_val_loader(
        dataset,
        ev.batch_size,
        cfg.num_workers,
        pin_memory=rt.device.type == "cuda",
        ignore_index=d.ignore_index,
        pad=d.mean_pixel(),
    )
    tic = time.perf_counter()
    try:
        result = evaluate(
            model, loader, rt, rt.normalizer(d.mean, d.std), num_classes=d.num_classes,
            ignore_index=d.ignore_index, scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
            overlap=ev.overlap, progress=True,
        )  # fmt: skip
    finally:
        shut_down_workers(loader)
    metrics = result.cm.compute()
    seconds = time.perf_counter() - tic
    left_out = len(dataset) - result.num_images
    print(format_table(metrics, d.label_names()))
    skipped = f" ({left_out} unreadable, left out: dataset.skip_bad)" if left_out else ""
    print(
        f"{result.num_images} of {len(dataset)} images scored{skipped} in {seconds:.1f} s | output stride "
        f"{model.output_stride} | scales {ev.scales} | flip {ev.flip} | mode {ev.mode}"
    )
    record = {"checkpoint": cfg.checkpoint, "output_stride": model.output_stride, "scales": ev.scales,
              "flip": ev.flip, "mode": ev.mode, "num_images": result.num_images, "left_out": left_out}  # fmt: skip
    path = run_dir / "metrics.json"
    write_metrics_json(path, metrics | record)
    print(f"metrics written to {path}")
    return metrics
