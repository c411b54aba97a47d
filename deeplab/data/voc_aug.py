"""trainaug: VOC 2012 train + SBD train + SBD val - VOC 2012 val (10,582 images), validated on VOC val.

Two ways people hold it: (a) VOC and SBD side by side as downloaded (SBD labels are .mat files), or
(b) the pre-converted SegmentationClassAug/*.png folder next to VOC2012. Where an image has both a VOC mask
and an SBD/Aug mask, the VOC mask is used (it carries VOC's void boundaries).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from deeplab.data.dataset import Sample
from deeplab.data.sbd import find_sbd_dir, is_sbd_dir, sbd_candidates, sbd_split_ids
from deeplab.data.voc import read_id_list, voc_sample, voc_split_ids
from deeplab.errors import DatasetError

log = logging.getLogger(__name__)

TRAINAUG_SPLIT = "train_aug"
TRAINAUG_COUNT = 10582


def trainaug_ids(voc_train: Iterable[str], voc_val: Iterable[str], sbd_ids: Iterable[str]) -> list[str]:
    """VOC train plus the SBD ids (train and val), without duplicates and without any VOC val id; sorted."""
    excluded = set(voc_val)
    return sorted((set(voc_train) | set(sbd_ids)) - excluded)


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {e.name[: -len(suffix)] for e in entries if e.name.endswith(suffix)}


def find_aug_dir(root: Path, voc_dir: Path) -> Path | None:
    """SegmentationClassAug inside VOC2012, beside it (in VOCdevkit), or directly under dataset.root."""
    for candidate in (voc_dir / "SegmentationClassAug", voc_dir.parent / "SegmentationClassAug"):
        if candidate.is_dir():
            return candidate
    candidate = Path(root) / "SegmentationClassAug"
    return candidate if candidate.is_dir() else None


def find_sbd_near(root: Path, voc_dir: Path) -> Path | None:
    """benchmark_RELEASE/dataset under or next to dataset.root, VOCdevkit or VOC2012."""
    places = [Path(root), voc_dir.parent, voc_dir.parent.parent, Path(root).parent]
    for place in dict.fromkeys(p.resolve() for p in places):
        for candidate in sbd_candidates(place):
            if is_sbd_dir(candidate):
                return candidate
    return None


def read_aug_list(path: Path) -> list[str]:
    return read_id_list(Path(path).expanduser(), hint="; fix dataset.aug_list")


def voc_aug_train_samples(
    root: str | Path,
    voc_dir: Path,
    voc_train_split: str = "train",
    voc_val_split: str = "val",
    sbd_root: str | Path | None = None,
    aug_list: str | Path | None = None,
) -> tuple[list[Sample], str]:
    """The trainaug samples and a one-line account of where they came from."""
    root = Path(root).expanduser()
    voc_val = voc_split_ids(voc_dir, voc_val_split)
    voc_pngs = _stems(voc_dir / "SegmentationClass", ".png")
    voc_jpgs = _stems(voc_dir / "JPEGImages", ".jpg")
    aug_dir = None if sbd_root is not None else find_aug_dir(root, voc_dir)
    sbd_dir = None
    if aug_dir is None:
        sbd_dir = find_sbd_dir(sbd_root) if sbd_root is not None else find_sbd_near(root, voc_dir)
    if aug_dir is None and sbd_dir is None:
        raise DatasetError(
            f"dataset=voc_aug needs SBD or SegmentationClassAug next to {voc_dir}: found neither "
            f"benchmark_RELEASE/dataset under {root} nor a SegmentationClassAug folder (set dataset.sbd_root "
            f"if SBD lies elsewhere); prepare it with `python -m deeplab.data.prepare voc_aug --root {root}`"
        )

    if aug_list is not None:
        listed = read_aug_list(Path(aug_list))
        ids = sorted(set(listed) - set(voc_val))
        if len(ids) < len(set(listed)):
            log.warning(
                "dataset.aug_list %s holds %d ids of the VOC %s split; they are left out of training",
                aug_list,
                len(set(listed)) - len(ids),
                voc_val_split,
            )
        origin = f"list {aug_list}"
    elif aug_dir is not None:
        ids = sorted(_stems(aug_dir, ".png") - set(voc_val))
        origin = f"{aug_dir} minus VOC {voc_val_split}"
    else:
        voc_train = voc_split_ids(voc_dir, voc_train_split)
        sbd_ids = sbd_split_ids(sbd_dir, "train") + sbd_split_ids(sbd_dir, "val")
        ids = trainaug_ids(voc_train, voc_val, sbd_ids)
        origin = f"VOC {voc_train_split} {len(voc_train):,} + SBD train/val {len(set(sbd_ids)):,} - VOC {voc_val_split}"

    samples = []
    n_voc_masks = 0
    for i in ids:
        if i in voc_pngs:
            # Prefer the VOC mask, with its void boundary band, whenever VOC has one.
            samples.append(voc_sample(voc_dir, i))
            n_voc_masks += 1
        elif aug_dir is not None:
            samples.append(Sample(i, voc_dir / "JPEGImages" / f"{i}.jpg", aug_dir / f"{i}.png"))
        else:
            image = voc_dir / "JPEGImages" / f"{i}.jpg" if i in voc_jpgs else sbd_dir / "img" / f"{i}.jpg"
            samples.append(Sample(i, image, sbd_dir / "cls" / f"{i}.mat"))
    other = "SegmentationClassAug png" if aug_dir is not None else "SBD .mat"
    account = f"{origin}; masks: {n_voc_masks:,} VOC png + {len(ids) - n_voc_masks:,} {other}"
    return samples, account
