"""A segmentation dataset over a list of (image file, mask file) pairs: read, check, augment, to tensors."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from deeplab.data.reading import (
    check_mask_values,
    class_pixel_counts,
    exif_orientation,
    read_image,
    read_mask,
)
from deeplab.errors import DatasetError

if TYPE_CHECKING:
    import albumentations as A

log = logging.getLogger(__name__)

MAX_WORKERS = 64  # DataLoader workers whose skipped samples are counted apart (more share the slots)


@dataclass(frozen=True)
class MaskDecoding:
    """How a mask file's stored values become class ids (read_mask, then the label map)."""

    colors: np.ndarray | None = None  # (K, 3) colours of colour-coded masks, their ids in color_ids (K,)
    color_ids: np.ndarray | None = None
    binary_values: tuple[int, int] | None = None  # (background, foreground) values of 0/255-style masks
    label_map: np.ndarray | None = (
        None  # (256,) uint8 lookup table stored value -> id (Cityscapes, ADE20K, CamVid)
    )
    # Names stored values outside the official label table, which label_map reads as ignored (Cityscapes):
    # a problem with strict (python -m deeplab.data.check), else a warning, once per dataset.
    unlisted: Callable[[np.ndarray, Path], str | None] | None = None
    strict: bool = False


@dataclass(frozen=True)
class Sample:
    """One example: an image file and its mask file (.png of ids, colour-coded .png, or SBD .mat)."""

    id: str
    image: Path
    mask: Path


def missing_files(samples: Sequence[Sample]) -> list[str]:
    """Messages for samples whose image or mask file does not exist (cheap existence checks)."""
    problems = []
    for s in samples:
        for kind, path in (("image", s.image), ("mask", s.mask)):
            if not path.is_file():
                problems.append(f"{s.id}: {kind} {path} does not exist")
    return problems


def split_folder(parent: Path, split: str, dataset: str) -> Path:
    """parent/split, or a one-line DatasetError listing the splits that parent holds."""
    folder = parent / split
    if not folder.is_dir():
        found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise DatasetError(
            f"{dataset} split {split!r} not found: {folder} does not exist (splits here: "
            f"{', '.join(found) or 'none'}); set dataset.train_split / dataset.val_split to one of them"
        )
    return folder


def raise_if_missing(samples: Sequence[Sample], where: str, listing_problems: Sequence[str] = ()) -> None:
    """One-line DatasetError summarising missing files of a split list (first ones named, then a count)."""
    problems = [*listing_problems, *missing_files(samples)]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise DatasetError(
            f"{where}: {'; '.join(problems[:2])}{more}; re-extract or re-prepare the dataset "
            "(`python -m deeplab.data.check` lists every problem)"
        )


