"""Semantic Boundaries Dataset (Hariharan et al., ICCV 2011) in its official layout:
benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}; labels are GTcls.Segmentation (0..20)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deeplab.data.dataset import Sample, SegmentationDataset
from deeplab.data.voc import read_id_list
from deeplab.errors import DatasetError

SBD_COUNTS = {"train": 8498, "val": 2857}


def is_sbd_dir(path: Path) -> bool:
    return (path / "cls").is_dir() and (path / "img").is_dir()


def sbd_candidates(path: Path) -> list[Path]:
    """Folders that may be SBD's `dataset` folder, given benchmark_RELEASE, its dataset folder or their parent."""
    return [path, path / "dataset", path / "benchmark_RELEASE" / "dataset"]


def find_sbd_dir(root: str | Path) -> Path:
    """The SBD benchmark_RELEASE/dataset folder, given it, benchmark_RELEASE, or a folder holding that."""
    root = Path(root).expanduser()
    for candidate in sbd_candidates(root):
        if is_sbd_dir(candidate):
            return candidate
    fix = f"download and unpack it with `python -m deeplab.data.prepare sbd --root {root}`"
    if not root.exists():
        raise DatasetError(f"SBD folder {root} does not exist; {fix}")
    raise DatasetError(
        f"no SBD under {root}: expected {root}/benchmark_RELEASE/dataset/{{img,cls,train.txt,val.txt}} "
        f"(the path may also point at benchmark_RELEASE or its dataset folder); {fix}"
    )


def sbd_split_ids(sbd_dir: Path, split: str) -> list[str]:
    return read_id_list(sbd_dir / f"{split}.txt")


def sbd_sample(sbd_dir: Path, image_id: str) -> Sample:
    return Sample(image_id, sbd_dir / "img" / f"{image_id}.jpg", sbd_dir / "cls" / f"{image_id}.mat")


class SBDSegmentation(SegmentationDataset):
    """SBD's class segmentations (Hariharan et al., "Semantic contours from inverse detectors", ICCV 2011)."""

    def __init__(self, root: str | Path, split: str, num_classes: int = 21, **kwargs: Any) -> None:
        self.sbd_dir = find_sbd_dir(root)
        ids = sbd_split_ids(self.sbd_dir, split)
        kwargs.setdefault("name", str(self.sbd_dir / f"{split}.txt"))
        super().__init__([sbd_sample(self.sbd_dir, i) for i in ids], num_classes, **kwargs)
