"""Autolabel: predictions written as a folder dataset, to correct and train on
(`python -m deeplab.predict checkpoint=PATH input=photos/ autolabel=true output=OUT`).

OUT/images/<name>.<ext>  the input image, byte for byte
OUT/masks/<name>.png     class ids as a palette PNG (pixel value = class id; paint programs keep the palette)
OUT/overlays/<name>.jpg  the mask over the photo, for reviewing
OUT/dataset/autolabel.yaml  the dataset config (dataset=folder with these folders, the class names and colours):
                         `python train.py hydra.searchpath=[file://OUT] dataset=autolabel` trains on it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from deeplab.atomicfile import atomic_path, save_image
from deeplab.deploy.segmenter import check_unreadable, draw, predict_each, save_ids

CONFIG_NAME = "autolabel"


def folders(output: Path) -> dict[str, Path]:
    """The images, masks and overlays folders under output, created."""
    made = {k: output / k for k in ("images", "masks", "overlays")}
    for folder in made.values():
        folder.mkdir(parents=True, exist_ok=True)
    return made


def copy_image(source: Path, name: str, images: Path) -> Path:
    """The input image under the output name (the mask's stem), unchanged."""
    target = images / f"{name}{source.suffix.lower()}"
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def write_dataset_config(output: Path, labels: list[str], palette: np.ndarray, in_channels: int) -> Path:
    """OUT/dataset/autolabel.yaml: the folder dataset over OUT/images and OUT/masks (train and val alike:
    split them by moving files into other folders and pointing dataset.val at those)."""
    output = output.resolve()
    split = {"images": str(output / "images"), "masks": str(output / "masks")}
    config = {
        "defaults": ["folder", "_self_"],
        "train": split,
        "val": dict(split),
        "num_classes": len(labels),
        "class_names": list(labels),
        "palette": palette[: len(labels)].tolist(),
        "in_channels": in_channels,
    }
    path = output / "dataset" / f"{CONFIG_NAME}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Written by deeplab.predict autolabel=true. Correct the masks in masks/ (pixel value = class id), then\n"
        f"# python train.py hydra.searchpath=[file://{output}] dataset={CONFIG_NAME}\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(header + OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


def train_command(output: Path) -> str:
    return f"python train.py hydra.searchpath=[file://{output.resolve()}] dataset={CONFIG_NAME}"


def predict_folder(
    cfg: Any, seg: Any, images: list[Path], names: dict[Path, str], output: Path
) -> list[Path]:
    """deeplab.predict's loop for autolabel=true (cfg: PredictConfig, seg: segmenter.Segmenter): returns the
    masks written; unreadable images are named and skipped, then counted in a DatasetError."""
    where = folders(output)
    kept = [] if cfg.overwrite else [p for p in images if (where["masks"] / f"{names[p]}.png").exists()]
    images = [p for p in images if p not in set(kept)]

    def write(path: Path, image: np.ndarray, pred: np.ndarray) -> Path:
        copy_image(path, names[path], where["images"])
        mask = where["masks"] / f"{names[path]}.png"
        save_ids(pred, seg.palette, mask)
        _, overlay = draw(seg, image, pred, cfg.alpha)
        save_image(Image.fromarray(overlay), where["overlays"] / f"{names[path]}.jpg", quality=92)
        return mask

    written, unreadable = predict_each(seg, cfg.eval, images, write, "autolabel")
    config = write_dataset_config(output, seg.labels, seg.palette, seg.in_channels)
    print(f"wrote {len(written)} images and masks to {output} and the dataset config {config}")
    if kept:
        print(
            f"kept {len(kept)} masks already in {where['masks']} (overwrite=true labels those photos again); "
            f"added {len(written)}"
        )
    print(
        f"correct the masks in {where['masks']} (pixel value = class id), then train: {train_command(output)}"
    )
    check_unreadable(unreadable, len(images), output)
    return written
