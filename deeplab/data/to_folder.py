"""Any dataset written as the palette-PNG folder dataset (dataset=folder), for those who want to edit the masks:
`python -m deeplab.data.prepare masks --output DIR dataset=coco dataset.train.images=... ...`.

DIR/{train,val}/images holds the photos (hard links where the file system allows, else copies), DIR/{train,val}/
masks one palette PNG of class ids per photo, drawn as training reads them, and DIR/dataset.yaml the overrides
that train on the result (its class names and colours included). Each file is written whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import yaml
from tqdm import tqdm

from deeplab.atomicfile import atomic_path
from deeplab.config import TrainConfig
from deeplab.data import load_split, palette
from deeplab.errors import ConfigError
from deeplab.visualize import ids_image  # the same palette PNG predict writes


def write_folder_dataset(cfg: TrainConfig, output: Path) -> dict[str, int]:
    """Write both splits of cfg.dataset under output; returns the number of images written per split."""
    d = cfg.dataset
    if d.multilabel:
        raise ConfigError(
            "prepare masks writes one class per pixel; a multi-label dataset (dataset.multilabel) is read from its "
            "per-class folders as it is"
        )
    colors = palette(d)
    written = {}
    for split in ("train", "val"):
        dataset = load_split(cfg, split, augment=False)
        images, masks = output / split / "images", output / split / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for index in tqdm(range(len(dataset)), desc=f"writing {split}", unit=" images"):
            sample = dataset.samples[index]
            mask, _ = dataset.load_mask(index)
            link(sample.image, images / f"{sample.id}{sample.image.suffix.lower()}")
            with atomic_path(masks / f"{sample.id}.png") as tmp:
                ids_image(mask, colors).save(tmp, format="PNG")
        written[split] = len(dataset)
    overrides = {
        "dataset": "folder", "dataset.num_classes": d.num_classes, "dataset.class_names": d.label_names(),
        "dataset.ignore_index": d.ignore_index,
        **{f"dataset.{s}.{k}": str(output / s / k) for s in ("train", "val") for k in ("images", "masks")},
    }  # fmt: skip
    with atomic_path(output / "dataset.yaml") as tmp:
        tmp.write_text(
            "# python train.py with these overrides trains on this folder dataset\n"
            + yaml.safe_dump(overrides, sort_keys=False, default_flow_style=None, width=1000)
        )
    return written


def link(source: Path, target: Path) -> None:
    """target as a hard link to source (no copy of the photo), else a copy; an existing target is replaced whole.

    Not through atomic_path: it would set the mode of the temporary file, which for a hard link is the user's
    photo; and rename() of two links to one file does nothing, which would leave the temporary behind."""
    if target.exists() and os.path.samefile(source, target):  # written by an earlier run
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # a failed or interrupted write
