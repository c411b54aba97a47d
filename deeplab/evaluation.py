"""The evaluation loop: one confusion matrix over whole images (validation in training, evaluate.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deeplab.inference import predict_probs
from deeplab.loaders import batches
from deeplab.metrics import ConfusionMatrix
from deeplab.runtime import Normalizer, Runtime

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # photo (H, W, 3) uint8, truth (H, W), prediction (H, W)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    rt: Runtime,
    normalize: Normalizer,
    *,
    num_classes: int,
    ignore_index: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    window: int = 513,
    overlap: float = 0.33,
    num_examples: int = 0,
    progress: bool = False,
) -> tuple[ConfusionMatrix, list[Example]]:
    """Confusion matrix of `model` over whole images (summed over DDP ranks), and a few examples.

    Batches of differently sized images are padded by the loader; each such image is then run alone on
    its own pixels, so the result does not depend on the batch size.
    """
    was_training = model.training
    model.eval()
    # Whole images come in many sizes: cudnn autotuning would search again for every new shape.
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    cm = ConfusionMatrix(max(num_classes, 2), ignore_index=ignore_index, device=rt.device)
    examples: list[Example] = []
    bar = tqdm(batches(loader), total=len(loader), desc="eval", disable=not progress, leave=False)
    for images, masks, sizes in bar:
        images = images.to(rt.device, non_blocking=True)
        masks = masks.to(rt.device, non_blocking=True)
        full = tuple(images.shape[-2:])
        if all(tuple(s) == full for s in sizes.tolist()):
            parts = [(images, masks)]
        else:
            parts = [
                (images[i : i + 1, :, :h, :w], masks[i : i + 1, :h, :w])
                for i, (h, w) in enumerate(sizes.tolist())
            ]
        for imgs, truth in parts:
            with rt.autocast():
                probs = predict_probs(
                    model,
                    normalize(imgs),
                    scales=scales,
                    flip=flip,
                    mode=mode,
                    window=window,
                    overlap=overlap,
                )
            pred = probs.argmax(1)  # (B, H, W)
            cm.update(pred, truth)
            for i in range(min(num_examples - len(examples), imgs.shape[0])):
                examples.append(
                    (imgs[i].permute(1, 2, 0).cpu().numpy(), truth[i].cpu().numpy(), pred[i].cpu().numpy())
                )
    cm.all_reduce()
    model.train(was_training)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return cm, examples
