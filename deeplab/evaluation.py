"""`python evaluate.py checkpoint=PATH`: a checkpoint's metrics on its validation set."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from deeplab import data
from deeplab.engine import evaluate, resolve_amp, resolve_device, resolve_flag, write_json
from deeplab.errors import ConfigError
from deeplab.loaders import build_val_loader
from deeplab.metrics import format_table
from deeplab.restore import apply_overrides, load_trained_model

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate cfg.checkpoint with the options in cfg.eval; writes run_dir/metrics.json and returns it."""
    device = resolve_device(str(cfg.device), key="device")
    amp_dtype = resolve_amp(cfg.amp, device, key="amp")
    channels_last = resolve_flag(cfg.channels_last, device, "channels_last")
    model, train_cfg = load_trained_model(cfg.checkpoint)
    apply_overrides(train_cfg, "dataset", cfg.get("dataset"))
    ev = cfg.eval
    if ev.output_stride is not None:
        if int(ev.output_stride) not in (8, 16):
            raise ConfigError(f"eval.output_stride must be 8 or 16, got {ev.output_stride}")
        model.set_output_stride(int(ev.output_stride))
    scales = [float(s) for s in ev.scales]
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"eval.scales must be a non-empty list of positive numbers, got {list(ev.scales)}")
    if ev.mode not in ("whole", "slide"):
        raise ConfigError(f"eval.mode must be whole or slide, got {ev.mode!r}")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    dataset = data.build_dataset(train_cfg, "val", normalize=False)
    loader = build_val_loader(
        dataset, int(ev.batch_size), int(cfg.num_workers), pin_memory=device.type == "cuda",
        ignore_index=data.ignore_index(train_cfg),
    )  # fmt: skip
    tic = time.perf_counter()
    cm, _ = evaluate(
        model, loader, num_classes=int(train_cfg.dataset.num_classes), ignore_index=data.ignore_index(train_cfg),
        device=device, mean=train_cfg.dataset.mean, std=train_cfg.dataset.std, scales=scales, flip=bool(ev.flip),
        mode=str(ev.mode), window=int(ev.window), overlap=float(ev.overlap), amp_dtype=amp_dtype,
        channels_last=channels_last, progress=True,
    )  # fmt: skip
    metrics = cm.compute()
    seconds = time.perf_counter() - tic
    names = (
        data.class_names(train_cfg)
        if int(train_cfg.dataset.num_classes) > 1
        else ["background", "foreground"]
    )
    print(format_table(metrics, names))
    print(
        f"{len(dataset)} images in {seconds:.1f} s | output stride {model.output_stride} | scales {scales} | "
        f"flip {bool(ev.flip)} | mode {ev.mode}"
    )
    metrics_out = {**metrics, "checkpoint": str(cfg.checkpoint), "output_stride": model.output_stride,
                   "scales": scales, "flip": bool(ev.flip), "mode": str(ev.mode), "num_images": len(dataset)}  # fmt: skip
    path = run_dir / "metrics.json"
    write_json(path, metrics_out)
    print(f"metrics written to {path}")
    return metrics
