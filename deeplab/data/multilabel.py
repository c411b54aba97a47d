"""Multi-label masks (dataset.multilabel): a pixel may have several classes at once.

A mask is (H, W, C) uint8 here and (C, H, W) as a tensor, one channel per class: 0 (absent), 1 (present) or
the ignore index. dataset=folder reads it in one of two layouts under the split's masks folder:

    masks/<class name>/<stem>.png   a binary mask per class (a class without a file for an image is absent
                                    from it; an image needs the file of at least one class)
    masks/<stem>.npy | .tif         all classes in one file: an (H, W, C) array, or a TIFF of C pages

With dataset.binary_values = [absent, present] (e.g. [0, 255]) the stored values are mapped first.
dataset=coco and dataset=labelme draw each annotation into its class's channel (RenderedMultiLabelDataset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from deeplab.data.dataset import Sample, SegmentationDataset
from deeplab.data.folder import IMAGE_SUFFIXES, MASK_SUFFIXES, files_by_stem
from deeplab.data.reading import binary_to_ids, decoding, read_mask
from deeplab.errors import DatasetError

STACKED_SUFFIXES = {".npy", ".tif", ".tiff"}


def multilabel_samples(
    images: str | Path, masks: str | Path, split: str, class_names: Sequence[str]
) -> tuple[list[Sample], list[tuple[Path | None, ...]] | None, list[str]]:
    """(samples, the per-class mask files of each sample or None for the stacked layout, listing problems).

    The layout is per class when the masks folder holds a folder named after a class, else stacked."""
    images_dir, masks_dir = Path(images).expanduser(), Path(masks).expanduser()
    problems: list[str] = []
    key = f"dataset.{split}.masks"
    image_files = files_by_stem(images_dir, IMAGE_SUFFIXES, f"dataset.{split}.images", problems)
    if not image_files:
        raise DatasetError(f"dataset.{split}.images {images_dir} holds no images")
    if not masks_dir.is_dir():  # files_by_stem raises the one-line error of a missing folder
        files_by_stem(masks_dir, MASK_SUFFIXES, key, problems)
    folders = {p.name for p in masks_dir.iterdir() if p.is_dir()}
    if not folders & set(class_names):
        stacked = files_by_stem(masks_dir, STACKED_SUFFIXES, key, problems)
        if not stacked and folders:
            raise DatasetError(
                f"{key} {masks_dir} holds folders {sorted(folders)[:4]} but none named after a class; name the "
                f"per-class folders {list(class_names)} (dataset.class_names)"
            )
        problems += [
            f"image {image_files[s]} has no mask {s}.npy / .tif in {masks_dir}"
            for s in image_files
            if s not in stacked
        ]
        return [Sample(s, image_files[s], stacked[s]) for s in image_files if s in stacked], None, problems
    per_class = []
    for name in class_names:
        if name not in folders:
            problems.append(
                f"{key} {masks_dir} has no folder {name!r} for that class; every class of dataset.class_names "
                "needs one (it may be empty)"
            )
            per_class.append({})
        else:
            per_class.append(files_by_stem(masks_dir / name, MASK_SUFFIXES, f"{key}/{name}", problems))
    samples, files = [], []
    for stem, image in image_files.items():
        found = tuple(by_stem.get(stem) for by_stem in per_class)
        first = next((f for f in found if f is not None), None)
        if first is None:
            problems.append(f"image {image} has no mask {stem}.* in any class folder of {masks_dir}")
            continue
        samples.append(Sample(stem, image, first))
        files.append(found)
    return samples, files, problems


def read_stacked(path: Path, channels: int) -> np.ndarray:
    """An (H, W, channels) stored-value mask: a .npy array (H, W, C), or a TIFF of C single-band pages."""
    with decoding(path, "mask"):
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.ndim == 2:
                array = array[..., None]
        else:
            with Image.open(path) as im:
                pages = [
                    np.asarray(page.convert("L") if page.mode in ("1", "P") else page)
                    for page in ImageSequence.Iterator(im)
                ]
            if any(p.ndim != 2 for p in pages) or len({p.shape for p in pages}) != 1:
                raise DatasetError(
                    f"mask {path}: a multi-label TIFF needs one single-band page per class, all of one size"
                )
            array = np.stack(pages, axis=2)
    if array.ndim != 3 or array.shape[2] != channels:
        raise DatasetError(
            f"mask {path} has shape {array.shape} but dataset.num_classes is {channels}; save it as (height, width, "
            f"{channels}), one channel per class (a TIFF: one page per class)"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iu" or array.min(initial=0) < 0 or array.max(initial=0) > 65535:
        raise DatasetError(f"mask {path} holds {array.dtype} values; multi-label masks hold small integers")
    return array


def multilabel_counts(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """Counts of an (H, W, C) multi-label mask laid out as the label statistics keep them: present pixels per
    class at 0..C-1, the ignored (pixel, class) pairs at the ignore index (as a single-label mask's counts), then
    the absent pixels per class in the last C entries (what loss.pos_weight=auto weighs against)."""
    classes = mask.shape[2]
    counts = np.zeros(max(classes, ignore_index + 1) + classes, dtype=np.int64)
    counts[:classes] = (mask == 1).sum(axis=(0, 1))
    counts[ignore_index] += int((mask == ignore_index).sum())
    counts[-classes:] = (mask == 0).sum(axis=(0, 1))
    return counts


def present_absent(counts: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(present, absent) pixels per class of multilabel_counts (summed over masks)."""
    return counts[:classes], counts[-classes:]


class MultiLabelDataset(SegmentationDataset):
    """Items (image (C_in, H, W) uint8, mask (num_classes, H, W) uint8 of 0 / 1 / ignore_index)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        class_files: list[tuple[Path | None, ...]] | None,
        binary_values: tuple[int, int] | None = None,
        **common: object,
    ) -> None:
        super().__init__(samples, **common)  # type: ignore[arg-type]
        self.num_labels = self.num_classes  # no background label: each class is present or not
        self.class_files = class_files
        self.binary_values = binary_values
        self.multilabel = True

    def mask_files(self, index: int) -> list[Path]:
        if self.class_files is None:
            return [self.samples[index].mask]
        return [f for f in self.class_files[index] if f is not None]

    def _binary(self, values: np.ndarray, path: Path) -> np.ndarray:
        """Stored values -> 0 / 1 / ignore (uint8); anything else is a DatasetError naming the file."""
        if self.binary_values is not None:
            return binary_to_ids(values, self.binary_values, self.ignore_index, path)
        other = (values != 0) & (values != 1) & (values != self.ignore_index)
        if other.any():
            found = np.unique(values[other])[:6].tolist()
            raise DatasetError(
                f"mask {path} has values {found} besides 0 (absent), 1 (present) and the ignore index "
                f"{self.ignore_index}; multi-label masks are binary per class: set dataset.binary_values (e.g. [0, "
                "255]) to the values they are stored with"
            )
        return values.astype(np.uint8)

    def read_masks(self, index: int) -> np.ndarray:
        """Sample `index`'s (H, W, C) uint8 mask of 0 / 1 / ignore."""
        if self.class_files is None:
            path = self.samples[index].mask
            stored = read_stacked(path, self.num_classes)
            return np.stack([self._binary(stored[..., c], path) for c in range(self.num_classes)], axis=2)
        return self._per_class(index)

    def load_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, C) uint8 of 0 / 1 / ignore, and its counts (see multilabel_counts)."""
        mask = self.read_masks(index)
        return mask, multilabel_counts(mask, self.ignore_index)

    def _per_class(self, index: int) -> np.ndarray:
        assert self.class_files is not None
        files = self.class_files[index]
        layers: list[np.ndarray | None] = []
        shape: tuple[int, ...] | None = None
        for path in files:
            if path is None:
                layers.append(None)
                continue
            layer = self._binary(read_mask(path), path)
            if shape is not None and layer.shape != shape:
                first = next(f for f in files if f is not None)
                raise DatasetError(
                    f"mask {path} is {layer.shape[1]}x{layer.shape[0]} but {first} is {shape[1]}x{shape[0]} "
                    "(width x height); the masks of one image must be the same size"
                )
            shape = layer.shape
            layers.append(layer)
        assert shape is not None  # the listing keeps only images with at least one class file
        return np.stack([np.zeros(shape, np.uint8) if m is None else m for m in layers], axis=2)


class RenderedMultiLabelDataset(MultiLabelDataset):
    """Multi-label masks drawn from annotations (COCO, labelme), each annotation into its class's channel, so
    that overlapping annotations are all kept: render(index) -> (H, W, C) uint8 of 0 / 1 / ignore."""

    def __init__(
        self, samples: Sequence[Sample], render: Callable[[int], np.ndarray], **common: object
    ) -> None:
        super().__init__(samples, None, None, **common)
        self.render = render

    def read_masks(self, index: int) -> np.ndarray:
        return self.render(index)
