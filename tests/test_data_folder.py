"""dataset=folder: images and masks matched by stem, id or colour-coded masks, a class-id ignore index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config
from helpers.fake_data import fake_image, save_jpg, save_palette_png
from PIL import Image

from deeplab.config import train_config
from deeplab.data import build_dataset, palette
from deeplab.errors import ConfigError, DatasetError

COLORS = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]


def id_mask(seed: int, num_classes: int, ignore: int, size=(11, 14)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, num_classes, size=size).astype(np.uint8)
    mask[0, :3] = ignore
    return mask


def make_split(root: Path, split: str, masks: dict[str, np.ndarray], mask_format: str) -> tuple[Path, Path]:
    images, labels = root / split / "images", root / split / "masks"
    labels.mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        save_jpg(fake_image(stem, mask.shape), images / f"{stem}.jpg")
        if mask_format == "gray":
            Image.fromarray(mask, mode="L").save(labels / f"{stem}.png")
        elif mask_format == "palette":
            save_palette_png(mask, labels / f"{stem}.png")
        else:  # colour-coded
            table = np.array(COLORS + [[255, 255, 255]] * 252, np.uint8)
            Image.fromarray(table[mask]).save(labels / f"{stem}.png")
    return images, labels


def folder_cfg(root: Path, *overrides: str):
    keys = [f"dataset.{s}.{k}={root / s / k}" for s in ("train", "val") for k in ("images", "masks")]
    return compose_config(["dataset=folder", *keys, "trainer.crop_size=16", *overrides])


@pytest.mark.parametrize("mask_format", ["gray", "palette"])
def test_folder_id_masks_read_back_exactly(tmp_path: Path, mask_format: str) -> None:
    masks = {f"img{k}": id_mask(k, 4, 255) for k in range(3)}
    make_split(tmp_path, "train", masks, mask_format)
    make_split(tmp_path, "val", {"v": id_mask(9, 4, 255)}, mask_format)
    cfg = folder_cfg(tmp_path, "dataset.num_classes=4")
    train = build_dataset(cfg, "train")
    assert len(train) == 3 and len(build_dataset(cfg, "val")) == 1
    assert train[0][0].shape == (3, 16, 16)
    val = build_dataset(cfg, "val")
    image, mask = val[0]
    assert image.shape == (3, 11, 14) and (mask.numpy() == id_mask(9, 4, 255)).all()
    assert train_config(cfg).dataset.names() == ["class_0", "class_1", "class_2", "class_3"]


def test_folder_rgb_masks_with_palette_and_ignore_11(tmp_path: Path) -> None:
    # CamVid-style: ignore is a class id (11), given its own colour (white) in the colour-coded masks.
    mask = id_mask(1, 4, 11)
    make_split(tmp_path, "train", {"a": mask}, "rgb")
    make_split(tmp_path, "val", {"a": mask}, "rgb")
    cfg = folder_cfg(
        tmp_path,
        "dataset.num_classes=4",
        "dataset.ignore_index=11",
        f"dataset.palette={json.dumps(COLORS)}",
        "dataset.ignore_color=[255,255,255]",
        "dataset.class_names=[sky,road,car,tree]",
    )
    _, read = build_dataset(cfg, "val")[0]
    assert (read.numpy() == mask).all() and (read == 11).sum() == 3
    _, cropped = build_dataset(cfg, "train")[0]  # 11x14 padded to 16x16 with the ignore index 11
    assert cropped.shape == (16, 16) and (cropped == 11).sum() >= 16 * 16 - 11 * 14 * 4
    assert set(cropped.unique().tolist()) <= {0, 1, 2, 3, 11}
    d = train_config(cfg).dataset
    assert d.ignore_index == 11 and d.names()[1] == "road"
    pal = palette(d)
    assert pal[:4].tolist() == COLORS and pal.shape == (256, 3)


def test_folder_ignore_11_rejects_255(tmp_path: Path) -> None:
    masks = {"a": id_mask(1, 4, 255)}
    make_split(tmp_path, "train", masks, "gray")
    make_split(tmp_path, "val", masks, "gray")
    ds = build_dataset(folder_cfg(tmp_path, "dataset.num_classes=4", "dataset.ignore_index=11"), "val")
    with pytest.raises(
        DatasetError, match=r"masks/a\.png has values \{255\} outside 0..3 .* ignore index 11"
    ):
        ds[0]


def test_folder_rgb_mask_without_palette_is_an_error(tmp_path: Path) -> None:
    masks = {"a": id_mask(1, 4, 255)}
    make_split(tmp_path, "train", masks, "rgb")
    make_split(tmp_path, "val", masks, "rgb")
    ds = build_dataset(folder_cfg(tmp_path, "dataset.num_classes=4"), "val")
    with pytest.raises(DatasetError, match=r"masks/a\.png is an RGB image .* give dataset\.palette"):
        ds[0]


def test_folder_unknown_colour_is_named(tmp_path: Path) -> None:
    masks = {"a": id_mask(1, 4, 255)}
    make_split(tmp_path, "train", masks, "rgb")
    make_split(tmp_path, "val", masks, "rgb")
    ds = build_dataset(
        folder_cfg(tmp_path, "dataset.num_classes=4", f"dataset.palette={json.dumps(COLORS)}"), "val"
    )
    with pytest.raises(
        DatasetError, match=r"masks/a\.png has colours \(255, 255, 255\) that are not in dataset\.palette"
    ):
        ds[0]


def test_folder_image_without_mask_fails_at_build(tmp_path: Path) -> None:
    masks = {"a": id_mask(1, 4, 255), "b": id_mask(2, 4, 255)}
    make_split(tmp_path, "train", masks, "gray")
    make_split(tmp_path, "val", masks, "gray")
    (tmp_path / "val" / "masks" / "b.png").unlink()
    with pytest.raises(
        DatasetError, match=r"image .*val/images/b\.jpg has no mask with the stem 'b' in .*val/masks"
    ):
        build_dataset(folder_cfg(tmp_path, "dataset.num_classes=4"), "val")


def test_folder_missing_folder_and_unset_keys(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.val\.images .*nope/val/images does not exist"):
        build_dataset(folder_cfg(tmp_path / "nope", "dataset.num_classes=4"), "val")
    cfg = compose_config(["dataset=folder", "dataset.num_classes=2", "dataset.train.images=x"])
    with pytest.raises(ConfigError, match=r"dataset\.train\.masks is not set"):
        build_dataset(cfg, "val")
    folders = [f"dataset.{s}.{k}=x" for s in ("train", "val") for k in ("images", "masks")]
    with pytest.raises(ConfigError, match=r"dataset\.num_classes is not set"):
        build_dataset(compose_config(["dataset=folder", *folders]), "val")


def test_folder_items_batch_with_default_collate(tmp_path: Path) -> None:
    masks = {f"i{k}": id_mask(k, 3, 255) for k in range(4)}
    make_split(tmp_path, "train", masks, "palette")
    make_split(tmp_path, "val", masks, "palette")
    ds = build_dataset(folder_cfg(tmp_path, "dataset.num_classes=3"), "train")
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    # uint8 images (normalised on the device) and, since the labels fit, uint8 masks (8x less to pass around)
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and labels.dtype == torch.uint8


def test_folder_binary_one_class_masks_hold_0_and_1(tmp_path: Path) -> None:
    masks = {"a": id_mask(1, 2, 255)}
    make_split(tmp_path, "train", masks, "gray")
    make_split(tmp_path, "val", masks, "gray")
    _, mask = build_dataset(folder_cfg(tmp_path, "dataset.num_classes=1"), "val")[0]
    assert set(mask.unique().tolist()) == {0, 1, 255}
    masks["a"][5, 5] = 2
    make_split(tmp_path, "val", masks, "gray")
    with pytest.raises(DatasetError, match=r"values \{2\} outside 0..1"):
        build_dataset(folder_cfg(tmp_path, "dataset.num_classes=1"), "val")[0]
