"""VOC, SBD and trainaug readers on small fake datasets in the official layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from helpers.configs import compose_config
from helpers.fake_data import (
    fake_mask,
    fake_sbd_label,
    save_palette_png,
    save_sbd_mat,
    write_list,
    write_sbd,
    write_seg_aug,
    write_voc,
)
from PIL import Image

from deeplab.config import train_config
from deeplab.data import build_dataset, palette
from deeplab.data.loaders import batches
from deeplab.data.voc import VOCSegmentation
from deeplab.data.voc_aug import trainaug_ids
from deeplab.errors import ConfigError, DatasetError

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2007_000005"]
SBD_TRAIN = ["2007_000002", "2007_000004", "2008_000001", "2008_000002"]  # one VOC train id, one VOC val id
SBD_VAL = ["2008_000002", "2008_000003", "2007_000005"]  # duplicate with SBD train, one VOC val id
TRAINAUG = sorted(["2007_000001", "2007_000002", "2007_000003", "2008_000001", "2008_000002", "2008_000003"])


def voc_cfg(root: Path, *overrides: str, dataset: str = "voc"):
    return compose_config([f"dataset={dataset}", f"dataset.root={root}", "trainer.crop_size=16", *overrides])


def decoded(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    write_voc(tmp_path, VOC_TRAIN, VOC_VAL, extra_images=["2008_000001"])
    return tmp_path


@pytest.mark.parametrize("where", ["parent", "VOCdevkit", "VOC2012"])
def test_voc_root_may_be_parent_devkit_or_voc2012(voc_root: Path, where: str) -> None:
    root = {
        "parent": voc_root,
        "VOCdevkit": voc_root / "VOCdevkit",
        "VOC2012": voc_root / "VOCdevkit" / "VOC2012",
    }
    cfg = voc_cfg(root[where])
    assert len(build_dataset(cfg, "train")) == 3
    assert len(build_dataset(cfg, "val")) == 2


def test_voc_labels_read_back_exactly(voc_root: Path) -> None:
    ds = build_dataset(voc_cfg(voc_root), "val")
    assert isinstance(ds, VOCSegmentation)
    voc = voc_root / "VOCdevkit" / "VOC2012"
    for k, image_id in enumerate(VOC_VAL):
        image, mask = ds[k]
        assert image.dtype == torch.uint8 and image.shape == (3, 13, 17)
        assert mask.dtype == torch.uint8 and mask.shape == (13, 17)  # labels fit in uint8
        # Palette indices come back as ids (never colours), 255 kept.
        expected = fake_mask(image_id, "voc")
        assert (mask.numpy() == expected).all()
        assert (mask == 255).any()
        assert (image.permute(1, 2, 0).numpy() == decoded(voc / "JPEGImages" / f"{image_id}.jpg")).all()


def test_voc_train_items_are_crop_sized(voc_root: Path) -> None:
    ds = build_dataset(voc_cfg(voc_root, "trainer.crop_size=40"), "train")
    image, mask = ds[0]
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)
    assert (mask == 255).any()  # 13x17 scaled by at most 2 is padded to 40x40 with 255


def test_voc_split_sizes_are_logged(voc_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        build_dataset(voc_cfg(voc_root), "val")
    assert any("voc val split" in r.getMessage() and ": 2 images" in r.getMessage() for r in caplog.records)


def test_voc_class_names_palette_and_ignore(voc_root: Path) -> None:
    d = train_config(voc_cfg(voc_root)).dataset
    names = d.names()
    assert len(names) == 21 == d.num_classes and names[0] == "background" and names[15] == "person"
    pal = palette(d)
    assert pal.dtype == np.uint8 and pal.shape == (256, 3)
    assert pal[15].tolist() == [192, 128, 128] and pal[255].tolist() == [224, 224, 192]
    assert d.ignore_index == 255


def test_voc_root_missing_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist.*deeplab\.data\.prepare voc --root"):
        build_dataset(voc_cfg(tmp_path / "nowhere"), "val")


def test_voc_wrong_layout_names_expected_folders(tmp_path: Path) -> None:
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        build_dataset(voc_cfg(tmp_path), "val")
    message = str(info.value)
    assert "VOCdevkit/VOC2012/" in message and "JPEGImages" in message and "prepare voc" in message
    assert "\n" not in message


def test_voc_unknown_split_lists_available(voc_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"test\.txt does not exist \(available: train, trainval, val\)"):
        build_dataset(voc_cfg(voc_root, "dataset.val_split=test"), "val")


@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_voc_listed_id_without_file_fails_at_build(voc_root: Path, kind: str) -> None:
    voc = voc_root / "VOCdevkit" / "VOC2012"
    folder = "JPEGImages" if kind == "jpg" else "SegmentationClass"
    gone = voc / folder / f"{VOC_VAL[1]}.{kind}"
    gone.unlink()
    with pytest.raises(DatasetError, match=f"{VOC_VAL[1]}: (image|mask) {gone} does not exist"):
        build_dataset(voc_cfg(voc_root), "val")


# --- bad files: raised from __getitem__ (so a DataLoader worker shows them), naming the file ---------------


def test_image_and_mask_of_different_sizes(voc_root: Path) -> None:
    voc = voc_root / "VOCdevkit" / "VOC2012"
    path = voc / "SegmentationClass" / f"{VOC_VAL[0]}.png"
    save_palette_png(np.zeros((12, 17), np.uint8), path)
    ds = build_dataset(voc_cfg(voc_root), "val")
    with pytest.raises(DatasetError, match=rf"is 17x13 but its mask {path} is 17x12"):
        ds[0]


def test_truncated_image(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_VAL[0]}.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    ds = build_dataset(voc_cfg(voc_root), "val")
    with pytest.raises(DatasetError, match=rf"cannot read image {path}: .*truncated"):
        ds[0]


def test_unreadable_image(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_VAL[0]}.jpg"
    path.write_bytes(b"this is not a jpeg")
    ds = build_dataset(voc_cfg(voc_root), "val")
    with pytest.raises(DatasetError, match=rf"cannot read image {path}"):
        ds[0]


def test_mask_values_out_of_range(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL[0]}.png"
    mask = fake_mask(VOC_VAL[0], "voc")
    mask[0, 0], mask[1, 1] = 21, 254
    save_palette_png(mask, path)
    ds = build_dataset(voc_cfg(voc_root), "val")
    with pytest.raises(
        DatasetError, match=rf"mask {path} has values \{{21, 254\}} outside 0..20 .* ignore index 255"
    ):
        ds[0]


def test_rgb_mask_where_ids_are_expected(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL[0]}.png"
    Image.open(path).convert("RGB").save(path)
    ds = build_dataset(voc_cfg(voc_root), "val")
    with pytest.raises(DatasetError, match=rf"mask {path} is an RGB image but class-id masks are expected"):
        ds[0]


def test_bad_sample_error_survives_a_dataloader_worker(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_VAL[1]}.jpg"
    path.write_bytes(b"\xff\xd8 broken")
    ds = build_dataset(voc_cfg(voc_root), "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DatasetError) as info:
        list(batches(loader))  # as the engine iterates: the worker's own message, on one line
    assert str(info.value).startswith(f"cannot read image {path}") and "\n" not in str(info.value)


def test_skip_bad_substitutes_in_training_and_leaves_out_in_evaluation(
    voc_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voc = voc_root / "VOCdevkit" / "VOC2012"
    for image_id in (VOC_TRAIN[0], VOC_VAL[0]):
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"broken")
    cfg = voc_cfg(
        voc_root, "dataset.skip_bad=true", "dataset.augment.scale=[1.0,1.0]", "trainer.crop_size=13"
    )
    train = build_dataset(cfg, "train")
    with caplog.at_level(logging.WARNING):
        _, mask = train[0]  # a training batch keeps its size: the next sample instead
    assert (mask.numpy()[:, :13] == fake_mask(VOC_TRAIN[1], "voc")[:, :13]).any()
    assert train.skipped == 1 and f"{VOC_TRAIN[0]}.jpg" in caplog.text
    val = build_dataset(cfg, "val")
    assert val[0] is None and val.skipped == 1  # evaluation leaves it out: no image is scored twice
    assert val[1] is not None


# --- SBD ----------------------------------------------------------------------------------------------------


def test_sbd_mat_has_the_real_gtcls_structure(tmp_path: Path) -> None:
    label = fake_sbd_label("2008_000001")
    save_sbd_mat(label, tmp_path / "a.mat")
    read = scipy.io.loadmat(str(tmp_path / "a.mat"))["GTcls"][0]["Segmentation"][0]
    assert read.dtype == np.uint8 and (read == label).all()
    assert scipy.io.loadmat(str(tmp_path / "a.mat"))["GTcls"].dtype.names == (
        "Segmentation",
        "Boundaries",
        "CategoriesPresent",
    )


def test_sbd_dataset(tmp_path: Path) -> None:
    write_sbd(tmp_path, SBD_TRAIN, SBD_VAL)
    cfg = voc_cfg(tmp_path / "benchmark_RELEASE", dataset="sbd")
    assert len(build_dataset(cfg, "train")) == 4
    val = build_dataset(cfg, "val")
    assert len(val) == 3
    _, mask = val[1]
    assert (mask.numpy() == fake_sbd_label(SBD_VAL[1])).all()


def test_sbd_bad_mat_names_the_file(tmp_path: Path) -> None:
    sbd = write_sbd(tmp_path, SBD_TRAIN, SBD_VAL)
    path = sbd / "cls" / f"{SBD_VAL[0]}.mat"
    scipy.io.savemat(str(path), {"something": np.zeros((2, 2))})
    ds = build_dataset(voc_cfg(tmp_path, dataset="sbd"), "val")
    with pytest.raises(DatasetError, match=rf"SBD label {path} has no GTcls.Segmentation"):
        ds[0]


# --- trainaug -----------------------------------------------------------------------------------------------


def test_trainaug_rule() -> None:
    assert trainaug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN + SBD_VAL) == TRAINAUG


def test_trainaug_rule_on_the_real_voc_lists() -> None:
    lists = Path(__file__).parent / "data" / "voc_lists"  # ImageSets/Segmentation/{train,val}.txt of VOC 2012
    train, val = ((lists / f"{s}.txt").read_text().split() for s in ("train", "val"))
    assert (len(train), len(val)) == (1464, 1449)
    # SBD holds many VOC train and val images besides its own: those must neither double nor leak val in.
    sbd = train[::2] + val[::3] + [f"sbd_only_{i:04d}" for i in range(500)]
    ids = trainaug_ids(train, val, sbd + sbd[:50])
    assert len(ids) == 1464 + 500 and not set(ids) & set(val)


def test_voc_aug_side_by_side(voc_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_sbd(voc_root, SBD_TRAIN, SBD_VAL)
    cfg = voc_cfg(voc_root, dataset="voc_aug")
    with caplog.at_level(logging.INFO):
        train = build_dataset(cfg, "train")
    assert [s.id for s in train.samples] == TRAINAUG
    assert len(build_dataset(cfg, "val")) == 2
    assert "6 images" in caplog.text and "3 VOC png + 3 SBD .mat" in caplog.text
    by_id = {s.id: s for s in train.samples}
    # In both VOC and SBD: the VOC mask (with its void band) is used.
    assert by_id["2007_000002"].mask.suffix == ".png"
    assert by_id["2008_000001"].mask.suffix == ".mat"
    # An SBD-only id whose image is also in VOC JPEGImages reads VOC's copy; otherwise SBD's img.
    assert by_id["2008_000001"].image.parent.name == "JPEGImages"
    assert by_id["2008_000003"].image.parent.name == "img"
    eval_train = build_dataset(
        voc_cfg(voc_root, "dataset.augment.scale=[1.0,1.0]", dataset="voc_aug"), "train"
    )
    index = TRAINAUG.index("2008_000003")
    labels = eval_train.load(index)[1]
    assert (labels == fake_sbd_label("2008_000003")).all()
    labels = eval_train.load(TRAINAUG.index("2007_000002"))[1]
    assert (labels == fake_mask("2007_000002", "voc")).all()


@pytest.mark.parametrize("where", ["VOCdevkit", "VOC2012"])
def test_voc_aug_finds_sbd_beside_voc_from_any_root(voc_root: Path, where: str) -> None:
    write_sbd(voc_root, SBD_TRAIN, SBD_VAL)
    root = voc_root / "VOCdevkit" if where == "VOCdevkit" else voc_root / "VOCdevkit" / "VOC2012"
    assert [s.id for s in build_dataset(voc_cfg(root, dataset="voc_aug"), "train").samples] == TRAINAUG


def test_voc_aug_sbd_root_elsewhere(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc", VOC_TRAIN, VOC_VAL)
    write_sbd(tmp_path / "elsewhere", SBD_TRAIN, SBD_VAL)
    cfg = voc_cfg(tmp_path / "voc", f"dataset.sbd_root={tmp_path / 'elsewhere'}", dataset="voc_aug")
    assert len(build_dataset(cfg, "train")) == 6


def test_voc_aug_without_sbd_says_how_to_prepare(voc_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"needs SBD or SegmentationClassAug.*prepare voc_aug"):
        build_dataset(voc_cfg(voc_root, dataset="voc_aug"), "train")


@pytest.mark.parametrize("place", ["VOC2012", "VOCdevkit"])
def test_voc_aug_segmentation_class_aug(voc_root: Path, place: str) -> None:
    voc = voc_root / "VOCdevkit" / "VOC2012"
    aug = (voc if place == "VOC2012" else voc.parent) / "SegmentationClassAug"
    write_seg_aug(aug, [*VOC_TRAIN, *VOC_VAL, "2008_000001"])
    ds = build_dataset(voc_cfg(voc_root, "dataset.augment.scale=[1.0,1.0]", dataset="voc_aug"), "train")
    ids = [s.id for s in ds.samples]
    assert ids == sorted([*VOC_TRAIN, "2008_000001"])  # every id there minus VOC val
    assert (ds.load(ids.index("2008_000001"))[1] == fake_mask("2008_000001", "aug")).all()
    assert (ds.load(0)[1] == fake_mask(ids[0], "voc")).all()  # VOC mask preferred


def test_voc_aug_explicit_list(voc_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_sbd(voc_root, SBD_TRAIN, SBD_VAL)
    listed = tmp_path / "my_list.txt"
    write_list(listed, ["2008_000001", "2007_000004", "2007_000001"])
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(voc_cfg(voc_root, f"dataset.aug_list={listed}", dataset="voc_aug"), "train")
    assert [s.id for s in ds.samples] == ["2007_000001", "2008_000001"]
    assert "1 ids of the VOC val split" in caplog.text


def test_voc_aug_missing_sbd_file_fails_at_build(voc_root: Path) -> None:
    sbd = write_sbd(voc_root, SBD_TRAIN, SBD_VAL)
    (sbd / "cls" / "2008_000003.mat").unlink()
    with pytest.raises(DatasetError, match=r"2008_000003: mask .*2008_000003\.mat does not exist"):
        build_dataset(voc_cfg(voc_root, dataset="voc_aug"), "train")


def test_null_split_name_is_refused_naming_the_key(voc_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset\.val_split: input should be a valid string, got None"):
        build_dataset(voc_cfg(voc_root, "dataset.val_split=null"), "val")
