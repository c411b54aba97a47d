"""dataset=coco: class masks drawn from a COCO annotation file (as CVAT, Label Studio and Roboflow export them).

Category ids become class ids 1, 2, ... in the file's order of categories (or dataset.categories'); class 0 is
the background. Polygons and RLE (compressed or not) are decoded by pycocotools. Overlaps are resolved by area:
annotations are drawn largest first, so that where two overlap the smaller one (usually the object in front, or
a part inside a whole) is what the pixel shows. iscrowd regions are drawn first, as ignore_index (dataset.crowd=
ignore) or as their class (keep), so any regular annotation inside them wins. Pixels no annotation covers are
background or ignore_index (dataset.unannotated).

With dataset.multilabel the categories are the classes 0, 1, ... (no background class) and every annotation is
drawn into its class's own channel, so overlaps are kept (render_multilabel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deeplab.data.dataset import Sample
from deeplab.errors import DatasetError

EDGE = 1.0  # pixels a polygon vertex may lie outside the image (exporters round to the pixel's far edge)


@dataclass(frozen=True)
class CocoImage:
    """One image of the file and what its mask is drawn from: (class id, area, segmentation, crowd) each."""

    height: int
    width: int
    shapes: tuple[tuple[int, float, Any, bool], ...]


def pycocotools_mask() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        raise DatasetError('dataset=coco needs pycocotools: pip install -e ".[coco]"') from None
    return mask


def read_coco(
    images_dir: str | Path, annotations: str | Path, split: str, categories: list[int] | None, empty: str
) -> tuple[list[Sample], list[CocoImage], list[str]]:
    """The split's samples, what each mask is drawn from, and the problems of the file (one line each: an
    annotation naming a missing image or category, a polygon outside its image, a missing image file)."""
    from deeplab.config.annotations import read_json
    from deeplab.errors import ConfigError

    key = f"dataset.{split}.annotations"
    path = Path(annotations).expanduser()
    try:
        coco = read_json(path, key)
    except ConfigError as e:
        raise DatasetError(str(e)) from None
    folder = Path(images_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"dataset.{split}.images {folder} is not a folder; point it at the split's images")
    file_categories = [c["id"] for c in coco.get("categories", []) if isinstance(c, dict) and "id" in c]
    order = categories if categories is not None else file_categories
    class_of = {cat: i + 1 for i, cat in enumerate(order)}
    images = {im["id"]: im for im in coco.get("images", []) if isinstance(im, dict) and "id" in im}
    problems: list[str] = []
    shapes: dict[Any, list[tuple[int, float, Any, bool]]] = {i: [] for i in images}
    for n, ann in enumerate(coco.get("annotations", [])):
        where = f"{path}: annotation {ann.get('id', n)}"
        image = images.get(ann.get("image_id"))
        if image is None:
            problems.append(
                f"{where} names image_id {ann.get('image_id')!r}, which the file's images do not list"
            )
            continue
        category = ann.get("category_id")
        if category not in file_categories:
            problems.append(
                f"{where} names category_id {category!r}, which the file's categories do not list"
            )
            continue
        segmentation = ann.get("segmentation")
        if not segmentation:
            problems.append(f"{where} has no segmentation (a box only?); export the masks or polygons")
            continue
        outside = polygon_outside(segmentation, image["height"], image["width"])
        if outside:
            problems.append(
                f"{where} has a polygon point {outside} outside its {image['width']}x{image['height']} image"
            )
            continue
        if category in class_of:  # categories left out of dataset.categories are not drawn
            crowd = bool(ann.get("iscrowd", 0))
            shapes[image["id"]].append((class_of[category], float(ann.get("area", 0.0)), segmentation, crowd))
    samples, sources = [], []
    for image_id, image in images.items():
        if not shapes[image_id] and empty == "skip":
            continue
        file = folder / image["file_name"]
        samples.append(Sample(Path(image["file_name"]).stem, file, path))
        sources.append(CocoImage(int(image["height"]), int(image["width"]), tuple(shapes[image_id])))
    return samples, sources, problems


def polygon_outside(segmentation: Any, height: int, width: int) -> tuple[float, float] | None:
    """The first polygon vertex beyond the image's edge (by more than EDGE), or None (RLE: None)."""
    if not isinstance(segmentation, list):
        return None
    for polygon in segmentation:
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        bad = (xy[:, 0] < -EDGE) | (xy[:, 0] > width + EDGE) | (xy[:, 1] < -EDGE) | (xy[:, 1] > height + EDGE)
        if bad.any():
            x, y = xy[np.flatnonzero(bad)[0]]
            return (float(x), float(y))
    return None


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool of one annotation's segmentation: polygons, uncompressed RLE or compressed RLE."""
    mask = pycocotools_mask()
    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        rle = mask.merge(mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask.frPyObjects(segmentation, height, width)
    else:  # compressed RLE (counts a string)
        rle = dict(
            segmentation,
            counts=segmentation["counts"].encode()
            if isinstance(segmentation["counts"], str)
            else segmentation["counts"],
        )
    return mask.decode(rle).astype(bool)


def render(image: CocoImage, crowd: str, unannotated: str, ignore_index: int) -> np.ndarray:
    """(H, W) uint8 class ids of one image (the rules in the module's docstring)."""
    ids = np.full((image.height, image.width), 0 if unannotated == "background" else ignore_index, np.uint8)
    crowds = [s for s in image.shapes if s[3]]
    regular = sorted((s for s in image.shapes if not s[3]), key=lambda s: -s[1])  # largest first
    for class_id, _, segmentation, _ in crowds:
        ids[decode(segmentation, image.height, image.width)] = ignore_index if crowd == "ignore" else class_id
    for class_id, _, segmentation, _ in regular:
        ids[decode(segmentation, image.height, image.width)] = class_id
    return ids


def render_multilabel(
    image: CocoImage, num_classes: int, crowd: str, unannotated: str, ignore_index: int
) -> np.ndarray:
    """(H, W, C) uint8 multi-label masks of one image (class id k of read_coco is channel k - 1): 1 where an
    annotation of the class covers the pixel, whatever else does; iscrowd regions are ignored for their class
    (dataset.crowd=ignore) unless a regular annotation of it covers them, or present (keep); with
    dataset.unannotated=ignore the pixels no annotation covers are ignored for every class, else absent."""
    masks = np.zeros((image.height, image.width, num_classes), np.uint8)
    covered = np.zeros((image.height, image.width), bool)
    for class_id, _, segmentation, is_crowd in sorted(image.shapes, key=lambda s: not s[3]):  # crowds first
        region = decode(segmentation, image.height, image.width)
        covered |= region
        masks[region, class_id - 1] = ignore_index if is_crowd and crowd == "ignore" else 1
    if unannotated == "ignore":
        masks[~covered] = ignore_index
    return masks
