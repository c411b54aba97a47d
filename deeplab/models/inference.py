"""Per-pixel class probabilities for whole images: multi-scale, flip and sliding-window inference."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def logits_to_probs(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, max(C, 2), H, W) probabilities; one channel means sigmoid foreground. A
    multi-label model's: (B, C, H, W), a sigmoid per class."""
    if multilabel:
        return torch.sigmoid(logits)
    if logits.shape[1] == 1:
        fg = torch.sigmoid(logits)
        return torch.cat([1.0 - fg, fg], dim=1)
    return torch.softmax(logits, dim=1)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)["out"].float()


def slide_logits(model: nn.Module, x: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
    """Logits of a large image from overlapping window x window crops, averaged where they overlap."""
    _, _, h, w = x.shape
    # Images smaller than the window are padded with 0, the normalised mean colour.
    ph, pw = max(window - h, 0), max(window - w, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hp, wp = x.shape[-2:]
    step = max(int(window * (1.0 - overlap)), 1)
    rows = max(math.ceil((hp - window) / step), 0) + 1
    cols = max(math.ceil((wp - window) / step), 0) + 1
    out: torch.Tensor | None = None
    count = torch.zeros((1, 1, hp, wp), device=x.device)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * step, hp - window)
            x0 = min(c * step, wp - window)
            logits = _forward(model, x[:, :, y0 : y0 + window, x0 : x0 + window])
            if out is None:
                out = x.new_zeros((x.shape[0], logits.shape[1], hp, wp), dtype=torch.float32)
            out[:, :, y0 : y0 + window, x0 : x0 + window] += logits
            count[:, :, y0 : y0 + window, x0 : x0 + window] += 1
    assert out is not None
    return (out / count)[:, :, :h, :w]


def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    window: int = 513,
    overlap: float = 0.33,
    multilabel: bool = False,
) -> torch.Tensor:
    """Average of class probabilities over scales (and horizontal flips), at the input's size.

    x: (B, 3, H, W) normalised images. Returns (B, max(C, 2), H, W) float32 (multilabel: (B, C, H, W), each
    class's sigmoid).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    size = x.shape[-2:]
    total: torch.Tensor | None = None
    n = 0
    for scale in scales:
        xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            inp = xs.flip(-1) if flipped else xs
            logits = slide_logits(model, inp, window, overlap) if mode == "slide" else _forward(model, inp)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = logits_to_probs(logits, multilabel)
            total = probs if total is None else total + probs
            n += 1
    assert total is not None
    return total / n
