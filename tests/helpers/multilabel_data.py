"""A generated multi-label dataset in dataset=folder's layouts: a square and a disc that overlap on every image.

The photo shows what the classes are (the square raises the red channel, the disc the green one, their overlap
both), so a tiny model learns all three regions in a few dozen iterations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("square", "disc")
SIZE = (40, 48)  # height, width


def shapes(seed: int, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A photo (H, W, 3) uint8 and its masks (H, W, 2) of 0 / 1: a square and a disc overlapping it."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    side = int(rng.integers(14, 20))
    y0, x0 = int(rng.integers(2, h - side - 2)), int(rng.integers(2, w - side - 2))
    square = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
    # the disc's centre on the square's right or bottom edge: about a third of it overlaps the square
    cy, cx = (y0 + side, x0 + side // 2) if rng.random() < 0.5 else (y0 + side // 2, x0 + side)
    radius = int(rng.integers(6, 9))
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    photo = rng.normal(90, 12, (h, w, 3))
    photo[..., 0] += 110 * square
    photo[..., 1] += 110 * disc
    masks = np.stack([square, disc], axis=2).astype(np.uint8)
    return np.clip(photo, 0, 255).astype(np.uint8), masks


def write_multilabel(root: Path, counts: dict[str, int], layout: str = "per_class", seed: int = 0) -> Path:
    """root/<split>/images/*.png and the masks: per_class (masks/<class>/<stem>.png, 0/1 grayscale) or
    stacked (masks/<stem>.npy, (H, W, 2)). Returns root."""
    for split, count in counts.items():
        images = root / split / "images"
        images.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            photo, masks = shapes(seed * 1000 + (0 if split == "train" else 500) + i)
            stem = f"{split}_{i:03d}"
            Image.fromarray(photo).save(images / f"{stem}.png")
            if layout == "stacked":
                (root / split / "masks").mkdir(exist_ok=True)
                np.save(root / split / "masks" / f"{stem}.npy", masks)
                continue
            for c, name in enumerate(CLASSES):
                folder = root / split / "masks" / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(masks[..., c]).save(folder / f"{stem}.png")
    return root


def multilabel_overrides(root: Path, **extra: object) -> list[str]:
    """The tiny experiment's model and trainer (configs/experiment/tiny.yaml, whose dataset is the synthetic one)
    on the generated multi-label data under root."""
    base: dict[str, object] = {
        "backbone": "resnet_tiny",
        "model.aspp.channels": 16,
        "model.decoder.low_level_channels": 8,
        "model.decoder.channels": 16,
        "optim.lr": 0.01,
        "trainer.max_iters": 4,
        "trainer.batch_size": 2,
        "trainer.crop_size": 40,
        "trainer.eval_interval": 2,
        "trainer.ckpt_interval": 2,
        "trainer.log_interval": 1,
        "trainer.num_workers": 0,
        "trainer.deterministic": "true",
        "trainer.amp": "off",
        "trainer.precise_bn": 0,
        "logger.num_images": 2,
        "dataset": "folder",
        "dataset.multilabel": "true",
        "dataset.num_classes": len(CLASSES),
        "dataset.class_names": "[" + ",".join(CLASSES) + "]",
        "dataset.train.images": root / "train" / "images",
        "dataset.train.masks": root / "train" / "masks",
        "dataset.val.images": root / "val" / "images",
        "dataset.val.masks": root / "val" / "masks",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
