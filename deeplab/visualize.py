"""Colour masks and overlays for predictions (TensorBoard grids, deeplab.predict)."""

from __future__ import annotations

import numpy as np

IGNORE_COLOR = (255, 255, 255)


def draw_segmentation_map(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; the ignore label is drawn white."""
    palette = np.asarray(palette, dtype=np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    out = np.empty((*mask.shape, 3), dtype=np.uint8)
    out[:] = IGNORE_COLOR
    out[valid] = palette[mask[valid]]
    if ignore_index < len(palette):
        # A class id used as the ignore label (CamVid-style) keeps the ignore colour.
        out[mask == ignore_index] = IGNORE_COLOR
    return out


def image_overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a (H, W, 3) uint8 colour mask over a (H, W, 3) uint8 photo with opacity alpha."""
    if image.shape != color_mask.shape:
        raise ValueError(f"image {image.shape} and mask {color_mask.shape} differ in shape")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color_mask.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
