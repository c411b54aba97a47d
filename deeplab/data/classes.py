"""Class names and colour maps: the 21 Pascal VOC classes and the standard VOC colour map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Colour of the ignore label 255 in the VOC map (the light boundary band of VOC masks).
VOC_IGNORE_COLOR = (224, 224, 192)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC colour map (n, 3) uint8: bits of the index spread over R, G, B from the top bit down."""
    index = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def color_table(colors: Sequence[Sequence[int]] | None, size: int = 256) -> np.ndarray:
    """A (size, 3) uint8 map whose first rows are `colors` and the rest the VOC map, so every id has a colour."""
    table = voc_colormap(size)
    if colors is not None:
        given = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
        given = given[:size]
        table[: len(given)] = np.clip(given, 0, 255)
    return table
