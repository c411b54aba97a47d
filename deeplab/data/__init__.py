"""Datasets (VOC, SBD, trainaug, folders, generated), their pipelines, and the one place a dataset config
becomes a torch Dataset: build_dataset(cfg, split)."""

from __future__ import annotations

import functools
import logging
from typing import Any

from omegaconf import DictConfig

from deeplab.config import (
    ADE20KDataset,
    CamVidDataset,
    CityscapesDataset,
    CocoDataset,
    DatasetBase,
    FolderDataset,
    LabelmeDataset,
    SBDDataset,
    SyntheticDataset,
    TrainConfig,
    VOCAugDataset,
    VOCDataset,
    train_config,
)
from deeplab.config.labels import (
    ade20k_label_map,
    camvid_label_map,
    cityscapes_label_map,
    palette,
)
from deeplab.data.ade20k import ade20k_samples, find_ade20k_dir
from deeplab.data.camvid import camvid_samples, find_camvid_dir
from deeplab.data.cityscapes import cityscapes_samples, find_cityscapes_dir, unlisted_label_ids
from deeplab.data.collate import collate_eval
from deeplab.data.dataset import MaskDecoding, RenderedDataset, SegmentationDataset
from deeplab.data.folder import color_lookup, folder_samples
from deeplab.data.sbd import SBDSegmentation
from deeplab.data.synthetic import SyntheticSpec, ensure_synthetic
from deeplab.data.voc import VOCSegmentation, find_voc_dir, voc_sample, voc_split_ids
from deeplab.data.voc_aug import TRAINAUG_SPLIT, voc_aug_train_samples

__all__ = ["SegmentationDataset", "build_dataset", "collate_eval", "load_split", "palette"]

log = logging.getLogger(__name__)


