"""The evaluation loop: one confusion matrix over whole images or windows (validation in training, evaluate.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deeplab.config import EvalConfig
from deeplab.data.loaders import batches
from deeplab.evaluation.metrics import ConfusionMatrix
from deeplab.evaluation.multilabel_metrics import MultiLabelMetrics
from deeplab.models.inference import predict_probs
from deeplab.runtime import Normalizer, Runtime, distributed

log = logging.getLogger(__name__)

# One scale, no flip, the whole image at once: evaluate()'s default settings (configs/eval/default.yaml's).
WHOLE = EvalConfig(
    output_stride=None, scales=[1.0], flip=False, mode="whole", window=513, overlap=0.33, batch_size=1
)

# photo (H, W, 3) uint8, truth (H, W), prediction (H, W); multi-label: truth and prediction (C, H, W) 0 / 1 (/ ignore)
Example = tuple[np.ndarray, np.ndarray, np.ndarray]
BYTES_PER_PIXEL = 1024  # inference memory of whole-image DeepLab (ResNet-101, fp32, OS 8 or 16), measured
_warned_memory = False


@dataclass
class Evaluation:
    cm: ConfusionMatrix | MultiLabelMetrics  # summed over DDP ranks; the latter for a multi-label model
    examples: list[Example]
    num_images: int  # images scored (over all ranks); bad ones left out with dataset.skip_bad are not


def free_memory(device: torch.device) -> int | None:
    """Bytes free on the device (for the CPU, MemAvailable of /proc/meminfo), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def warn_if_too_large(
    height: int, width: int, scales: Sequence[float], mode: str, device: torch.device
) -> None:
    """Warn once when whole-image inference of an image this size is unlikely to fit in free memory."""
    global _warned_memory
    if _warned_memory or mode != "whole":
        return
    need = height * width * max(scales) ** 2 * BYTES_PER_PIXEL
    free = free_memory(device)
    if free is not None and need > 0.5 * free:
        _warned_memory = True
        log.warning(
            "evaluating whole %dx%d images needs about %.1f GB at scale %g (%.1f GB free on %s); if memory runs "
            "out, evaluate in windows with eval.mode=slide (eval.window=513)",
            width, height, need / 1e9, max(scales), free / 1e9, device,
        )  # fmt: skip


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    rt: Runtime,
    normalize: Normalizer,
    ev: EvalConfig = WHOLE,
    *,
    num_classes: int,
    ignore_index: int,
    num_examples: int = 0,
    progress: bool = False,
    multilabel: bool = False,
    threshold: float = 0.5,
) -> Evaluation:
    """Confusion matrix of `model` over whole images (summed over DDP ranks), and a few examples, with the
    eval.* settings' scales, flip, mode (whole or slide), window and overlap (WHOLE: one scale, no flip, the
    whole image; the output stride is evaluate_as_configured's).

    Batches of differently sized images are padded by the loader; each such image is then run alone on
    its own pixels, so the result does not depend on the batch size. A multi-label model (masks (B, C, H, W))
    is scored per class at `threshold` (MultiLabelMetrics).
    """
    was_training = model.training
    model.eval()
    # Whole images come in many sizes: cudnn autotuning would search again for every new shape.
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    cm: ConfusionMatrix | MultiLabelMetrics = (
        MultiLabelMetrics(num_classes, ignore_index, rt.device)
        if multilabel
        else ConfusionMatrix(max(num_classes, 2), ignore_index=ignore_index, device=rt.device)
    )
    examples: list[Example] = []
    scored, largest = 0, 0
    bar = tqdm(batches(loader), total=len(loader), desc="eval", disable=not progress, leave=False)
    for images, masks, sizes in bar:
        if not len(images):  # every image of the batch was unreadable (dataset.skip_bad)
            continue
        scored += len(images)
        if int(sizes.prod(dim=1).max()) > largest:
            largest = int(sizes.prod(dim=1).max())
            h, w = sizes[int(sizes.prod(dim=1).argmax())].tolist()
            warn_if_too_large(h, w, ev.scales, ev.mode, rt.device)
        images = images.to(rt.device, non_blocking=True)
        masks = masks.to(rt.device, non_blocking=True)
        full = tuple(images.shape[-2:])
        if all(tuple(s) == full for s in sizes.tolist()):
            parts = [(images, masks)]
        else:
            parts = [
                (images[i : i + 1, :, :h, :w], masks[i : i + 1, ..., :h, :w])
                for i, (h, w) in enumerate(sizes.tolist())
            ]
        for imgs, truth in parts:
            with rt.autocast():
                probs = predict_probs(
                    model, normalize(imgs), scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
                    overlap=ev.overlap, multilabel=multilabel,
                )  # fmt: skip
            pred = probs > threshold if multilabel else probs.argmax(1)  # (B, C, H, W) or (B, H, W)
            cm.update(pred, truth)
            for i in range(min(num_examples - len(examples), imgs.shape[0])):
                examples.append(
                    (
                        imgs[i].permute(1, 2, 0).cpu().numpy(),
                        truth[i].cpu().numpy(),
                        pred[i].to(torch.uint8).cpu().numpy(),
                    )  # fmt: skip
                )
    cm.all_reduce()
    model.train(was_training)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    total = distributed.sum_over_ranks({"images": float(scored)}, rt.device)["images"]
    return Evaluation(cm, examples, int(total))


@contextlib.contextmanager
def at_output_stride(model: nn.Module, output_stride: int | None) -> Iterator[None]:
    """eval.output_stride for the duration of an evaluation (null: the model's own); the model's own output
    stride is restored after it (validation in training, where training continues at its stride)."""
    before = getattr(model, "output_stride", None)
    if output_stride is None or before is None or output_stride == before:
        yield
        return
    model.set_output_stride(output_stride)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_output_stride(before)  # type: ignore[operator]


def evaluate_as_configured(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    rt: Runtime,
    normalize: Normalizer,
    ev: EvalConfig,
    *,
    num_classes: int,
    ignore_index: int,
    num_examples: int = 0,
    progress: bool = False,
    multilabel: bool = False,
    threshold: float = 0.5,
) -> Evaluation:
    """evaluate() with the eval.* settings (output stride, scales, flip, whole or slide, window, overlap; the
    loader carries eval.batch_size): the one way evaluate.py and validation in training score a model."""
    with at_output_stride(model, ev.output_stride):
        return evaluate(
            model, loader, rt, normalize, ev, num_classes=num_classes, ignore_index=ignore_index,
            num_examples=num_examples, progress=progress, multilabel=multilabel, threshold=threshold,
        )  # fmt: skip
