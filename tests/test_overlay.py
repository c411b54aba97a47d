"""Overlays of deeplab.predict: which classes stay as the photo (dataset.overlay_background; CamVid's class 0 is
sky, not background), and a legend that fits the image or goes beside it, also on videos and ONNX files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread
from PIL import Image

from deeplab.config import TrainConfig, to_plain, train_config
from deeplab.config.labels import ADE20K_CLASSES
from deeplab.deploy.export import metadata
from deeplab.deploy.predict import predict
from deeplab.deploy.segmenter import onnx_background
from deeplab.errors import ConfigError
from deeplab.models import build_model
from deeplab.visualize import LEGEND_SHARE, draw_legend, make_legend

# A folder dataset (never read: predict only needs the model's config) with the tiny model.
FOLDER = [
    "backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.low_level_channels=8",
    "model.decoder.channels=16", "dataset=folder", "dataset.train.images=imgs", "dataset.train.masks=masks",
    "dataset.val.images=imgs", "dataset.val.masks=masks", "dataset.num_classes=3",
]  # fmt: skip
GRAY = 120


@pytest.fixture(scope="module")
def configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The folder train config and a predict config, composed once (each composition takes 0.2 s)."""
    folder = to_plain(compose_config(FOLDER))
    return folder, to_plain(compose_config(["checkpoint=x", "input=x", "output=x"], "predict"))


def dataset(configs: tuple[dict[str, Any], ...], **keys: Any) -> TrainConfig:
    """The folder config with these dataset keys."""
    plain = copy.deepcopy(configs[0])
    plain["dataset"].update(keys)
    return train_config(plain)


def checkpoint_predicting(path: Path, winner: int, cfg: TrainConfig) -> Path:
    """A checkpoint of the tiny model of `cfg` whose every pixel is class `winner` (its classifier: zero
    weights, one bias up)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.head.classifier.weight.zero_()
        model.head.classifier.bias.zero_()
        model.head.classifier.bias[winner] = 10.0
    torch.save({"model": model.state_dict(), "config": cfg.model_dump()}, path)
    return path


def overlay_of(checkpoint: Path, tmp_path: Path, configs: tuple[dict[str, Any], ...]) -> np.ndarray:
    """predict's overlay of a uniform gray 128x96 photo, as int."""
    photos, out = tmp_path / "photos", tmp_path / f"out_{checkpoint.stem}"
    photos.mkdir(exist_ok=True)
    Image.fromarray(np.full((96, 128, 3), GRAY, np.uint8)).save(photos / "p.png")
    cfg = {**configs[1], "checkpoint": str(checkpoint), "input": str(photos), "output": str(out)}
    with one_thread():
        predict(cfg, out)
    return np.asarray(Image.open(out / "p_overlay.jpg")).astype(int)


def test_class_0_is_tinted_unless_it_is_background(tmp_path: Path, configs) -> None:
    # CamVid-style: class 0 is sky; it is tinted (with its legend entry) like any class.
    camvid = dataset(
        configs, class_names=["sky", "road", "car"], palette=[[70, 130, 180], [128, 64, 128], [255, 0, 0]]
    )
    sky = overlay_of(checkpoint_predicting(tmp_path / "sky.pt", 0, camvid), tmp_path, configs)
    assert sky.shape == (96, 128, 3)
    tint = np.round(0.4 * GRAY + 0.6 * np.array([70, 130, 180]))
    assert np.abs(sky[60:, 70:] - tint).max() <= 3  # far from the legend's corner: the tint (and JPEG)
    assert sky[:20, :40].max() > 200  # the legend's white text in the top-left corner
    # Named background (the default rule), or chosen with dataset.overlay_background: left as the photo.
    for name, names, chosen in (("bg", "background", None), ("chosen", "sky", ["sky"])):
        cfg = dataset(configs, class_names=[names, "road", "car"], overlay_background=chosen)
        overlay = overlay_of(checkpoint_predicting(tmp_path / f"{name}.pt", 0, cfg), tmp_path, configs)
        assert overlay.shape == (96, 128, 3) and np.abs(overlay - GRAY).max() <= 3  # JPEG; no legend either


def test_overlay_background_names_classes_of_the_dataset(configs) -> None:
    names = ["sky", "road", "car"]
    assert dataset(configs, class_names=names).dataset.overlay_background_ids() == []  # none named background
    chosen = dataset(configs, class_names=names, overlay_background=["car", "sky"])
    assert chosen.dataset.overlay_background_ids() == [0, 2]
    binary = dataset(configs, num_classes=1)  # background and foreground
    assert binary.dataset.overlay_background_ids() == [0]
    with pytest.raises(
        ConfigError, match=r"^dataset.overlay_background: 'grass' is not a class name; choose"
    ):
        dataset(configs, overlay_background=["grass"])
    # the key is in configs/dataset/common.yaml, under every dataset
    assert compose_config(["dataset=cityscapes"]).dataset.overlay_background is None


def test_onnx_metadata_carries_the_background_and_older_files_keep_the_default_rule(configs) -> None:
    camvid = dataset(configs, class_names=["sky", "road", "car"])
    assert metadata(camvid)["overlay_background"] == []
    assert onnx_background(metadata(camvid)) == []
    assert onnx_background({"class_names": ["background", "cat"]}) == [0]  # exported before the key
    assert onnx_background({"class_names": ["sky", "cat"]}) == []


ENTRIES = [("sky", (0, 0, 255)), ("road", (128, 64, 128)), ("car", (255, 0, 0))]


def test_the_legend_covers_little_of_a_small_image_or_goes_beside_it() -> None:
    photo = np.full((96, 128, 3), GRAY, np.uint8)
    one = draw_legend(photo, ENTRIES[:1])
    assert one.shape == photo.shape
    covered = (one != photo).any(axis=2)
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    assert 0 < box <= LEGEND_SHARE * photo.shape[0] * photo.shape[1]  # about a third before
    # More entries than fit: a panel to the right, the photo untouched.
    many = draw_legend(photo, [*ENTRIES, ("pedestrian", (255, 255, 0)), ("bicyclist", (0, 128, 192))])
    assert many.shape[0] == 96 and many.shape[1] > 128 and (many[:, :128] == photo).all()
    # The corner hiding the fewest predicted pixels: not the top left, where the prediction is.
    predicted = np.zeros((96, 128), bool)
    predicted[:48, :64] = True
    placed = draw_legend(photo, ENTRIES[:1], avoid=predicted)
    assert (placed[:48, :64] == photo[:48, :64]).all() and (placed != photo).any()
    # ADE20K's 150 classes (a video's legend lists them all) beside a 640x480 frame: in columns, no wider than it.
    ade = make_legend([(n, (0, 0, 0)) for n in ADE20K_CLASSES], 480, 640)
    assert ade is not None and ade.beside and ade.tile.shape[0] == 480 and ade.tile.shape[1] <= 640
    # It scales with the image: larger text on a larger photo.
    small, large = make_legend(ENTRIES, 96, 128), make_legend(ENTRIES, 768, 1024)
    assert small is not None and large is not None and large.tile.shape[0] > 2 * small.tile.shape[0]
