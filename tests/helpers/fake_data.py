"""Small fake datasets in the official on-disk layouts (VOC, SBD, SegmentationClassAug, folders) for tests.

Every mask is a function of its id and source, so tests can check exactly which file a reader used.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from deeplab.config.labels import voc_colormap

SIZE = (13, 17)  # (height, width): tiny, and not square so transposes would show


def id_seed(image_id: str, source: str) -> int:
    return zlib.crc32(f"{source}:{image_id}".encode())


def fake_image(image_id: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    rng = np.random.default_rng(id_seed(image_id, "image"))
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def fake_mask(image_id: str, source: str, size: tuple[int, int] = SIZE, num_classes: int = 21) -> np.ndarray:
    """(H, W) uint8: a class-`c` rectangle on background, 255 on its top row; c depends on id and source."""
    rng = np.random.default_rng(id_seed(image_id, source))
    h, w = size
    mask = np.zeros(size, dtype=np.uint8)
    c = int(rng.integers(1, num_classes))
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y0 : y0 + h // 2, x0 : x0 + w // 2] = c
    mask[y0, x0 : x0 + w // 2] = 255
    return mask


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_colormap().reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def save_jpg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_list(path: Path, ids: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_voc(
    root: Path, train: Sequence[str], val: Sequence[str], extra_images: Sequence[str] = (), size=SIZE
) -> Path:
    """root/VOCdevkit/VOC2012 with JPEGImages, SegmentationClass (palette PNGs), ImageSets/Segmentation."""
    voc = root / "VOCdevkit" / "VOC2012"
    for i in [*train, *val]:
        save_jpg(fake_image(i, size), voc / "JPEGImages" / f"{i}.jpg")
        save_palette_png(fake_mask(i, "voc", size), voc / "SegmentationClass" / f"{i}.png")
    for i in extra_images:  # JPEGImages holds more images than the segmentation lists (e.g. SBD's)
        save_jpg(fake_image(i, size), voc / "JPEGImages" / f"{i}.jpg")
    lists = voc / "ImageSets" / "Segmentation"
    write_list(lists / "train.txt", train)
    write_list(lists / "val.txt", val)
    write_list(lists / "trainval.txt", [*train, *val])
    return voc


def save_sbd_mat(label: np.ndarray, path: Path) -> None:
    """A .mat in SBD's GTcls structure: a 1x1 struct with Segmentation, Boundaries and CategoriesPresent."""
    classes = sorted(int(c) for c in np.unique(label) if 0 < c < 255)
    boundaries = np.empty((len(classes), 1), dtype=object)
    for k, c in enumerate(classes):
        boundaries[k, 0] = scipy.sparse.csc_matrix((label == c).astype(bool))
    gtcls = {
        "Segmentation": label.astype(np.uint8),
        "Boundaries": boundaries,
        "CategoriesPresent": np.array(classes, dtype=np.uint8).reshape(-1, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"GTcls": gtcls}, do_compression=True)


def fake_sbd_label(image_id: str, size=SIZE) -> np.ndarray:
    label = fake_mask(image_id, "sbd", size)
    label[label == 255] = 0  # SBD labels hold 0..20 only
    return label


def write_sbd(root: Path, train: Sequence[str], val: Sequence[str], size=SIZE) -> Path:
    """root/benchmark_RELEASE/dataset with img/*.jpg, cls/*.mat, train.txt, val.txt."""
    sbd = root / "benchmark_RELEASE" / "dataset"
    for i in dict.fromkeys([*train, *val]):
        save_jpg(fake_image(i, size), sbd / "img" / f"{i}.jpg")
        save_sbd_mat(fake_sbd_label(i, size), sbd / "cls" / f"{i}.mat")
    (sbd / "inst").mkdir(parents=True, exist_ok=True)
    write_list(sbd / "train.txt", train)
    write_list(sbd / "val.txt", val)
    return sbd


def write_seg_aug(folder: Path, ids: Sequence[str], size=SIZE) -> Path:
    """A SegmentationClassAug folder of grayscale id PNGs (as the widely shared copy holds them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(fake_mask(i, "aug", size), mode="L").save(folder / f"{i}.png")
    return folder


def tar_folder(source: Path, arcname: str, dest: Path) -> Path:
    """A tar (or .tgz when dest ends so) of source stored as arcname, like the official archives."""
    mode = "w:gz" if dest.suffix in (".tgz", ".gz") else "w"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, mode) as tar:
        tar.add(source, arcname=arcname)
    return dest


def write_cityscapes(
    root: Path, splits: dict[str, dict[str, int]], size: tuple[int, int] = (32, 48), label_ids: bool = True
) -> Path:
    """root/leftImg8bit/<split>/<city>/<city>_000000_00000N_leftImg8bit.png and the gtFine labelIds masks
    (also *_labelTrainIds.png with label_ids=False); splits: {split: {city: number of images}}. Each mask
    holds every labelId 0..33 in vertical bands, shifted per image."""
    h, w = size
    for split, cities in splits.items():
        for city, count in cities.items():
            for n in range(count):
                stem = f"{city}_000000_{n:06d}"
                ids = ((np.arange(w)[None, :] * 34 // w + n) % 34).repeat(h, axis=0).astype(np.uint8)
                image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(fake_image(stem, size)).save(image)
                masks = root / "gtFine" / split / city
                masks.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ids, mode="L").save(masks / f"{stem}_gtFine_labelIds.png")
                if not label_ids:
                    from deeplab.config.labels import cityscapes_label_map

                    train_ids = cityscapes_label_map()[ids]
                    Image.fromarray(train_ids, mode="L").save(masks / f"{stem}_gtFine_labelTrainIds.png")
    return root


def write_ade20k(root: Path, splits: dict[str, int], size: tuple[int, int] = (32, 40)) -> Path:
    """root/ADEChallengeData2016/{images,annotations}/<split>/ADE_<split>_0000000N.{jpg,png}: annotations
    hold every value 0..150 (each image a shifted copy)."""
    h, w = size
    top = root / "ADEChallengeData2016"
    for split, count in splits.items():
        for n in range(1, count + 1):
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{n:08d}"
            save_jpg(fake_image(stem, size), top / "images" / split / f"{stem}.jpg")
            values = ((np.arange(h * w) + 37 * n) % 151).reshape(h, w).astype(np.uint8)
            path = top / "annotations" / split / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(values, mode="L").save(path)
    return top


def zip_folder(source: Path, dest: Path, prefix: str = "") -> Path:
    """A zip of source's files, stored under prefix/ (as the official Cityscapes and ADE20K zips)."""
    import zipfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, str(Path(prefix) / path.relative_to(source)))
    return dest


def write_camvid(root: Path, splits: dict[str, int], size: tuple[int, int] = (24, 32)) -> Path:
    """root/{split}/<seq>_0N.png photos and root/{split}annot/<seq>_0N.png masks in the SegNet layout: each
    mask holds every value 0..11 (11 = void) in horizontal bands, shifted per image."""
    h, w = size
    for split, count in splits.items():
        for n in range(count):
            stem = f"0001TP_{split}_{n:02d}"
            photo = root / split / f"{stem}.png"
            photo.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fake_image(stem, size)).save(photo)
            values = ((np.arange(h)[:, None] * 12 // h + n) % 12).repeat(w, axis=1).astype(np.uint8)
            mask = root / f"{split}annot" / f"{stem}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(values, mode="L").save(mask)
    return root
