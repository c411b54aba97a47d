"""python -m deeplab.data.check reports every problem of a dataset at once, with pixel counts per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_data import save_palette_png, write_voc

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
