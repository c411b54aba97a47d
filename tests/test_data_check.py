"""python -m deeplab.data.check reports every problem of a dataset at once, with pixel counts per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.fake_data import save_palette_png, write_voc

from deeplab.data.check import main

TRAIN = ["a1", "a2", "a3"]
VAL = ["b1", "b2", "b3", "b4"]


def test_clean_dataset_reports_pixel_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_voc(tmp_path, TRAIN, VAL)
    assert main(["dataset=voc", f"dataset.root={tmp_path}", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "voc val: 4 listed, 4 read fine, 0 problems" in out
    assert "background" in out and "ignore" in out and "no problems found" in out
    total = sum(
        int(line.split()[2].replace(",", "")) for line in out.splitlines() if line.strip()[:1].isdigit()
    )
    assert total == 4 * 13 * 17  # every pixel counted once


def test_every_problem_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    voc = write_voc(tmp_path, TRAIN, VAL)
    (voc / "JPEGImages" / "b1.jpg").unlink()
    (voc / "JPEGImages" / "b2.jpg").write_bytes(b"junk")
    bad = np.zeros((13, 17), np.uint8)
    bad[0, 0] = 40
    save_palette_png(bad, voc / "SegmentationClass" / "b3.png")
    save_palette_png(np.zeros((5, 5), np.uint8), voc / "SegmentationClass" / "b4.png")
    assert main(["dataset=voc", f"dataset.root={tmp_path}", "--workers", "1"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    # three fake masks cannot hold all 21 VOC classes: that is reported too
    assert (
        "voc train: 3 listed, 3 read fine, 1 problems" in out
        and "problem: no pixel of class bicycle (2)" in out
    )
    assert "voc val: 4 listed, 0 read fine, 4 problems" in out
    assert "b1.jpg does not exist" in out
    assert "cannot read image" in out and "b2.jpg" in out
    assert "b3.png has values {40}" in out
    assert "b4.png is 5x5" in out
    assert "5 problem(s) found" in captured.err


def test_missing_root_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset=voc", f"dataset.root={tmp_path / 'none'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset.root") and "prepare voc" in err and "\n" not in err


def test_config_mistakes_exit_2_with_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset=nonexistent"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["dataset.ignore_index=300"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: dataset.ignore_index: input should be less than or equal to 255, got 300"
    )


def test_imbalance_shares_auto_weights_and_rare_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from helpers.fake_data import fake_image, save_jpg

    from deeplab.data.stats import median_frequency_weights

    for split in ("train", "val"):
        for i in range(2):
            mask = np.zeros((40, 50), np.uint8)
            mask[:, 30:] = 1
            mask[0, 0] = 2 if i == 0 else 255  # class 2: one pixel of 3,999 (0.025%)
            save_palette_png(mask, tmp_path / split / "masks" / f"{i}.png")
            save_jpg(fake_image(str(i), mask.shape), tmp_path / split / "images" / f"{i}.jpg")
    keys = [f"dataset.{s}.{k}={tmp_path / s / k}" for s in ("train", "val") for k in ("images", "masks")]
    assert main(["dataset=folder", *keys, "dataset.num_classes=3", "--split", "train"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    weights = median_frequency_weights([2398, 1600, 1])
    assert rows["class_0"][4] == "59.96%" and rows["class_1"][4] == "40.01%"  # of the 3,999 class pixels
    assert [float(rows[f"class_{c}"][5]) for c in range(3)] == pytest.approx(weights, rel=1e-3)  # auto weight
    warning = [line for line in out.splitlines() if "warning: rare classes" in line]
    assert len(warning) == 1 and "class_2 0.025%" in warning[0] and "class_1" not in warning[0]
    assert "dataset.sampler=rare_class" in warning[0]
