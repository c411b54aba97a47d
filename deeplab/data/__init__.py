"""Datasets (VOC, SBD, trainaug, folders, generated), their pipelines, and the one place a dataset config
becomes a torch Dataset: build_dataset(cfg, split)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from deeplab.data.classes import VOC_CLASSES, color_table
from deeplab.data.collate import collate_eval
from deeplab.data.dataset import SegmentationDataset
from deeplab.data.folder import color_lookup, folder_samples
from deeplab.data.sbd import SBDSegmentation
from deeplab.data.synthetic import ensure_synthetic, spec_from_values
from deeplab.data.transforms import eval_transform, train_transform
from deeplab.data.voc import VOCSegmentation, find_voc_dir, voc_sample, voc_split_ids
from deeplab.data.voc_aug import TRAINAUG_SPLIT, voc_aug_train_samples
from deeplab.errors import ConfigError

__all__ = [
    "SegmentationDataset",
    "build_dataset",
    "class_names",
    "collate_eval",
    "ignore_index",
    "load_split",
    "num_classes",
    "palette",
]

log = logging.getLogger(__name__)

DATASETS = ("voc", "voc_aug", "sbd", "synthetic", "folder")
_VOC_FAMILY = ("voc", "voc_aug", "sbd")


def _node(cfg: DictConfig) -> DictConfig:
    """The dataset node, given the whole config or the dataset node itself."""
    return cfg.dataset if "dataset" in cfg else cfg


def _value(node: DictConfig, key: str, default: Any = None, required: bool = False) -> Any:
    try:
        value = OmegaConf.select(node, key, default=default, throw_on_missing=True)
    except MissingMandatoryValue:
        value = None
    if value is None:  # null means "the default" too
        value = default
    if required and value is None:
        raise ConfigError(f"dataset.{key} is not set; give it on the command line, e.g. dataset.{key}=...")
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def num_classes(cfg: DictConfig) -> int:
    """Number of classes (the ignore label not counted)."""
    n = _value(_node(cfg), "num_classes", required=True)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"dataset.num_classes must be a positive integer, got {n!r}")
    return n


def ignore_index(cfg: DictConfig) -> int:
    """The label that the loss and the metrics skip (255 in VOC; a class id such as 11 in CamVid-style sets)."""
    return int(_value(_node(cfg), "ignore_index", default=255))


def class_names(cfg: DictConfig) -> list[str]:
    """dataset.class_names, or the dataset's defaults: the 21 VOC names, or class_0, class_1, ..."""
    node = _node(cfg)
    n = num_classes(cfg)
    names = _value(node, "class_names")
    if names is None:
        names = (
            list(VOC_CLASSES)
            if _value(node, "name") in _VOC_FAMILY and n == 21
            else [f"class_{i}" for i in range(n)]
        )
    names = [str(x) for x in names]
    if len(names) != n:
        raise ConfigError(f"dataset.class_names has {len(names)} names but dataset.num_classes is {n}")
    return names


def palette(cfg: DictConfig) -> np.ndarray:
    """Colour map (N, 3) uint8 indexable by any label value, ignore included (N >= 256): dataset.palette
    for its classes if given, the standard VOC colour map otherwise (and for the remaining values)."""
    node = _node(cfg)
    size = max(256, num_classes(cfg), ignore_index(cfg) + 1)
    return color_table(_value(node, "palette"), size)


