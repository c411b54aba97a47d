"""dataset=synthetic: generated once in the VOC layout, deterministic, atomic, read by the VOC reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config
from PIL import Image

import deeplab.data.synthetic as synthetic
from deeplab.config import train_config
from deeplab.data import build_dataset, palette
from deeplab.data.voc import VOCSegmentation
from deeplab.errors import ConfigError, DatasetError

SMALL = ["dataset.num_train=6", "dataset.num_val=3", "dataset.image_size=[32,40]", "trainer.crop_size=24"]


def syn_cfg(root: Path, *overrides: str):
    return compose_config(["dataset=synthetic", f"dataset.root={root}", *SMALL, *overrides])


SMALL_FOLDER = "train6-val3-32x40-seed0-disc-square-triangle"  # each spec's folder under dataset.root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generated_in_voc_layout_and_read_by_the_voc_reader(tmp_path: Path) -> None:
    cfg = syn_cfg(tmp_path / "syn")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert isinstance(train, VOCSegmentation) and isinstance(val, VOCSegmentation)
    assert len(train) == 6 and len(val) == 3
    voc = tmp_path / "syn" / SMALL_FOLDER / "VOC2012"
    assert (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == [
        f"train_{i:05d}" for i in range(6)
    ]
    assert Image.open(voc / "SegmentationClass" / "val_00000.png").mode == "P"
    assert Image.open(voc / "JPEGImages" / "val_00000.jpg").format == "JPEG"
    image, mask = val[0]
    assert image.shape == (3, 32, 40) and mask.shape == (32, 40)
    assert train[0][0].shape == (3, 24, 24)
    d = train_config(cfg).dataset
    assert d.names() == ["background", "disc", "square", "triangle"]
    assert palette(d)[1].tolist() == [128, 0, 0]


def test_labels_hold_shapes_and_a_void_band(tmp_path: Path) -> None:
    cfg = syn_cfg(tmp_path / "syn", "dataset.num_train=20")
    ds = build_dataset(cfg, "train")
    seen = set()
    for k in range(len(ds)):
        _, mask, _ = ds.load(k)
        values = set(np.unique(mask).tolist())
        assert values <= {0, 1, 2, 3, 255} and 255 in values and 0 in values
        seen |= values
        # objects are reasonably large: the labelled (non-background) area is a real share of the image
        assert ((mask != 0) & (mask != 255)).mean() > 0.02
    assert seen == {0, 1, 2, 3, 255}


def test_classes_have_distinct_colours(tmp_path: Path) -> None:
    ds = build_dataset(syn_cfg(tmp_path / "syn", "dataset.num_train=24"), "train")
    hues: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for k in range(len(ds)):
        image, mask, _ = ds.load(k)
        rgb = image.astype(float)
        for c in hues:
            if (mask == c).sum() > 20:
                mean = rgb[mask == c].mean(axis=0)
                hues[c].append(int(np.argmax(mean)))  # dominant channel
    # disc red, square green, triangle blue: the dominant channel tells the class
    assert all(set(v) == {c - 1} for c, v in hues.items() if v)


def test_generation_is_deterministic_from_the_seed(tmp_path: Path) -> None:
    build_dataset(syn_cfg(tmp_path / "a"), "val")
    build_dataset(syn_cfg(tmp_path / "b"), "val")
    build_dataset(syn_cfg(tmp_path / "c", "dataset.seed=1"), "val")
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert (
        len(a) == len(c)
        and a[f"{SMALL_FOLDER}/VOC2012/JPEGImages/train_00000.jpg"]
        != c[f"{SMALL_FOLDER.replace('seed0', 'seed1')}/VOC2012/JPEGImages/train_00000.jpg"]
    )


def test_reused_when_unchanged_and_another_spec_written_beside_it(tmp_path: Path) -> None:
    """The quickstart training while experiment=tiny starts in the same checkout: each spec has its folder, so
    neither rewrites the other's files (it did, and the running quickstart failed)."""
    root = tmp_path / "syn"
    build_dataset(syn_cfg(root), "val")
    marker = root / SMALL_FOLDER / "VOC2012" / "JPEGImages" / "train_00000.jpg"
    stamp_time = marker.stat().st_mtime_ns
    build_dataset(syn_cfg(root), "train")
    assert marker.stat().st_mtime_ns == stamp_time  # not written again
    before = files(root / SMALL_FOLDER)
    assert len(build_dataset(syn_cfg(root, "dataset.num_train=8"), "train")) == 8
    other = root / SMALL_FOLDER.replace("train6", "train8")
    assert json.loads((other / "synthetic.json").read_text())["num_train"] == 8
    assert files(root / SMALL_FOLDER) == before and marker.stat().st_mtime_ns == stamp_time
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == sorted(
        [SMALL_FOLDER, other.name]
    )  # no leftovers


def test_a_crash_leaves_no_half_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def crashing_render(spec, split, index):
        calls.append(index)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(spec, split, index)

    original = synthetic.render
    monkeypatch.setattr(synthetic, "render", crashing_render)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(syn_cfg(tmp_path / "syn"), "val")
    assert not (tmp_path / "syn" / SMALL_FOLDER).exists()
    assert [p.name for p in (tmp_path / "syn").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(synthetic, "render", original)
    assert len(build_dataset(syn_cfg(tmp_path / "syn"), "val")) == 3


def test_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    mine = tmp_path / "mine" / SMALL_FOLDER
    mine.mkdir(parents=True)
    (mine / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(DatasetError, match=r"exists and is not a generated dataset"):
        build_dataset(syn_cfg(tmp_path / "mine"), "val")
    assert (mine / "photo.jpg").read_bytes() == b"precious"


def test_unknown_shape_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'hexagon' is not a shape"):
        build_dataset(
            syn_cfg(tmp_path / "s", "dataset.class_names=[background,disc,hexagon]", "dataset.num_classes=3"),
            "val",
        )


def test_more_shapes(tmp_path: Path) -> None:
    names = "[background,disc,square,triangle,ring,cross,star]"
    ds = build_dataset(
        syn_cfg(tmp_path / "s", f"dataset.class_names={names}", "dataset.num_classes=7"), "val"
    )
    assert len(ds) == 3 and ds.load(0)[1].max() == 255
