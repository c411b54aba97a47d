"""A generated dataset in the VOC layout: textured shapes on cluttered backgrounds, deterministic from a seed.

Each object class is a shape (disc, square, triangle, ...) painted in its own saturated colour family with a
striped texture; the background is low-saturation clutter (gradients, blobs, lines, noise), so the classes are
told apart by shape and colour and a small network learns them from scratch in minutes on a CPU. A thin band
of 255 marks object boundaries, as in VOC. The files are written once under root (VOC2012/JPEGImages,
SegmentationClass, ImageSets/Segmentation) and read back through the VOC reader.
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from deeplab.config.labels import voc_colormap
from deeplab.errors import DatasetError

FORMAT_VERSION = 1  # bump when the rendering changes, so stale copies are regenerated
STAMP = "synthetic.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: class_names[0] is the background, the others name shapes from SHAPES (the config
    schema checks the names, sizes and counts)."""

    class_names: tuple[str, ...] = ("background", "disc", "square", "triangle")
    num_train: int = 160
    num_val: int = 40
    image_size: tuple[int, int] = (96, 128)  # (height, width)
    seed: int = 0

    def folder(self) -> str:
        """The dataset's own folder under dataset.root, named by what it holds (train160-val40-96x128-seed0-
        disc-square-triangle): runs of other specs write beside it, never over it."""
        height, width = self.image_size
        shapes = "-".join(self.class_names[1:])
        return f"train{self.num_train}-val{self.num_val}-{height}x{width}-seed{self.seed}-{shapes}"

    def stamp(self) -> dict:
        # Through JSON, so it compares equal to a stamp read back from disk (tuples become lists).
        return json.loads(json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _shape_polygon(
    kind: str, cx: float, cy: float, size: float, angle: float
) -> list[list[tuple[float, float]]]:
    """Polygons (outer first) of a shape of overall extent `size` centred on (cx, cy)."""

    def ring_points(radius: float, n: int, phase: float) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(phase + 2 * math.pi * k / n),
                cy + radius * math.sin(phase + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]

    if kind == "square":
        return [ring_points(size / math.sqrt(2), 4, angle + math.pi / 4)]
    if kind == "triangle":
        return [ring_points(size / math.sqrt(3) * 1.15, 3, angle)]
    if kind == "star":
        pts = []
        for k in range(10):
            r = size / 2 if k % 2 == 0 else size / 4.5
            a = angle + math.pi * k / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return [pts]
    if kind == "cross":
        arm, half = size / 2, size / 6
        c, s = math.cos(angle), math.sin(angle)
        polys = []
        for w, h in ((arm, half), (half, arm)):
            corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
            polys.append([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners])
        return polys
    raise ValueError(kind)


def _shape_mask(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (H, W) mask of one shape, 25-55% of the shorter image side, mostly inside the image."""
    side = min(height, width)
    size = float(rng.uniform(0.25, 0.55)) * side
    cx = float(rng.uniform(0.15, 0.85)) * width
    cy = float(rng.uniform(0.15, 0.85)) * height
    angle = float(rng.uniform(0, 2 * math.pi))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    r = size / 2
    if kind == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        draw.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=0)
    else:
        for poly in _shape_polygon(kind, cx, cy, size, angle):
            draw.polygon(poly, fill=1)
    return np.array(canvas, dtype=bool)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Low-saturation clutter: a gradient, blobs, lines and noise; (H, W, 3) float32 in pixel values."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = _hsv(rng.uniform(), rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.8))
    tilt = _hsv(rng.uniform(), rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.8))
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / max(height, width)
    image = base + (tilt - base) * (t[..., None] - t.min()) / max(float(np.ptp(t)), 1e-6)
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 10))):
        color = tuple(int(c) for c in _hsv(rng.uniform(), rng.uniform(0.0, 0.2), rng.uniform(0.15, 0.9)))
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
        if rng.uniform() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=color, width=int(rng.integers(1, 4)))
    image = np.asarray(canvas, dtype=np.float32)
    return image + rng.normal(0, 6, size=image.shape).astype(np.float32)


def _texture(height: int, width: int, cls: int, num_shapes: int, rng: np.random.Generator) -> np.ndarray:
    """A saturated, striped texture in the colour family of class `cls`; (H, W, 3) float32."""
    hue = (cls - 1) / num_shapes + rng.uniform(-0.04, 0.04)
    light = _hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0))
    dark = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.7, 1.0), rng.uniform(0.35, 0.6))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, 10.0)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    return dark + (light - dark) * stripes[..., None]


def render(spec: SyntheticSpec, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One example: image (H, W, 3) uint8 and label (H, W) uint8 with 255 on a thin band around objects."""
    height, width = spec.image_size
    split_key = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([spec.seed, split_key, index])
    num_shapes = len(spec.class_names) - 1
    image = _background(height, width, rng)
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, num_shapes + 1))
        mask = _shape_mask(spec.class_names[cls], height, width, rng)
        texture = _texture(height, width, cls, num_shapes, rng)
        image[mask] = texture[mask] + rng.normal(0, 6, size=(int(mask.sum()), 3))
        label[mask] = cls
    # Void band where a 3x3 neighbourhood holds two labels: one pixel each side of every boundary.
    band = ndimage.maximum_filter(label, size=3) != ndimage.minimum_filter(label, size=3)
    label[band] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write(folder: Path, spec: SyntheticSpec) -> None:
    voc = folder / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    palette = voc_colormap().reshape(-1).tolist()
    lists: dict[str, list[str]] = {}
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        ids = [f"{split}_{i:05d}" for i in range(count)]
        lists[split] = ids
        for i, image_id in enumerate(ids):
            image, label = render(spec, split, i)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=92)
            mask = Image.fromarray(label, mode="P")
            mask.putpalette(palette)
            mask.save(voc / "SegmentationClass" / f"{image_id}.png")
    lists["trainval"] = lists["train"] + lists["val"]
    for split, ids in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (folder / STAMP).write_text(json.dumps(spec.stamp(), indent=2))


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (a lock file), so concurrent processes generate one at a time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename below still keeps a finished copy whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic(root: str | Path, spec: SyntheticSpec) -> Path:
    """The dataset's folder, root/<spec.folder()>, generated unless an identical one is there; atomic (temp
    dir, then rename). Each spec has its own folder, so runs of different specs never touch each other's
    files (a quickstart training while experiment=tiny starts beside it)."""
    root = Path(root).expanduser().absolute() / spec.folder()
    if _read_stamp(root) == spec.stamp():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        stamp = _read_stamp(root)
        if stamp == spec.stamp():  # another process finished it while we waited
            return root
        if root.exists() and stamp is None and any(root.iterdir()):
            raise DatasetError(
                f"dataset.root {root} exists and is not a generated dataset (no {STAMP}); point dataset.root "
                "at a new or empty folder for dataset=synthetic"
            )
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _write(tmp, spec)
            if root.exists():
                # An empty folder, or a generated copy from another config: move it aside, then swap in.
                old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(root, old)
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
