"""deeplab.predict on a user's photos: distinct output names, the input folder never overwritten, unreadable
images named and skipped, overlays that leave the background alone, with a legend; torchvision's weights file
inside the Hydra app."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread
from PIL import Image

from deeplab.deploy.predict import predict
from deeplab.errors import ConfigError, DatasetError
from deeplab.visualize import draw_legend, image_overlay


def predict_config(checkpoint: Path, source: Path, output: Path, *extra: str):
    return compose_config(
        [f"checkpoint={checkpoint}", f"input={source}", f"output={output}", *extra], "predict"
    )


@pytest.fixture
def photos(trained_run, tmp_path) -> Path:
    """Three photos of different sizes, two sharing a stem (a.jpg, a.png)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (40, 56)), ("a.png", (33, 47)), ("b.png", (48, 48))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_inputs_sharing_a_stem_get_distinct_outputs(trained_run, photos, tmp_path) -> None:
    best = trained_run[0] / "checkpoints" / "best.pt"
    with one_thread():
        written = predict(predict_config(best, photos, tmp_path / "out"), tmp_path / "out")
    assert sorted(p.name for p in written) == ["a_jpg.png", "a_png.png", "b.png"]
    for name, size in (("a_jpg", (56, 40)), ("a_png", (47, 33)), ("b", (48, 48))):
        for suffix in (".png", "_color.png"):
            assert Image.open(tmp_path / "out" / f"{name}{suffix}").size == size
        overlay = Image.open(tmp_path / "out" / f"{name}_overlay.jpg")  # a legend may go beside the photo
        assert overlay.height == size[1] and overlay.width >= size[0]


def test_the_input_folder_is_never_written_into(trained_run, photos) -> None:
    best = trained_run[0] / "checkpoints" / "best.pt"
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    with pytest.raises(ConfigError, match=r"^output: .* is the folder of the input images"):
        predict(predict_config(best, photos, photos), photos)
    with pytest.raises(ConfigError, match=r"^output: .* is the folder of the input images"):
        predict(predict_config(best, photos / "b.png", photos), photos)  # next to a single input file
    assert {p.name: p.read_bytes() for p in photos.iterdir() if p.is_file()} == before


def test_unreadable_images_are_named_and_the_rest_written(trained_run, photos, tmp_path, caplog) -> None:
    best = trained_run[0] / "checkpoints" / "best.pt"
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError) as info, one_thread():
        predict(predict_config(best, photos, out), out)
    assert str(info.value).startswith("1 of 4 images could not be read and were skipped: broken.jpg")
    assert "cannot read image" in caplog.text and "broken.jpg" in caplog.text
    assert sorted(p.name for p in out.glob("*_overlay.jpg")) == [
        "a_jpg_overlay.jpg",
        "a_png_overlay.jpg",
        "b_overlay.jpg",
    ]


def test_16_bit_photos_are_predicted_like_their_8_bit_copy(trained_run, tmp_path) -> None:
    best = trained_run[0] / "checkpoints" / "best.pt"
    gray8 = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    (tmp_path / "in16").mkdir()
    (tmp_path / "in8").mkdir()
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "in16" / "g.png")  # I;16, 0..65535
    Image.fromarray(gray8).save(tmp_path / "in8" / "g.png")
    with one_thread():
        predict(predict_config(best, tmp_path / "in16", tmp_path / "o16"), tmp_path / "o16")
        predict(predict_config(best, tmp_path / "in8", tmp_path / "o8"), tmp_path / "o8")
    assert (
        np.asarray(Image.open(tmp_path / "o16" / "g.png"))
        == np.asarray(Image.open(tmp_path / "o8" / "g.png"))
    ).all()


def test_overlay_leaves_the_background_as_the_photo_and_has_a_legend() -> None:
    photo = np.full((64, 96, 3), 200, np.uint8)
    colour = np.zeros_like(photo)
    colour[20:40, 30:60] = (255, 0, 0)
    background = colour.sum(axis=2) == 0
    overlay = image_overlay(photo, colour, 0.6, keep=background)
    assert (overlay[background] == 200).all()  # not darkened towards black
    assert (overlay[25, 40] == np.round(0.4 * 200 + 0.6 * np.array([255, 0, 0]))).all()
    legend = draw_legend(overlay, [("car", (255, 0, 0))])
    assert legend.shape == overlay.shape and (legend[4:14, 4:12] != overlay[4:14, 4:12]).any()
    assert (legend[5:11, 3:9] == (255, 0, 0)).all()  # the swatch
    assert draw_legend(overlay[:8, :8], [("car", (255, 0, 0))]).shape == (8, 8, 3)  # too small: left out


def test_torchvision_weights_load_inside_the_hydra_app(tmp_path, monkeypatch) -> None:
    """evaluate.py and predict run inside a Hydra app: composing torchvision's experiment there must work
    (it raised "GlobalHydra is already initialized")."""
    from helpers.configs import CONFIG_DIR
    from hydra import initialize_config_dir
    from torchvision.models.segmentation import deeplabv3_resnet50

    import deeplab.deploy.restore as restore

    torch.manual_seed(0)
    state = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).state_dict()
    monkeypatch.setattr(restore, "load_file", lambda path, what: state)  # the 168 MB file, without the disk
    (tmp_path / "deeplabv3_resnet50_coco-cd0a2569.pth").touch()  # checkpoint= names an existing file
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # as inside @hydra.main
        model, cfg = restore.load_trained_model(tmp_path / "deeplabv3_resnet50_coco-cd0a2569.pth")
    assert cfg.backbone.name == "resnet50" and cfg.dataset.num_classes == 21 and not model.training
