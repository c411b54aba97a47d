"""Custom data: an images folder and a masks folder per split, matched by file stem."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deeplab.data.dataset import Sample
from deeplab.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".npy"}
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}


def files_by_stem(folder: Path, suffixes: set[str], key: str, problems: list[str]) -> dict[str, Path]:
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise DatasetError(f"{key} {folder} {what}; point {key} at the folder of files")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.stem in files:
            problems.append(
                f"{key} {folder} holds two files with the stem {path.stem!r} ({files[path.stem].name}, "
                f"{path.name}); images and masks are matched by stem, so stems must be unique"
            )
            continue
        files[path.stem] = path
    return files


def folder_samples(images: str | Path, masks: str | Path, split: str) -> tuple[list[Sample], list[str]]:
    """Pairs of image and mask with the same stem, and the problems of the listing (an image without a
    mask, two files of one stem), one line each; a missing folder is raised at once."""
    images_dir, masks_dir = Path(images).expanduser(), Path(masks).expanduser()
    problems: list[str] = []
    image_files = files_by_stem(images_dir, IMAGE_SUFFIXES, f"dataset.{split}.images", problems)
    mask_files = files_by_stem(masks_dir, MASK_SUFFIXES, f"dataset.{split}.masks", problems)
    if not image_files:
        raise DatasetError(
            f"dataset.{split}.images {images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    problems += [
        f"image {image_files[s]} has no mask with the stem {s!r} in {masks_dir}"
        for s in image_files
        if s not in mask_files
    ]
    orphans = len(set(mask_files) - set(image_files))
    if orphans:
        log.warning("%d mask(s) in %s have no image in %s and are not used", orphans, masks_dir, images_dir)
    return [Sample(s, image_files[s], mask_files[s]) for s in image_files if s in mask_files], problems


def color_lookup(
    palette: Sequence[Sequence[int]] | None, ignore_color: Sequence[int] | None, ignore_index: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Colours (K, 3) and their ids (K,) for colour-coded masks: palette row i is class i; ignore_color -> ignore."""
    if palette is None:
        return None, None
    colors = [tuple(c) for c in palette]  # validated by the config schema: unique [r, g, b] in 0..255
    ids = list(range(len(colors)))
    if ignore_color is not None:
        colors.append(tuple(ignore_color))
        ids.append(ignore_index)
    return np.asarray(colors, dtype=np.uint8), np.asarray(ids, dtype=np.int64)