class SegmentationDataset(Dataset):
    """Items (image, mask): image (C, H, W) uint8 (C = dataset.in_channels, 3 for RGB), mask (H, W) ids with the ignore
    index kept (multi-label datasets, deeplab.data.multilabel: (num_classes, H, W) of 0 / 1 / ignore).

    Masks are uint8 where the labels fit (int64 otherwise): 8x less to pass from the DataLoader workers and
    to copy to the GPU. Images are normalised on the device (deeplab.runtime.Normalizer).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        ignore_index: int = 255,
        transform: A.Compose | None = None,
        masks: MaskDecoding = MaskDecoding(),
        in_channels: int = 3,
        skip_bad: bool = False,
        substitute: bool = True,
        name: str = "dataset",
        check_files: bool = True,
        listing_problems: Sequence[str] = (),
    ) -> None:
        self.samples = list(samples)
        self.num_classes = int(num_classes)
        # one class means a binary task (one logit): its masks hold 0 (background) and 1
        self.num_labels = max(self.num_classes, 2)
        self.ignore_index = int(ignore_index)
        self.transform = transform
        self.compact = 0 <= self.ignore_index <= 255 and self.num_labels <= 256
        self.masks = masks
        self._warned = torch.zeros(1, dtype=torch.bool)
        if masks.unlisted is not None:
            self._warned.share_memory_()  # DataLoader workers warn once between them
        self.in_channels = in_channels
        self.skip_bad = skip_bad
        # With skip_bad, a bad training sample is replaced by the next good one (a batch keeps its size); a bad
        # evaluation sample is left out (None), so that no image is scored twice.
        self.substitute = substitute
        self.name = name
        # Samples skipped per process (slot 0: the main process, 1 + id: DataLoader worker id), in shared
        # memory with skip_bad so that the main process sees what its workers skipped.
        self._skips = torch.zeros(MAX_WORKERS + 1, dtype=torch.int64)
        if skip_bad:
            self._skips.share_memory_()
        # Problems found while listing the files (e.g. an image without a mask): the check command reports
        # them with the rest; a training or evaluation run stops on them here.
        self.listing_problems = list(listing_problems)
        self.multilabel = False  # masks (H, W) of class ids; deeplab.data.multilabel's are (C, H, W)
        if check_files:
            raise_if_missing(self.samples, name, self.listing_problems)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far (dataset.skip_bad), in this process and its DataLoader workers."""
        return int(self._skips.sum())

    def mask_files(self, index: int) -> list[Path]:
        """The files sample `index`'s mask is read from (what its cached label counts depend on)."""
        return [self.samples[index].mask]

    def load_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and check one mask: (H, W) ids, pixel counts per id value."""
        path, decoding = self.samples[index].mask, self.masks
        mask = read_mask(path, decoding.colors, decoding.color_ids, decoding.binary_values, self.ignore_index)
        if decoding.label_map is not None:
            if mask.dtype != np.uint8:
                raise DatasetError(f"mask {path} holds values above 255; this dataset's masks are 8-bit ids")
            problem = decoding.unlisted(mask, path) if decoding.unlisted is not None else None
            if problem is not None and decoding.strict:
                raise DatasetError(problem)
            if problem is not None and not bool(self._warned[0]):
                self._warned[0] = True
                log.warning("%s (warned once; python -m deeplab.data.check lists every such mask)", problem)
            mask = decoding.label_map[mask]
        counts = class_pixel_counts(mask, self.num_labels, self.ignore_index)
        check_mask_values(counts, self.num_labels, self.ignore_index, path)
        return mask, counts

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read and check one example: image (H, W, C) uint8, mask (H, W) ids, pixel counts per id value."""
        sample = self.samples[index]
        image = read_image(sample.image, self.in_channels)
        mask, counts = self.load_mask(index)
        if image.shape[:2] != mask.shape[:2]:
            orientation = exif_orientation(sample.image)
            exif = (
                f"; the image was turned upright by its EXIF orientation ({orientation}), as annotation tools "
                "display it: if the mask was drawn on the stored pixels, remove the image's orientation tag"
                if orientation != 1
                else ""
            )
            raise DatasetError(
                f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but its mask {sample.mask} is "
                f"{mask.shape[1]}x{mask.shape[0]} (width x height); they must be the same size{exif}"
            )
        return image, mask, counts

    def _reseed(self, seed: int | None) -> None:
        # Albumentations keeps its own RNG, which forked DataLoader workers would all copy. The training
        # sampler hands each item its own seed (so a resumed run repeats the same crops); without one, draw
        # it from torch's RNG, which the DataLoader seeds per worker (and trainer.seed makes reproducible).
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def _item(self, index: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask, _ = self.load(index)
        if self.transform is not None:
            self._reseed(seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if image.ndim == 2:  # albumentations may drop the channel axis of one-band images
            image = image[..., None]
        image_t = torch.from_numpy(
            np.stack(cv2.split(np.ascontiguousarray(image)), axis=0)
        )  # (C, H, W) uint8
        mask_t = torch.from_numpy(mask.astype(np.uint8 if self.compact else np.int64))  # (H, W)
        if mask_t.ndim == 3:  # multi-label: (H, W, C) -> (C, H, W)
            mask_t = mask_t.permute(2, 0, 1).contiguous()
        return image_t, mask_t

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """item: an index, or (index, augmentation seed) as deeplab.data.sampling.ResumableSampler yields.

        With skip_bad, None for a bad sample when not substituting (evaluation: collate_eval drops it)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        if not self.skip_bad:
            return self._item(index, seed)
        tries = min(len(self), 16) if self.substitute else 1
        for attempt in range(tries):
            try:
                return self._item((index + attempt) % len(self), seed)
            except DatasetError as e:
                worker = torch.utils.data.get_worker_info()
                self._skips[0 if worker is None else 1 + worker.id % MAX_WORKERS] += 1
                log.warning("skipped a bad sample (%d so far): %s", self.skipped, e)
        if not self.substitute:
            return None
        raise DatasetError(f"{self.name}: {tries} bad samples in a row from index {index}; check the dataset")


class RenderedDataset(SegmentationDataset):
    """A dataset whose masks are drawn from annotations (COCO, labelme) instead of read from mask files:
    render(index) -> (H, W) uint8 class ids. Sample.mask is the annotation file, named in errors."""

    def __init__(
        self, samples: Sequence[Sample], render: Callable[[int], np.ndarray], **common: object
    ) -> None:
        super().__init__(samples, **common)  # type: ignore[arg-type]
        self.render = render

    def load_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        mask = self.render(index)
        counts = class_pixel_counts(mask, self.num_labels, self.ignore_index)
        check_mask_values(counts, self.num_labels, self.ignore_index, self.samples[index].mask)
        return mask, counts
