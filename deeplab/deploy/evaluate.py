"""`python evaluate.py checkpoint=PATH`: a checkpoint's (or an exported ONNX or OpenVINO model's) metrics on its
validation set."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from deeplab import data
from deeplab.artifacts.locate import locate
from deeplab.config import DatasetConfig, EvaluateConfig, evaluate_config
from deeplab.data.loaders import build_val_loader, shut_down_workers
from deeplab.deploy.restore import dataset_with_overrides, load_trained_model, run_settings
from deeplab.errors import ExportError
from deeplab.evaluation import collapse, report
from deeplab.evaluation.loop import evaluate_as_configured
from deeplab.evaluation.metrics import format_table, write_metrics_json
from deeplab.evaluation.multilabel_metrics import MultiLabelMetrics
from deeplab.runtime import Runtime, make_runtime

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: EvaluateConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate cfg.checkpoint (a checkpoint, or an ONNX file) with the options in cfg.eval; writes
    run_dir/metrics.json and returns it, with the confusion matrix added."""
    cfg = evaluate_config(cfg)
    located = locate(cfg.checkpoint)
    if located.is_graph:
        return evaluate_graph(cfg, located.path, located.kind, run_dir)
    model, card = load_trained_model(located.path)
    rt = make_runtime(cfg.device, *run_settings(cfg.amp, cfg.channels_last, card), key="")
    dataset = dataset_with_overrides(card.dataset, cfg.dataset)
    if cfg.eval.output_stride is not None:
        model.set_output_stride(cfg.eval.output_stride)
    rt.place(model)
    return evaluate_model(model, dataset, cfg, rt, run_dir)


def evaluate_graph(cfg: EvaluateConfig, path: Path, kind: str, run_dir: Path) -> dict[str, Any]:
    """An exported model, run with ONNX Runtime or OpenVINO, on the validation set its metadata records (the
    training config's dataset section; cfg.dataset overrides where it lies)."""
    from deeplab.deploy.graph import load_graph_model

    model = load_graph_model(path, kind, cfg.eval.output_stride, cfg.amp, cfg.channels_last, cfg.device)
    dataset = dataset_with_overrides(onnx_dataset(model.meta, cfg.checkpoint), cfg.dataset)
    rt = make_runtime("cpu", "off", False, key="")  # the graph runtimes take and return host arrays
    return evaluate_model(model, dataset, cfg, rt, run_dir)


def onnx_dataset(meta: dict[str, Any], path: str) -> dict[str, Any]:
    """The dataset section an ONNX file's metadata records (what building the validation split reads),
    upgraded as a checkpoint's is."""
    from deeplab.config.upgrade import upgrade_config

    if meta.get("dataset") is None:
        raise ExportError(
            f"model {path} does not record the dataset it was trained on (it was exported by an older version); "
            "export it again with `python -m deeplab.export checkpoint=...`, or evaluate the checkpoint"
        )
    return upgrade_config({"dataset": meta["dataset"]})["dataset"]


def evaluate_model(
    model: Any, d: DatasetConfig, cfg: EvaluateConfig, rt: Runtime, run_dir: Path
) -> dict[str, Any]:
    """Evaluate a loaded model (an nn.Module placed by rt, or a model-like object such as OnnxSegmenter:
    model(x)["out"] are logits, and it has output_stride) on the validation split of the dataset section d
    with cfg.eval; writes run_dir/metrics.json and returns it, with the confusion matrix (rows = truth) added."""
    ev = cfg.eval
    dataset = data.build_dataset(d, "val")
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
        result = evaluate_as_configured(
            model, loader, rt, rt.normalizer(d.mean, d.std), ev, num_classes=d.num_classes,
            ignore_index=d.ignore_index, progress=True, multilabel=d.multilabel, threshold=d.threshold,
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
    figure = report.write_scores_report(run_dir, result.cm, d.label_names())
    files = "confusion_matrix.csv/.png" if figure is not None else "confusion_matrix.csv (per class)"
    print(f"metrics written to {path}; {files} and per_class.csv/.md next to it")
    if isinstance(result.cm, MultiLabelMetrics):
        return metrics | record | {"confusion_counts": result.cm.counts.cpu().tolist()}
    warning = collapse.matrix_warning(result.cm.matrix, d.label_names())
    if warning:
        log.warning("%s", warning)
    return metrics | record | {"confusion_matrix": result.cm.matrix.cpu().tolist()}
