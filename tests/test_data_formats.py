"""Image and mask formats as users have them: binary masks stored as 0/255, colour-coded masks saved as palette
PNGs, 16-bit grayscale images, phone photos with an EXIF orientation; and a folder dataset with several
problems, all reported at once."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config
from PIL import Image

from deeplab.config import train_config
from deeplab.data import build_dataset
from deeplab.data.check import main as check_main
from deeplab.data.reading import read_image
from deeplab.errors import DatasetError
from deeplab.train.engine import train

FOLDERS = ("train", "val")


def folder_overrides(root: Path, *extra: str) -> list[str]:
    """experiment=finetune_folder (the README's recipe) on tiny images with the tiny model: seconds."""
    keys = [f"dataset.{s}.{k}={root / s / k}" for s in FOLDERS for k in ("images", "masks")]
    tiny = ["backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.channels=16",
            "model.decoder.low_level_channels=8", "trainer.max_iters=2", "trainer.batch_size=2",
            "trainer.crop_size=24", "trainer.eval_interval=2", "trainer.num_workers=0", "logger.num_images=0"]  # fmt: skip
    return ["experiment=finetune_folder", *keys, *tiny, *extra]


def write_split(root: Path, split: str, masks: dict[str, np.ndarray], save_mask=None) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(masks))
    for stem, mask in masks.items():
        Image.fromarray(rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)).save(
            root / split / "images" / f"{stem}.png"
        )
        (save_mask or (lambda m, p: Image.fromarray(m).save(p)))(mask, root / split / "masks" / f"{stem}.png")


def binary_masks(n: int, fg: int) -> dict[str, np.ndarray]:
    out = {}
    for k in range(n):
        mask = np.zeros((20, 28), np.uint8)
        mask[3 + k : 12 + k, 5:15] = fg
        out[f"m{k}"] = mask
    return out


# ----------------------------------------------------------------------------- binary masks stored as 0/255


@pytest.fixture
def binary_folder(tmp_path: Path) -> Path:
    write_split(tmp_path, "train", binary_masks(4, 255))
    write_split(tmp_path, "val", binary_masks(2, 255))
    return tmp_path


