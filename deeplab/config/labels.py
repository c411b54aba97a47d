"""Labels: class names, colour maps and palettes, and the tables that map a dataset's stored values to class ids.
(configs/dataset/ lists the official datasets' names for new runs; the tables here are for label maps, colours
and older checkpoints.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deeplab.config.data import CityscapesDataset, DatasetBase

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Colour of the ignore label 255 in the VOC map (the light boundary band of VOC masks).
VOC_IGNORE_COLOR = (224, 224, 192)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC colour map (n, 3) uint8: bits of the index spread over R, G, B from the top bit down."""
    index = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def color_table(colors: Sequence[Sequence[int]] | None, size: int = 256) -> np.ndarray:
    """A (size, 3) uint8 map whose first rows are `colors` and the rest the VOC map, so every id has a colour."""
    table = voc_colormap(size)
    if colors is not None:
        given = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
        given = given[:size]
        table[: len(given)] = np.clip(given, 0, 255)
    return table


# Cityscapes' 19 evaluated classes in trainId order, their official colours, and the labelId of each
# (cityscapesScripts' labels.py); every other labelId (unlabeled, ego vehicle, ..., license plate) is ignored.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
CITYSCAPES_LABEL_IDS: tuple[int, ...] = (
    7,
    8,
    11,
    12,
    13,
    17,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    31,
    32,
    33,
)
CITYSCAPES_NUM_LABEL_IDS = 34  # labels.py's table: labelIds 0..33 (license plate's -1 is never drawn)

# ADE20K's SceneParsing benchmark (ADEChallengeData2016, objectInfo150.txt): annotation k is class k - 1,
# annotation 0 ("other objects") is ignored.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip


def cityscapes_label_map() -> np.ndarray:
    """(256,) uint8 lookup table labelId -> trainId (0..18), every other id -> 255."""
    table = np.full(256, 255, dtype=np.uint8)
    table[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS), dtype=np.uint8)
    return table


def ade20k_label_map() -> np.ndarray:
    """(256,) uint8 lookup table: annotation 0 -> 255, k -> k - 1 (mmseg's reduce_zero_label)."""
    table = (np.arange(256, dtype=np.int64) - 1) % 256
    return table.astype(np.uint8)


CAMVID_VOID = 11  # the SegNet layout's "void" (unlabelled) value


def camvid_label_map() -> np.ndarray:
    """(256,) uint8 lookup table: CamVid's void (11) -> 255, every other value unchanged (0..10 are the classes;
    a value above 11 stays, so that the mask check names it)."""
    table = np.arange(256, dtype=np.uint8)
    table[CAMVID_VOID] = 255
    return table


def with_official_names(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset section written before configs/dataset/ listed the class names (class_names null on VOC,
    SBD, trainaug, Cityscapes or ADE20K), with those names filled in."""
    tables = {"voc": VOC_CLASSES, "voc_aug": VOC_CLASSES, "sbd": VOC_CLASSES, "cityscapes": CITYSCAPES_CLASSES,
              "ade20k": ADE20K_CLASSES}  # fmt: skip
    names = tables.get(str(dataset.get("name")))
    if dataset.get("class_names") is not None or names is None or dataset.get("num_classes") != len(names):
        return dict(dataset)
    return {**dataset, "class_names": list(names)}


def palette(dataset: DatasetBase) -> np.ndarray:
    """Colour map (N, 3) uint8 indexable by any label value, ignore included (N >= 256): dataset.palette
    for its classes if given (Cityscapes: its official colours), the standard VOC colour map otherwise (and
    for the remaining values)."""
    colors = dataset.palette
    if colors is None and isinstance(dataset, CityscapesDataset):
        colors = [list(c) for c in CITYSCAPES_COLORS]
    return color_table(colors, max(256, dataset.num_classes))