def _augment(node: DictConfig, cfg: DictConfig, ignore: int) -> Any:
    crop = OmegaConf.select(cfg, "trainer.crop_size")
    if crop is None:
        raise ConfigError("trainer.crop_size is not set; the train pipeline crops to it")
    scale = _value(node, "augment.scale", default=[0.5, 2.0])
    if not (isinstance(scale, list) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ConfigError(f"dataset.augment.scale must be [lo, hi] with 0 < lo <= hi, got {scale!r}")
    return train_transform(
        crop_size=int(crop),
        scale=scale,
        hflip=bool(_value(node, "augment.hflip", default=True)),
        color_jitter=float(_value(node, "augment.color_jitter", default=0.0)),
        mean=_value(node, "mean", default=[0.485, 0.456, 0.406]),
        ignore_index=ignore,
    )


def load_split(
    cfg: DictConfig, split: str, *, normalize: bool = True, augment: bool = True, check_files: bool = True
) -> SegmentationDataset:
    """build_dataset with switches: augment=False reads the train split without the train pipeline, and
    check_files=False skips the existence checks (the check command reports missing files itself)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    node = _node(cfg)
    name = _value(node, "name", required=True)
    if name not in DATASETS:
        raise ConfigError(f"dataset.name {name!r} is unknown; use one of {', '.join(DATASETS)}")
    n, ignore = num_classes(cfg), ignore_index(cfg)
    transform = _augment(node, cfg, ignore) if split == "train" and augment else eval_transform()
    common: dict[str, Any] = {
        "ignore_index": ignore,
        "transform": transform,
        "mean": _value(node, "mean", default=[0.485, 0.456, 0.406]),
        "std": _value(node, "std", default=[0.229, 0.224, 0.225]),
        "normalize": normalize,
        "skip_bad": bool(_value(node, "skip_bad", default=False)),
        "check_files": check_files,
    }
    split_name = str(_value(node, f"{split}_split", default=split))
    detail = ""
    if name == "voc":
        dataset: SegmentationDataset = VOCSegmentation(
            _value(node, "root", required=True), split_name, n, **common
        )
    elif name == "sbd":
        root = _value(node, "sbd_root") or _value(node, "root", required=True)
        dataset = SBDSegmentation(root, split_name, n, **common)
    elif name == "voc_aug":
        root = _value(node, "root", required=True)
        voc_dir = find_voc_dir(root, "voc_aug")
        if split_name == TRAINAUG_SPLIT:
            samples, detail = voc_aug_train_samples(
                root,
                voc_dir,
                voc_val_split=str(_value(node, "val_split", default="val")),
                sbd_root=_value(node, "sbd_root"),
                aug_list=_value(node, "aug_list"),
            )
        else:
            samples = [voc_sample(voc_dir, i) for i in voc_split_ids(voc_dir, split_name)]
        where = f"{voc_dir}/{split_name}"
        dataset = SegmentationDataset(samples, n, name=where, **common)
    elif name == "synthetic":
        spec = spec_from_values(
            class_names(cfg),
            _value(node, "num_train", default=160),
            _value(node, "num_val", default=40),
            _value(node, "image_size", default=[96, 128]),
            _value(node, "seed", default=0),
        )
        root = ensure_synthetic(_value(node, "root", required=True), spec)
        dataset = VOCSegmentation(root, split_name, n, **common)
    else:
        images = _value(node, f"{split}.images", required=True)
        masks = _value(node, f"{split}.masks", required=True)
        colors, color_ids = color_lookup(_value(node, "palette"), _value(node, "ignore_color"), ignore)
        if colors is not None and len(_value(node, "palette")) > max(n, ignore + 1):
            raise ConfigError(f"dataset.palette has more colours than dataset.num_classes ({n}) allows")
        samples = folder_samples(images, masks, split)
        dataset = SegmentationDataset(
            samples, n, colors=colors, color_ids=color_ids, name=f"dataset.{split}.images {images}", **common
        )
    log.info(
        "dataset %s %s split (%s): %s images%s",
        name,
        split,
        split_name,
        f"{len(dataset):,}",
        f" [{detail}]" if detail else "",
    )
    return dataset


def build_dataset(cfg: DictConfig, split: str, normalize: bool = True) -> SegmentationDataset:
    """The train or val split of cfg.dataset. Items: image (3, H, W) float normalised and mask (H, W) int64;
    with normalize=False both uint8 (the mask int64 if labels exceed 255). Train applies the train pipeline
    at trainer.crop_size; val gives whole images."""
    return load_split(cfg, split, normalize=normalize)