def test_binary_masks_stored_as_0_255_stop_training_at_start_up(binary_folder: Path, tmp_path: Path) -> None:
    """With the default ignore index 255 their foreground would be ignored: 100% mIoU, nothing learnt."""
    cfg = compose_config(folder_overrides(binary_folder, "dataset.num_classes=2"))
    with pytest.raises(DatasetError) as info:
        train(cfg, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("the 4 training masks of folder train hold only 0 and 255 (the ignore index)")
    assert "dataset.binary_values=[0,255]" in message and "\n" not in message
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_the_checker_reports_0_255_masks(binary_folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_main(folder_overrides(binary_folder, "dataset.num_classes=2")) == 1
    out = capsys.readouterr().out
    assert "problem: the 4 training masks of folder train hold only 0 and 255" in out
    assert "note: 4 masks hold only class 0 and the ignore index 255" in out


@pytest.mark.parametrize("num_classes", [1, 2])
def test_binary_values_read_0_255_masks_as_classes(
    binary_folder: Path, tmp_path: Path, num_classes: int
) -> None:
    overrides = folder_overrides(
        binary_folder, f"dataset.num_classes={num_classes}", "dataset.binary_values=[0,255]"
    )
    _, mask = build_dataset(compose_config(overrides), "val")[0]
    assert set(mask.unique().tolist()) == {0, 1}
    assert (mask.numpy() == binary_masks(2, 1)["m0"]).all()
    metrics = train(compose_config(overrides), tmp_path / "run")
    assert not math.isnan(metrics["iou_per_class"][1])  # the foreground is in the truth: it is scored


def test_a_class_never_present_stops_training(tmp_path: Path) -> None:
    masks = {
        f"m{k}": np.where(np.arange(20 * 28).reshape(20, 28) % 7 == 0, 1, 0).astype(np.uint8)
        for k in range(4)
    }
    write_split(tmp_path, "train", masks)
    write_split(tmp_path, "val", masks)
    cfg = compose_config(
        folder_overrides(tmp_path, "dataset.num_classes=3", "dataset.class_names=[bg,road,car]")
    )
    with pytest.raises(DatasetError, match=r"^no pixel of class car \(2\) in any of the 4 training masks"):
        train(cfg, tmp_path / "run")
    # dataset.check_labels=false trains anyway
    cfg = compose_config(folder_overrides(tmp_path, "dataset.num_classes=3", "dataset.check_labels=false"))
    assert train(cfg, tmp_path / "run2")["iteration"] == 2


# ----------------------------------------------------------------------------- colour-coded palette PNGs

COLORS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def test_colour_masks_saved_as_palette_pngs_are_read_by_colour(tmp_path: Path) -> None:
    """Palette indices need not be the class ids: with dataset.palette set, the colours count."""
    ids = np.zeros((20, 28), np.uint8)
    ids[2:9, 3:12], ids[10:18, 14:25] = 1, 2

    def save_palette_png(mask: np.ndarray, path: Path) -> None:
        remap = np.array([5, 9, 2], np.uint8)  # class c is palette index remap[c]
        im = Image.fromarray(remap[mask], mode="P")
        table = np.zeros((256, 3), np.uint8)
        table[remap] = COLORS
        im.putpalette(table.reshape(-1).tolist())
        im.save(path)

    write_split(tmp_path, "train", {"a": ids}, save_palette_png)
    write_split(tmp_path, "val", {"a": ids}, save_palette_png)
    cfg = compose_config(
        folder_overrides(tmp_path, "dataset.num_classes=3", f"dataset.palette={COLORS}".replace(" ", ""))
    )
    _, mask = build_dataset(cfg, "val")[0]
    assert (mask.numpy() == ids).all()


# ----------------------------------------------------------------------------- 16-bit and EXIF-rotated images


def test_16_bit_grayscale_images_are_scaled_not_saturated(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)  # saved as I;16
    assert Image.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]  # before: 255 everywhere but 0 (clipped by convert)
    assert (rgb[..., 0] == rgb[..., 2]).all()


def photo_as_displayed(height: int, width: int) -> np.ndarray:
    """A photo whose top-left quarter is red, the rest grey: shows any rotation."""
    image = np.full((height, width, 3), 90, np.uint8)
    image[: height // 2, : width // 2] = (230, 20, 20)
    return image


def save_rotated_with_exif(displayed: np.ndarray, path: Path) -> None:
    """Store the pixels rotated, with EXIF orientation 6 ("rotate 90 clockwise to display"), as phones do."""
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes())


@pytest.mark.parametrize("shape", [(24, 24), (20, 28)], ids=["square", "non-square"])
def test_exif_orientation_is_applied_as_annotation_tools_display_it(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    displayed = photo_as_displayed(*shape)
    mask = np.zeros(shape, np.uint8)
    mask[: shape[0] // 2, : shape[1] // 2] = 1  # drawn on the photo as displayed: its red quarter
    for split in FOLDERS:
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        save_rotated_with_exif(displayed, tmp_path / split / "images" / "photo.png")
        Image.fromarray(mask).save(tmp_path / split / "masks" / "photo.png")
    assert (
        Image.open(tmp_path / "val" / "images" / "photo.png").size != (shape[1], shape[0])
        or shape[0] == shape[1]
    )
    image, read_mask = build_dataset(
        compose_config(folder_overrides(tmp_path, "dataset.num_classes=2")), "val"
    )[0]
    red = (image[0] > 160) & (image[1] < 60)
    assert (red.numpy() == (read_mask.numpy() == 1)).all()  # the mask lies on the red quarter


def test_a_mask_drawn_on_the_stored_pixels_names_exif_in_the_error(tmp_path: Path) -> None:
    for split in FOLDERS:
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        save_rotated_with_exif(photo_as_displayed(20, 28), tmp_path / split / "images" / "photo.png")
        Image.fromarray(np.zeros((28, 20), np.uint8)).save(tmp_path / split / "masks" / "photo.png")
    dataset = build_dataset(compose_config(folder_overrides(tmp_path, "dataset.num_classes=2")), "val")
    with pytest.raises(DatasetError, match=r"is 28x20 but its mask .* is 20x28 .*EXIF orientation \(6\)"):
        dataset[0]


# ----------------------------------------------------------------------------- every problem at once


def test_the_checker_reports_every_problem_of_a_folder_dataset(tmp_path: Path, capsys) -> None:
    masks = {f"m{k}": np.eye(20, 28, dtype=np.uint8) for k in range(4)}
    write_split(tmp_path, "train", masks)
    write_split(tmp_path, "val", masks)
    (tmp_path / "train" / "masks" / "m1.png").unlink()
    (tmp_path / "train" / "masks" / "m2.png").unlink()
    (tmp_path / "train" / "images" / "m0.jpg").write_bytes(
        (tmp_path / "train" / "images" / "m0.png").read_bytes()
    )
    assert check_main([*folder_overrides(tmp_path, "dataset.num_classes=2"), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "holds two files with the stem 'm0' (m0.jpg, m0.png)" in out
    assert "m1.png has no mask with the stem 'm1'" in out and "m2.png has no mask with the stem 'm2'" in out
    assert "3 problems" in out
    cfg = compose_config(folder_overrides(tmp_path, "dataset.num_classes=2"))
    with pytest.raises(DatasetError, match=r"holds two files with the stem 'm0'.*\(and 1 more\)"):
        build_dataset(train_config(cfg), "train")  # a run stops on them, naming the first two
