"""Albumentations pipelines on (H, W, 3) uint8 images and (H, W) id masks.

Train: random scale (image bilinear, mask nearest), pad to the crop with the image mean and the mask ignore
index, random crop, horizontal flip, optional colour jitter. Eval: the whole image, untouched.
Normalisation and conversion to tensors happen in the dataset (or on the device), not here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# albumentations asks PyPI for a newer version at import (a 2 s timeout on machines without internet).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

# Masks use INTER_NEAREST_EXACT: OpenCV's INTER_NEAREST samples at x * scale instead of the pixel centre
# (x + 0.5) * scale - 0.5, which shifts masks by up to half a pixel against the bilinear-resized image.
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT


class RandomScale(A.RandomScale):
    """albumentations' RandomScale, but a side never shrinks below one pixel.

    Albumentations truncates the scaled size (int(1 * 0.5) == 0), and OpenCV cannot resize to zero pixels.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        smallest = min(params["shape"][:2])
        return {"scale": max(params["scale"], (1.0 + 1e-6) / smallest)}


class PadToCrop(A.PadIfNeeded):
    """albumentations' PadIfNeeded, but images of more than 4 channels are padded with their per-channel
    fill too (OpenCV's copyMakeBorder takes at most 4 values)."""

    def apply(
        self, img: np.ndarray, pad_top: int, pad_bottom: int, pad_left: int, pad_right: int, **params: Any
    ) -> np.ndarray:
        if img.ndim < 3 or img.shape[2] <= 4:
            return super().apply(img, pad_top, pad_bottom, pad_left, pad_right, **params)
        fill = np.asarray(self.fill, dtype=np.float64).round().astype(img.dtype)  # (C,)
        out = np.empty(
            (img.shape[0] + pad_top + pad_bottom, img.shape[1] + pad_left + pad_right, img.shape[2]),
            img.dtype,
        )
        out[:] = fill
        out[pad_top : pad_top + img.shape[0], pad_left : pad_left + img.shape[1]] = img
        return out


def train_transform(
    crop_size: int | tuple[int, int],
    scale: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    ignore_index: int = 255,
) -> A.Compose:
    """Random scale in [scale[0], scale[1]], pad to crop_size (mean / ignore_index), random crop, flip, jitter.

    crop_size: N (N x N) or (height, width)."""
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale range must satisfy 0 < lo <= hi, got [{lo}, {hi}]")
    steps: list[A.BasicTransform] = []
    if (lo, hi) != (1.0, 1.0):
        steps.append(
            RandomScale(
                scale_limit=(lo - 1.0, hi - 1.0),  # albumentations samples 1 + U(limit)
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=MASK_INTERPOLATION,
                p=1.0,
            )
        )
    steps += [
        PadToCrop(
            min_height=crop_h,
            min_width=crop_w,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=tuple(float(m) * 255.0 for m in mean),  # the mean colour, in pixel values, per channel
            fill_mask=ignore_index,
        ),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        j = float(color_jitter)
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=1.0))
    return A.Compose(steps)
