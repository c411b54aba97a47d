"""Cityscapes and ADE20K in their official layouts (generated, tiny): label mapping, recipes, training, prepare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config, one_thread
from helpers.fake_data import write_ade20k, write_cityscapes, zip_folder
from PIL import Image

import deeplab.data.prepare as prepare
from deeplab.config import train_config
from deeplab.data import build_dataset, load_split, palette
from deeplab.errors import ConfigError, DatasetError

# cityscapesScripts' labels.py, written out: labelId -> trainId (255: not evaluated).
OFFICIAL_TRAIN_IDS = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4,
    14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

# A model that trains in seconds: the tiny experiment's model and loop on another dataset.
TINY = [
    "backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.low_level_channels=8",
    "model.decoder.channels=16", "trainer.max_iters=2", "trainer.batch_size=2", "trainer.eval_interval=2",
    "trainer.ckpt_interval=2", "trainer.log_interval=1", "trainer.num_workers=0", "trainer.deterministic=true",
    "logger.num_images=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cs") / "cityscapes"
    splits = {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}, "test": {"berlin": 1}}
    return write_cityscapes(root, splits, label_ids=False)


@pytest.fixture(scope="module")
def ade20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ade20k(tmp_path_factory.mktemp("ade"), {"training": 3, "validation": 2})


def test_every_cityscapes_label_id_becomes_its_official_train_id(cityscapes: Path) -> None:
    cfg = compose_config(["dataset=cityscapes", f"dataset.root={cityscapes.parent}"])
    val = build_dataset(cfg, "val")
    assert [s.id for s in val.samples] == ["frankfurt_000000_000000", "frankfurt_000000_000001"]
    for index, sample in enumerate(val.samples):
        label_ids = np.array(Image.open(sample.mask))
        assert set(np.unique(label_ids)) == set(range(34))  # every id 0..33 is in the file
        image, mask = val[index]
        expected = np.vectorize(OFFICIAL_TRAIN_IDS.get)(label_ids)
        assert np.array_equal(mask.numpy(), expected)
        assert image.shape == (3, 32, 48)
    # cityscapesScripts' converted *_labelTrainIds.png give the same masks
    converted = build_dataset(
        compose_config([*cfg_overrides(cityscapes), "dataset.labels=labelTrainIds"]), "val"
    )
    assert converted.samples[0].mask.name.endswith("_gtFine_labelTrainIds.png")
    assert np.array_equal(converted[0][1].numpy(), val[0][1].numpy())


def cfg_overrides(root: Path) -> list[str]:
    return ["dataset=cityscapes", f"dataset.root={root}"]


def test_cityscapes_names_and_official_colours(cityscapes: Path) -> None:
    d = train_config(compose_config(cfg_overrides(cityscapes))).dataset
    names = d.names()
    assert len(names) == 19 and names[0] == "road" and names[11] == "person" and names[18] == "bicycle"
    colors = palette(d)
    assert tuple(colors[0]) == (128, 64, 128) and tuple(colors[13]) == (0, 0, 142)
    assert tuple(colors[18]) == (119, 11, 32)


def test_ade20k_ignores_other_and_shifts_every_class_down(ade20k: Path) -> None:
    cfg = compose_config(["dataset=ade20k", f"dataset.root={ade20k.parent}"])
    val = build_dataset(cfg, "val")
    assert len(val) == 2 and len(build_dataset(cfg, "train")) == 3
    stored = np.array(Image.open(val.samples[0].mask))
    assert set(np.unique(stored)) == set(range(151))
    mask = val[0][1].numpy()
    assert np.array_equal(mask[stored == 0], np.full((stored == 0).sum(), 255))
    assert np.array_equal(mask[stored > 0], stored[stored > 0] - 1)
    assert mask.max() == 255 and mask[mask != 255].max() == 149
    names = train_config(cfg).dataset.names()
    assert len(names) == 150 and names[0] == "wall" and names[149] == "flag"
    # dataset.root may also name ADEChallengeData2016 itself
    assert len(build_dataset(compose_config(["dataset=ade20k", f"dataset.root={ade20k}"]), "val")) == 2


def test_an_ade20k_value_above_150_is_named(tmp_path: Path) -> None:
    top = write_ade20k(tmp_path, {"training": 1, "validation": 1})
    path = next((top / "annotations" / "validation").glob("*.png"))
    Image.fromarray(np.full((32, 40), 200, dtype=np.uint8), mode="L").save(path)
    val = build_dataset(compose_config(["dataset=ade20k", f"dataset.root={tmp_path}"]), "val")
    with pytest.raises(DatasetError, match=rf"mask {path} has values \{{199\}} outside 0..149"):
        val[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=cityscapes", "dataset.num_classes=20"], "dataset.num_classes must be 19 for Cityscapes"),
        (["dataset=ade20k", "dataset.num_classes=151"], "dataset.num_classes must be 150 for ADE20K"),
        (["dataset=cityscapes", "dataset.labels=color"], "dataset.labels: input should be 'labelIds' or"),
    ],
)
def test_dataset_mistakes_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train_config(compose_config(overrides))


def test_missing_data_and_splits_say_how_to_fix(cityscapes: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no Cityscapes under dataset.root .*needs a login"):
        build_dataset(compose_config(["dataset=cityscapes", f"dataset.root={tmp_path}"]), "val")
    with pytest.raises(DatasetError, match=r"prepare ade20k --root"):
        build_dataset(compose_config(["dataset=ade20k", f"dataset.root={tmp_path / 'none'}"]), "val")
    with pytest.raises(DatasetError, match=r"split 'trainval' not found.*splits here: test, train, val"):
        build_dataset(compose_config([*cfg_overrides(cityscapes), "dataset.val_split=trainval"]), "val")


def test_rectangular_crops(cityscapes: Path) -> None:
    cfg = compose_config([*cfg_overrides(cityscapes), "trainer.crop_size=[24,40]"])
    train = load_split(cfg, "train")
    image, mask = train[(0, 123)]
    assert image.shape == (3, 24, 40) and mask.shape == (24, 40)


@pytest.mark.parametrize("name", ["cityscapes", "ade20k"])
def test_a_tiny_run_trains_and_validates_in_the_official_layout(
    name: str, cityscapes: Path, ade20k: Path, tmp_path: Path
) -> None:
    from deeplab.train.engine import train

    root = cityscapes.parent if name == "cityscapes" else ade20k.parent
    crop = "[24,40]" if name == "cityscapes" else "24"
    cfg = compose_config([f"dataset={name}", f"dataset.root={root}", *TINY, f"trainer.crop_size={crop}"])
    with one_thread():
        metrics = train(cfg, tmp_path / "run")
    num_classes = 19 if name == "cityscapes" else 150
    assert len(metrics["iou_per_class"]) == num_classes and 0 <= metrics["miou"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").stat().st_size < 5_000_000


def test_prepare_cityscapes_from_the_hand_downloaded_zips(
    cityscapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    archives = tmp_path / "downloads"
    # The official zips hold leftImg8bit/ (gtFine/) at their top.
    zip_folder(cityscapes / "leftImg8bit", archives / "leftImg8bit_trainvaltest.zip", "leftImg8bit")
    zip_folder(cityscapes / "gtFine", archives / "gtFine_trainvaltest.zip", "gtFine")
    root = tmp_path / "data"
    # without the archives: the login is named, nothing is downloaded
    assert prepare.main(["cityscapes", "--root", str(root)]) == 2
    assert "needs a login" in capsys.readouterr().err
    assert not root.exists()  # the folders it made (data/, data/cityscapes/) are removed again
    monkeypatch.setitem(prepare.EXPECTED, "cityscapes", {"train": 3, "val": 2, "test": 1})
    assert prepare.main(["cityscapes", "--root", str(root), "--archives", str(archives)]) == 0
    assert "cityscapes: train 3, val 2, test 1" in capsys.readouterr().out
    assert len(build_dataset(compose_config(cfg_overrides(root)), "train")) == 3
    assert not [p for p in (root / "cityscapes").iterdir() if p.name.startswith(".unpack")]
    # the real counts are checked
    monkeypatch.setitem(prepare.EXPECTED, "cityscapes", dict(prepare.CITYSCAPES_COUNTS))
    assert prepare.main(["cityscapes", "--root", str(root), "--archives", str(archives)]) == 2
    assert "train has 3 ids, expected 2,975" in capsys.readouterr().err


def test_prepare_ade20k_checks_the_zip(
    ade20k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import hashlib

    archives = tmp_path / "downloads"
    path = zip_folder(ade20k, archives / "ADEChallengeData2016.zip", "ADEChallengeData2016")
    root = tmp_path / "data"
    assert (
        prepare.main(["ade20k", "--root", str(root), "--archives", str(archives)]) == 2
    )  # not the official md5
    assert "checksum of" in capsys.readouterr().err
    official = prepare.ARCHIVES["ade20k"]
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(
        prepare.ARCHIVES, "ade20k", prepare.Archive(official.filename, official.url, md5, official.top)
    )
    monkeypatch.setitem(prepare.EXPECTED, "ade20k", {"training": 3, "validation": 2})
    assert prepare.main(["ade20k", "--root", str(root), "--archives", str(archives)]) == 0
    assert "ade20k: training 3, validation 2" in capsys.readouterr().out
    assert len(build_dataset(compose_config(["dataset=ade20k", f"dataset.root={root}"]), "val")) == 2
    # a truncated zip is named
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ADEChallengeData2016.zip").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setitem(
        prepare.ARCHIVES, "ade20k", prepare.Archive(official.filename, official.url, None, official.top)
    )
    assert prepare.main(["ade20k", "--root", str(tmp_path / "r2"), "--archives", str(broken)]) == 2
    assert "not a zip file" in capsys.readouterr().err
