"""Pascal VOC 2012 segmentation in its official layout: VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
ImageSets/Segmentation/<split>.txt}. Masks are palette PNGs read as indices; 255 marks the void boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deeplab.data.dataset import Sample, SegmentationDataset
from deeplab.errors import DatasetError

VOC_COUNTS = {"train": 1464, "val": 1449, "trainval": 2913}


def is_voc_dir(path: Path) -> bool:
    return (path / "JPEGImages").is_dir() and (path / "ImageSets" / "Segmentation").is_dir()


def find_voc_dir(root: str | Path, what: str = "voc") -> Path:
    """The VOC2012 folder, given root = VOC2012, VOCdevkit, or a folder holding VOCdevkit (or VOC2012)."""
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if is_voc_dir(candidate):
            return candidate
    fix = f"download and unpack it with `python -m deeplab.data.prepare {what} --root {root}`"
    if not root.exists():
        raise DatasetError(f"dataset.root {root} does not exist: expected Pascal VOC 2012 there; {fix}")
    raise DatasetError(
        f"no Pascal VOC 2012 under dataset.root {root}: expected {root}/VOCdevkit/VOC2012/"
        "{JPEGImages,SegmentationClass,ImageSets/Segmentation} (dataset.root may also point at VOCdevkit or "
        f"VOC2012); {fix}"
    )


def read_id_list(path: Path, hint: str = "") -> list[str]:
    """Ids of a split list file, one per line (blank lines and trailing fields ignored)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        siblings = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        available = f" (available: {', '.join(siblings)})" if siblings else ""
        raise DatasetError(f"split list {path} does not exist{available}{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read split list {path}: {e}") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def voc_list_path(voc_dir: Path, split: str) -> Path:
    return voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"


def voc_split_ids(voc_dir: Path, split: str) -> list[str]:
    hint = "; choose another split with dataset.train_split / dataset.val_split"
    return read_id_list(voc_list_path(voc_dir, split), hint)


def voc_sample(voc_dir: Path, image_id: str) -> Sample:
    return Sample(
        image_id,
        voc_dir / "JPEGImages" / f"{image_id}.jpg",
        voc_dir / "SegmentationClass" / f"{image_id}.png",
    )


class VOCSegmentation(SegmentationDataset):
    """Pascal VOC 2012 segmentation (Everingham et al.); also reads any dataset written in its layout."""

    def __init__(self, root: str | Path, split: str, num_classes: int = 21, **kwargs: Any) -> None:
        self.voc_dir = find_voc_dir(root)
        ids = voc_split_ids(self.voc_dir, split)
        kwargs.setdefault("name", f"{self.voc_dir / 'ImageSets' / 'Segmentation' / split}.txt")
        super().__init__([voc_sample(self.voc_dir, i) for i in ids], num_classes, **kwargs)
