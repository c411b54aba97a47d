"""Class names read from annotation files when the config leaves them out (dataset=coco, dataset=labelme): what
the config needs of the files before any data is listed. Each file is read once per process."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from deeplab.errors import ConfigError

BACKGROUND_LABELS = {"_background_", "background"}  # labelme's convention, and the plain word


def read_json(path: Path, key: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist; point it at the annotation file")
    stat = path.stat()
    return _read_json(str(path), stat.st_mtime_ns, stat.st_size, key)


@functools.lru_cache(maxsize=16)
def _read_json(path: str, mtime: int, size: int, key: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {path} is not valid JSON ({e}); export it again") from None


def coco_category_names(annotations: str | None, chosen: list[int] | None) -> list[str]:
    """The names of the classes after the background: the file's categories in its order, or those `chosen`."""
    key = "dataset.train.annotations"
    if not annotations or annotations == "???":
        raise ConfigError(f"{key} is not set; give the training split's COCO annotation file")
    coco = read_json(Path(annotations).expanduser(), key)
    categories = coco.get("categories") if isinstance(coco, dict) else None
    if not isinstance(categories, list) or not categories:
        raise ConfigError(f"{key}: {annotations} has no categories; is it a COCO instances file?")
    by_id = {c.get("id"): str(c.get("name", c.get("id"))) for c in categories if isinstance(c, dict)}
    if chosen is None:
        return list(by_id.values())
    missing = [c for c in chosen if c not in by_id]
    if missing:
        raise ConfigError(
            f"dataset.categories: {missing[0]} is not a category of {annotations} (its ids: {sorted(by_id)})"
        )
    return [by_id[c] for c in chosen]


def labelme_label_names(folder: str | None) -> list[str]:
    """The labels of a folder's labelme files, sorted, the background left out."""
    key = "dataset.train.folder"
    if not folder or folder == "???":
        raise ConfigError(f"{key} is not set; give the folder of images and their labelme JSON files")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"{key}: {path} is not a folder; point it at the images and their labelme JSON files"
        )
    labels: set[str] = set()
    for file in sorted(path.glob("*.json")):
        shapes = read_json(file, key).get("shapes") or []
        labels.update(str(s.get("label")) for s in shapes if isinstance(s, dict))
    names = sorted(labels - BACKGROUND_LABELS)
    if not names:
        raise ConfigError(
            f"{key}: no labelme JSON file in {path} has a labelled shape; give dataset.class_names"
        )
    return names
