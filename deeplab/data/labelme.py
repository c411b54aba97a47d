"""dataset=labelme: class masks drawn from labelme's JSON files, one beside each image (photo.jpg + photo.json).

Shapes are drawn in the file's order, a later one over an earlier one, as labelme's own export draws them:
polygons and rectangles filled with their outline, circles (centre and a point on the circle) filled, lines and
linestrips dataset.line_width pixels wide, points as discs of that diameter. The label `_background_` (or
`background`) is class 0; a label outside dataset.class_names is a problem of its file.

With dataset.multilabel the labels are the classes 0, 1, ... (the background labels are not drawn) and each shape
is drawn into its class's own channel, so overlapping shapes are all kept (render_multilabel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from deeplab.config.annotations import BACKGROUND_LABELS
from deeplab.data.dataset import Sample
from deeplab.data.folder import IMAGE_SUFFIXES
from deeplab.errors import DatasetError

KINDS = {"polygon", "rectangle", "circle", "line", "linestrip", "point"}


@dataclass(frozen=True)
class LabelmeImage:
    """What one image's mask is drawn from: its size and (class id, kind, points) per shape."""

    height: int
    width: int
    shapes: tuple[tuple[int, str, tuple[tuple[float, float], ...]], ...]


def read_labelme(
    folder: str | Path, split: str, names: list[str], empty: str, multilabel: bool = False
) -> tuple[list[Sample], list[LabelmeImage], list[str]]:
    """The split's samples (each image with its JSON file), what each mask is drawn from, and the problems of
    the files (one line each: an unknown label or shape kind, a JSON that does not parse or names no size)."""
    import json

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"dataset.{split}.folder {path} is not a folder; point it at the images and their JSON"
        )
    background = -1 if multilabel else 0  # a multi-label model has no background class: not drawn
    class_of = {b: background for b in BACKGROUND_LABELS} | {n: i for i, n in enumerate(names)}
    samples, sources, problems = [], [], []
    images = sorted(
        p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise DatasetError(
            f"dataset.{split}.folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    for image in images:
        file = image.with_suffix(".json")
        if not file.is_file():
            if empty == "background":
                with Image.open(image) as im:
                    samples.append(Sample(image.stem, image, image))
                    sources.append(LabelmeImage(im.height, im.width, ()))
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            height, width = int(data["imageHeight"]), int(data["imageWidth"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            problems.append(
                f"{file} is not a labelme file with imageHeight and imageWidth ({type(e).__name__}: {e})"
            )
            continue
        shapes = []
        for n, shape in enumerate(data.get("shapes") or []):
            label, kind = str(shape.get("label")), shape.get("shape_type") or "polygon"
            if label not in class_of:
                problems.append(
                    f"{file}: shape {n} has the label {label!r}, not in dataset.class_names {names}"
                )
                continue
            if kind not in KINDS:
                problems.append(
                    f"{file}: shape {n} is a {kind!r}; this reader draws {', '.join(sorted(KINDS))}"
                )
                continue
            points = tuple((float(x), float(y)) for x, y in shape.get("points") or [])
            if class_of[label] >= 0:
                shapes.append((class_of[label], kind, points))
        if not shapes and empty == "skip":
            continue
        samples.append(Sample(image.stem, image, file))
        sources.append(LabelmeImage(height, width, tuple(shapes)))
    return samples, sources, problems


def render(image: LabelmeImage, line_width: int) -> np.ndarray:
    """(H, W) uint8 class ids of one image (the rules in the module's docstring)."""
    canvas = Image.new("L", (image.width, image.height), 0)
    draw = ImageDraw.Draw(canvas)
    for class_id, kind, points in image.shapes:
        _draw_shape(draw, kind, points, class_id, line_width)
    return np.asarray(canvas, dtype=np.uint8)


def render_multilabel(image: LabelmeImage, num_classes: int, line_width: int) -> np.ndarray:
    """(H, W, C) uint8 multi-label masks of one image: 1 where a shape of the class covers the pixel."""
    canvases = [Image.new("L", (image.width, image.height), 0) for _ in range(num_classes)]
    draws = [ImageDraw.Draw(c) for c in canvases]
    for class_id, kind, points in image.shapes:
        _draw_shape(draws[class_id], kind, points, 1, line_width)
    return np.stack([np.asarray(c, dtype=np.uint8) for c in canvases], axis=2)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    points: tuple[tuple[float, float], ...],
    class_id: int,
    line_width: int,
) -> None:
    """One labelme shape filled with the value class_id."""
    xy: Any = [tuple(p) for p in points]
    if kind == "polygon" and len(xy) >= 3:
        draw.polygon(xy, fill=class_id, outline=class_id)
    elif kind == "rectangle" and len(xy) == 2:
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=class_id, outline=class_id)
    elif kind == "circle" and len(xy) == 2:
        (cx, cy), (px, py) = xy
        r = float(np.hypot(px - cx, py - cy))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=class_id, outline=class_id)
    elif kind in ("line", "linestrip") and len(xy) >= 2:
        draw.line(xy, fill=class_id, width=line_width)
    elif kind == "point" and xy:
        (cx, cy), r = xy[0], line_width / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=class_id, outline=class_id)
