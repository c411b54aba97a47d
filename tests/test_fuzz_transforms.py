"""Property tests of the train pipeline: any image size, scale range and crop size gives crop-sized outputs,
mask values from the input's set or 255, and an image and mask that stay aligned."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplab.data.transforms import train_transform

MEAN = (0.485, 0.456, 0.406)
MEAN_PIXELS = np.array([124, 116, 104], np.uint8)  # the padding colour: MEAN * 255, rounded
STEP = 4  # image channel value per pixel of source position (images up to 64 pixels: at most 252)


def apply(transform, seed: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One draw of the pipeline, seeded as SegmentationDataset seeds it."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transform(image=image, mask=mask)
    return out["image"], out["mask"]


@settings(max_examples=80, deadline=None)
@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    lo=st.floats(0.1, 3.0, exclude_min=True),
    span=st.floats(0.0, 1.0),
    crop=st.integers(1, 96),
    hflip=st.booleans(),
    num_classes=st.integers(1, 21),
    seed=st.integers(0, 2**31 - 1),
)
def test_train_transform_outputs_crops_of_valid_aligned_labels(
    height, width, lo, span, crop, hflip, num_classes, seed
):
    hi = lo + span * (3.0 - lo)
    transform = train_transform(crop_size=crop, scale=(lo, hi), hflip=hflip, mean=MEAN, ignore_index=255)
    rows, cols = np.mgrid[0:height, 0:width]
    # The image holds STEP x its pixel position (red: column, green: row), which bilinear resizing keeps
    # (to rounding); the masks hold classes (some ignored), the column and the row of each pixel.
    image = np.stack([cols * STEP, rows * STEP, np.full_like(cols, 200)], axis=-1).astype(np.uint8)
    labels = np.array([*range(max(num_classes, 2)), 255], np.uint8)
    classes = np.random.default_rng(seed).choice(labels, size=(height, width)).astype(np.uint8)

    img, cls = apply(transform, seed, image, classes)
    _, col = apply(transform, seed, image, cols.astype(np.uint8))
    _, row = apply(transform, seed, image, rows.astype(np.uint8))

    assert img.shape == (crop, crop, 3) and img.dtype == np.uint8
    assert cls.shape == col.shape == row.shape == (crop, crop)
    assert set(np.unique(cls).tolist()) <= set(labels.tolist())

    pad = col == 255  # positions are < 64, so 255 is the padding
    assert ((row == 255) == pad).all()
    assert (cls[pad] == 255).all() and (img[pad] == MEAN_PIXELS).all()
    inside = ~pad
    # Every class label sits on the pixel it came from ...
    assert (cls[inside] == classes[row[inside], col[inside]]).all()
    # ... and so does the image: its position code is within half a pixel (plus rounding) of the mask's.
    for channel, position in ((0, col), (1, row)):
        error = np.abs(img[..., channel][inside] / STEP - position[inside])
        assert error.size == 0 or error.max() <= 0.65, f"image and mask {error.max():.2f} pixels apart"


def test_images_smaller_than_one_pixel_after_scaling():
    """A 1x1 image at scale 0.5 (or 3 pixels at 0.1) still gives a crop of ignore pixels around it."""
    transform = train_transform(crop_size=5, scale=(0.1, 0.5), hflip=False, mean=MEAN)
    img, mask = apply(transform, 0, np.zeros((1, 3, 3), np.uint8), np.zeros((1, 3), np.uint8))
    assert img.shape == (5, 5, 3) and mask.shape == (5, 5)
    assert (mask == 0).sum() >= 1 and (mask == 255).sum() >= 5 * 5 - 3  # the scaled image kept its pixels
