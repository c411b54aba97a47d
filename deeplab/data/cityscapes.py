"""Cityscapes in its official layout: leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png and
gtFine/<split>/<city>/<stem>_gtFine_labelIds.png (or the _labelTrainIds.png that cityscapesScripts writes).
labelIds are mapped to the 19 trainIds on read (deeplab.config.labels.cityscapes_label_map)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplab.config.labels import CITYSCAPES_NUM_LABEL_IDS
from deeplab.data.dataset import Sample, split_folder
from deeplab.data.reading import class_pixel_counts
from deeplab.errors import DatasetError

CITYSCAPES_COUNTS = {"train": 2975, "val": 500, "test": 1525}
IMAGE_SUFFIX = "_leftImg8bit.png"


def is_cityscapes_dir(path: Path) -> bool:
    return (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir()


def find_cityscapes_dir(root: str | Path) -> Path:
    """The folder holding leftImg8bit and gtFine: root itself or root/cityscapes."""
    root = Path(root).expanduser()
    for candidate in (root, root / "cityscapes"):
        if is_cityscapes_dir(candidate):
            return candidate
    fix = (
        "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com "
        f"(the site needs a login) and run `python -m deeplab.data.prepare cityscapes --root {root} --archives DIR`"
    )
    if not root.exists():
        raise DatasetError(f"dataset.root {root} does not exist: expected Cityscapes there; {fix}")
    raise DatasetError(
        f"no Cityscapes under dataset.root {root}: expected {root}/leftImg8bit and {root}/gtFine; {fix}"
    )


def cityscapes_samples(root: Path, split: str, labels: str = "labelIds") -> list[Sample]:
    """Every image of leftImg8bit/<split>/*/ with its gtFine mask, sorted by city and name."""
    images_dir = split_folder(root / "leftImg8bit", split, "Cityscapes")
    samples = []
    for image in sorted(images_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        stem = image.name[: -len(IMAGE_SUFFIX)]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_{labels}.png"
        samples.append(Sample(stem, image, mask))
    if not samples:
        raise DatasetError(
            f"no *{IMAGE_SUFFIX} images in {images_dir}/<city>/; re-extract leftImg8bit_trainvaltest.zip"
        )
    return samples


def unlisted_label_ids(mask: np.ndarray, path: Path) -> str | None:
    """What is wrong with a labelIds mask (H, W) uint8 holding values that are not labelIds of the official
    table (0..33), which the label map reads as ignored; None when it holds none."""
    counts = class_pixel_counts(mask, 256, 255)
    found = np.flatnonzero(counts[CITYSCAPES_NUM_LABEL_IDS:]) + CITYSCAPES_NUM_LABEL_IDS
    if not len(found):
        return None
    shown = ", ".join(map(str, found[:6].tolist())) + (", ..." if len(found) > 6 else "")
    return (
        f"mask {path} has values {{{shown}}} that are not Cityscapes labelIds (0..{CITYSCAPES_NUM_LABEL_IDS - 1}), "
        f"so {int(counts[found].sum())} pixels are ignored; regenerate it with cityscapesScripts (json2labelImg)"
    )
