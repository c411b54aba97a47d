"""Colour masks, overlays and legends for predictions (TensorBoard grids, deeplab.predict)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOR = (255, 255, 255)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 to show an (H, W, C) image: its first three channels, or its first one as gray."""
    if image.shape[2] >= 3:
        return np.ascontiguousarray(image[..., :3])
    return np.repeat(image[..., :1], 3, axis=2)


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


def image_overlay(
    image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.6, keep: np.ndarray | None = None
) -> np.ndarray:
    """Blend a (H, W, 3) uint8 colour mask over a (H, W, 3) uint8 photo with opacity alpha; pixels where the
    (H, W) bool `keep` is true (the background) stay as the photo."""
    if image.shape != color_mask.shape:
        raise ValueError(f"image {image.shape} and mask {color_mask.shape} differ in shape")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color_mask.astype(np.float32)
    out = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if keep is not None:
        out[keep] = image[keep]
    return out


def draw_legend(image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """The image with a legend in its top-left corner: a swatch of each class's colour and its name.
    Left out where it would cover more than half the image (tiny images)."""
    if not entries:
        return image
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas, "RGBA")
    line, pad = 14, 4
    width = pad * 3 + 10 + max(int(draw.textlength(name)) for name, _ in entries)
    height = pad * 2 + line * len(entries)
    if width * height > image.shape[0] * image.shape[1] / 2:
        return image
    draw.rectangle((0, 0, width, height), fill=(0, 0, 0, 160))
    for k, (name, color) in enumerate(entries):
        y = pad + k * line
        draw.rectangle((pad, y + 2, pad + 10, y + 12), fill=tuple(int(c) for c in color))
        draw.text((pad * 2 + 10, y), name, fill=(255, 255, 255))
    return np.asarray(canvas)
