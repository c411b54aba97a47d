"""ADE20K's SceneParsing benchmark in its official layout: ADEChallengeData2016/images/<split>/*.jpg and
annotations/<split>/*.png (splits training 20,210 / validation 2,000). Annotation 0 ("other objects") is
ignored and k becomes class k - 1 on read (deeplab.config.labels.ade20k_label_map)."""

from __future__ import annotations

from pathlib import Path

from deeplab.data.dataset import Sample, split_folder
from deeplab.errors import DatasetError

ADE20K_COUNTS = {"training": 20210, "validation": 2000}
TOP = "ADEChallengeData2016"


def is_ade20k_dir(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "annotations").is_dir()


def find_ade20k_dir(root: str | Path) -> Path:
    """The ADEChallengeData2016 folder: root itself or root/ADEChallengeData2016."""
    root = Path(root).expanduser()
    for candidate in (root, root / TOP):
        if is_ade20k_dir(candidate):
            return candidate
    fix = f"download and unpack it with `python -m deeplab.data.prepare ade20k --root {root}`"
    if not root.exists():
        raise DatasetError(f"dataset.root {root} does not exist: expected ADE20K ({TOP}) there; {fix}")
    raise DatasetError(
        f"no ADE20K under dataset.root {root}: expected {root}/{TOP}/{{images,annotations}}; {fix}"
    )


def ade20k_samples(root: Path, split: str) -> list[Sample]:
    """Every image of images/<split>/ with annotations/<split>/<stem>.png, sorted by name."""
    images_dir = split_folder(root / "images", split, "ADE20K")
    samples = [
        Sample(image.stem, image, root / "annotations" / split / f"{image.stem}.png")
        for image in sorted(images_dir.glob("*.jpg"))
    ]
    if not samples:
        raise DatasetError(f"no .jpg images in {images_dir}; re-extract ADEChallengeData2016.zip")
    return samples