def load_split(
    cfg: TrainConfig | DictConfig | DatasetBase,
    split: str,
    *,
    augment: bool = True,
    check_files: bool = True,
    strict_labels: bool = False,
) -> SegmentationDataset:
    """build_dataset with switches: augment=False reads the train split without the train pipeline,
    check_files=False skips the existence checks (the check command reports missing files itself), and
    strict_labels=True makes mask values outside the official label table (Cityscapes) a problem of the mask
    rather than a warning."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if isinstance(cfg, DatasetBase):  # a dataset section alone (a model card's): whole images, no pipeline
        d, transform = cfg, None
    else:
        cfg = train_config(cfg)
        d, transform = cfg.dataset, None  # evaluation sees whole images; batches are padded by collate_eval
        if split == "train" and augment:
            from deeplab.data.transforms import (
                train_transform,  # albumentations: imported when training needs it
            )

            a = d.augment
            transform = train_transform(
                cfg.trainer.crop(), a.scale, a.hflip, a.color_jitter, d.mean, d.ignore_index
            )
    common = {
        "num_classes": d.num_classes, "ignore_index": d.ignore_index, "transform": transform, "skip_bad": d.skip_bad,
        "substitute": split == "train", "check_files": check_files, "in_channels": d.in_channels,
    }  # fmt: skip
    by_key = isinstance(
        d, FolderDataset | CocoDataset | LabelmeDataset
    )  # a section per split, no split names
    split_name = split if by_key else d.train_split if split == "train" else d.val_split
    dataset, detail = _split_of_layout(d, split, split_name, strict_labels, common)
    log.info(
        "dataset %s %s split (%s): %s images%s",
        d.name, split, split_name, f"{len(dataset):,}", f" [{detail}]" if detail else "",
    )  # fmt: skip
    return dataset


def _split_of_layout(
    d: DatasetBase, split: str, split_name: str, strict_labels: bool, common: dict[str, Any]
) -> tuple[SegmentationDataset, str]:
    """The split's files in the dataset's layout and how its masks decode: (dataset, a detail for the log)."""
    if isinstance(d, FolderDataset) and d.multilabel:
        from deeplab.data.multilabel import MultiLabelDataset, multilabel_samples

        folders = d.train if split == "train" else d.val
        samples, class_files, problems = multilabel_samples(folders.images, folders.masks, split, d.names())
        binary = tuple(d.binary_values) if d.binary_values is not None else None
        name = f"dataset.{split}.images {folders.images}"
        layout = "stacked masks" if class_files is None else "a mask folder per class"
        return MultiLabelDataset(
            samples, class_files, binary, listing_problems=problems, name=name, **common
        ), f"multi-label, {layout}"
    if isinstance(d, FolderDataset):
        folders = d.train if split == "train" else d.val
        colors, color_ids = color_lookup(d.palette, d.ignore_color, d.ignore_index)
        samples, problems = folder_samples(folders.images, folders.masks, split)
        binary = tuple(d.binary_values) if d.binary_values is not None else None
        decoding = MaskDecoding(colors=colors, color_ids=color_ids, binary_values=binary)
        name = f"dataset.{split}.images {folders.images}"
        return SegmentationDataset(
            samples, masks=decoding, listing_problems=problems, name=name, **common
        ), ""
    if isinstance(d, CocoDataset):
        from deeplab.data import coco

        files = d.train if split == "train" else d.val
        samples, sources, problems = coco.read_coco(
            files.images, files.annotations, split, d.categories, d.empty_images
        )
        name = f"dataset.{split}.annotations {files.annotations}"
        if d.multilabel:  # every annotation in its class's channel: overlaps kept
            draw, options = coco.render_multilabel, (d.num_classes, d.crowd, d.unannotated, d.ignore_index)
        else:
            draw, options = coco.render, (d.crowd, d.unannotated, d.ignore_index)
        return _rendered(d.multilabel, samples, functools.partial(_render_each, draw, sources, options),
                         problems, name, common)  # fmt: skip
    if isinstance(d, LabelmeDataset):
        from deeplab.data import labelme

        folder = (d.train if split == "train" else d.val).folder
        samples, sources, problems = labelme.read_labelme(
            folder, split, d.label_names(), d.empty_images, d.multilabel
        )
        name = f"dataset.{split}.folder {folder}"
        if d.multilabel:  # every shape in its class's channel: overlaps kept
            draw, options = labelme.render_multilabel, (d.num_classes, d.line_width)
        else:
            draw, options = labelme.render, (d.line_width,)
        return _rendered(d.multilabel, samples, functools.partial(_render_each, draw, sources, options),
                         problems, name, common)  # fmt: skip
    if isinstance(d, CityscapesDataset):
        root = find_cityscapes_dir(d.root)
        label_ids = d.labels == "labelIds"
        decoding = MaskDecoding(
            label_map=cityscapes_label_map() if label_ids else None,
            unlisted=unlisted_label_ids if label_ids else None, strict=strict_labels,
        )  # fmt: skip
        samples = cityscapes_samples(root, split_name, d.labels)
        return SegmentationDataset(samples, masks=decoding, name=f"{root}/{split_name}", **common), ""
    if isinstance(d, ADE20KDataset):
        root = find_ade20k_dir(d.root)
        decoding = MaskDecoding(label_map=ade20k_label_map())
        samples = ade20k_samples(root, split_name)
        return SegmentationDataset(samples, masks=decoding, name=f"{root}/{split_name}", **common), ""
    if isinstance(d, CamVidDataset):
        root = find_camvid_dir(d.root)
        decoding = MaskDecoding(label_map=camvid_label_map())
        samples = camvid_samples(root, split_name)
        return SegmentationDataset(samples, masks=decoding, name=f"{root}/{split_name}", **common), ""
    if isinstance(d, VOCDataset):
        return VOCSegmentation(d.root, split_name, **common), ""
    if isinstance(d, SBDDataset):
        return SBDSegmentation(d.sbd_root or d.root, split_name, **common), ""
    if isinstance(d, SyntheticDataset):
        spec = SyntheticSpec(tuple(d.names()), d.num_train, d.num_val, tuple(d.image_size), d.seed)
        return VOCSegmentation(ensure_synthetic(d.root, spec), split_name, **common), ""
    assert isinstance(d, VOCAugDataset)
    voc_dir, detail = find_voc_dir(d.root, "voc_aug"), ""
    if split_name == TRAINAUG_SPLIT:
        samples, detail = voc_aug_train_samples(
            d.root, voc_dir, voc_val_split=d.val_split, sbd_root=d.sbd_root, aug_list=d.aug_list
        )
    else:
        samples = [voc_sample(voc_dir, i) for i in voc_split_ids(voc_dir, split_name)]
    return SegmentationDataset(samples, name=f"{voc_dir}/{split_name}", **common), detail


def _rendered(
    multilabel: bool,
    samples: list[Any],
    render: Any,
    problems: list[str],
    name: str,
    common: dict[str, Any],
) -> tuple[SegmentationDataset, str]:
    """A dataset whose masks `render` draws from annotations: (H, W) class ids, or multi-label (H, W, C)."""
    if multilabel:
        from deeplab.data.multilabel import RenderedMultiLabelDataset

        dataset: SegmentationDataset = RenderedMultiLabelDataset(
            samples, render, listing_problems=problems, name=name, **common
        )
        return dataset, "multi-label"
    return RenderedDataset(samples, render, listing_problems=problems, name=name, **common), ""


def _render_each(draw: Any, sources: list[Any], options: tuple[Any, ...], index: int) -> Any:
    """draw(sources[index], *options): a module-level function, so that DataLoader workers can receive it."""
    return draw(sources[index], *options)


def build_dataset(cfg: TrainConfig | DictConfig | DatasetBase, split: str) -> SegmentationDataset:
    """The train or val split of cfg.dataset. Items: image (3, H, W) uint8 and mask (H, W) uint8 (int64 if
    labels exceed 255); the device normalises images. Train applies the train pipeline at trainer.crop_size;
    val gives whole images."""
    return load_split(cfg, split)
