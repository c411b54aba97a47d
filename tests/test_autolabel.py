"""predict autolabel=true writes a folder dataset (images, palette-PNG masks with the same stems, the dataset
config with the class names) that train.py trains on."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.configs import compose_config, generated_voc, one_thread
from PIL import Image

from deeplab.deploy.predict import predict
from deeplab.errors import DatasetError
from deeplab.train.engine import train


def photos_and_config(trained_run, tmp_path, count: int):
    """`count` validation photos of the trained run copied to tmp_path/photos, and the autolabel config that
    writes to tmp_path/labelled."""
    run_dir, _, data_dir = trained_run
    photos = tmp_path / "photos"
    photos.mkdir()
    sources = sorted((generated_voc(data_dir) / "JPEGImages").glob("val_*.jpg"))[:count]
    for p in sources:
        (photos / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "labelled"
    checkpoint = run_dir / "checkpoints" / "best.pt"
    cfg = compose_config(
        [f"checkpoint={checkpoint}", f"input={photos}", f"output={out}", "autolabel=true"], "predict"
    )
    return sources, cfg, out


def test_predict_writes_a_folder_dataset_that_trains(trained_run, tmp_path) -> None:
    sources, cfg, out = photos_and_config(trained_run, tmp_path, 3)
    with one_thread():
        masks = predict(cfg, out)
    stems = [p.stem for p in sources]
    assert [m.stem for m in masks] == stems
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    for stem, source in zip(stems, sources):
        assert (out / "images" / f"{stem}.jpg").read_bytes() == source.read_bytes()  # the photo, unchanged
        mask = Image.open(out / "masks" / f"{stem}.png")
        assert mask.mode == "P" and mask.size == Image.open(source).size
        assert np.asarray(mask).max() < 4  # class ids
        assert (out / "overlays" / f"{stem}.jpg").is_file()
    config = (out / "dataset" / "autolabel.yaml").read_text()
    assert "class_names:\n- background\n- disc\n- square\n- triangle" in config
    # A user corrects a mask (here: paints a square of each class), then trains on the folder.
    first = out / "masks" / f"{stems[0]}.png"
    corrected = Image.open(first)
    ids = np.asarray(corrected).copy()
    for c in range(4):
        ids[:8, 8 * c : 8 * c + 8] = c
    fixed = Image.fromarray(ids, mode="P")
    fixed.putpalette(corrected.getpalette())
    fixed.save(first)
    train_cfg = compose_config(
        [f"hydra.searchpath=[file://{out}]", "dataset=autolabel", "backbone=resnet_tiny", "model.aspp.channels=16",
         "model.decoder.low_level_channels=8", "model.decoder.channels=16", "trainer.max_iters=1",
         "trainer.batch_size=2", "trainer.crop_size=40", "trainer.eval_interval=1", "trainer.num_workers=0",
         "logger.num_images=0", "logger.tensorboard=false", f"paths.data_dir={tmp_path}"]
    )  # fmt: skip
    assert train_cfg.dataset.train.masks == str(out.resolve() / "masks")
    with one_thread():
        metrics = train(train_cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert 0.0 <= metrics["pixel_acc"] <= 1.0


def test_autolabel_skips_an_unreadable_image_and_still_writes_the_dataset(trained_run, tmp_path) -> None:
    [source], cfg, out = photos_and_config(trained_run, tmp_path, 1)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    with (
        one_thread(),
        pytest.raises(DatasetError, match=r"^1 of 2 images could not be read and were skipped: broken"),
    ):
        predict(cfg, out)
    assert [p.name for p in (out / "masks").iterdir()] == [f"{source.stem}.png"]
    assert (out / "dataset" / "autolabel.yaml").is_file()


def test_a_second_autolabel_run_keeps_the_corrected_masks_and_labels_only_new_photos(
    trained_run, tmp_path, capsys
) -> None:
    """Autolabel, correct a mask, add photos, run again: the correction stays (overwrite=true replaces it)."""
    sources, cfg, out = photos_and_config(trained_run, tmp_path, 1)
    with one_thread():
        predict(cfg, out)
    mask = out / "masks" / f"{sources[0].stem}.png"
    corrected = Image.open(mask)
    ids = np.zeros_like(np.asarray(corrected))  # a person paints it all background
    fixed = Image.fromarray(ids, mode="P")
    fixed.putpalette(corrected.getpalette())
    fixed.save(mask)
    hand_made = mask.read_bytes()
    data_dir = trained_run[2]
    added = sorted((generated_voc(data_dir) / "JPEGImages").glob("val_*.jpg"))[1:3]
    for p in added:
        (tmp_path / "photos" / p.name).write_bytes(p.read_bytes())
    capsys.readouterr()
    with one_thread():
        written = predict(cfg, out)
    assert [m.stem for m in written] == [p.stem for p in added]
    assert mask.read_bytes() == hand_made
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(
        [sources[0].stem] + [p.stem for p in added]
    )
    assert "kept 1 masks already in" in capsys.readouterr().out
    cfg.overwrite = True
    with one_thread():
        written = predict(cfg, out)
    assert len(written) == 3 and mask.read_bytes() != hand_made
