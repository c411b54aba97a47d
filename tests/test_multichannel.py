"""dataset.in_channels: 4-band images (multi-page TIFF, .npy, RGBA) through training, evaluation, predict, and
the first convolution widened with the pretrained RGB filters kept."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread
from PIL import Image
from torchvision.models import resnet18

from deeplab.config import train_config
from deeplab.data.reading import read_image
from deeplab.data.transforms import train_transform
from deeplab.errors import ConfigError, DatasetError
from deeplab.models import build_model

SIZE = (24, 32)
MEAN4 = "[0.485,0.456,0.406,0.5]"
STD4 = "[0.229,0.224,0.225,0.25]"
TINY = [
    "backbone=resnet_tiny", "model.aspp.channels=16", "model.decoder.low_level_channels=8",
    "model.decoder.channels=16", "trainer.max_iters=2", "trainer.batch_size=2", "trainer.eval_interval=2",
    "trainer.ckpt_interval=2", "trainer.log_interval=1", "trainer.num_workers=0", "trainer.deterministic=true",
    "trainer.crop_size=24", "logger.num_images=1",
]  # fmt: skip


def bands(seed: int) -> np.ndarray:
    """(H, W, 4) uint8: noise in RGB; the 4th band (say near-infrared) bright where the mask says class 1."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*SIZE, 4), dtype=np.uint8)
    image[..., 3] = np.where(mask_of(seed) == 1, 230, 20)
    return image


def mask_of(seed: int) -> np.ndarray:
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[:, 8 + seed % 8 : 20 + seed % 8] = 1
    return mask


def save_tiff_pages(image: np.ndarray, path: Path) -> None:
    """One 8-bit page per band, as multispectral TIFFs are often stored."""
    pages = [Image.fromarray(np.ascontiguousarray(image[..., k]), mode="L") for k in range(image.shape[2])]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def write_four_band_folder(root: Path) -> list[str]:
    """train: 4 images (TIFF pages and 16-bit .npy), val: 2; masks are gray PNGs of class ids."""
    keys = []
    for split, seeds in (("train", range(4)), ("val", range(4, 6))):
        images, masks = root / split / "images", root / split / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for seed in seeds:
            image = bands(seed)
            if seed % 2:
                np.save(images / f"{seed}.npy", image.astype(np.uint16) * 257)  # 16-bit, scaled back on read
            else:
                save_tiff_pages(image, images / f"{seed}.tif")
            Image.fromarray(mask_of(seed), mode="L").save(masks / f"{seed}.png")
        keys += [f"dataset.{split}.images={images}", f"dataset.{split}.masks={masks}"]
    return keys


def test_bands_are_read_from_tiff_pages_npy_and_rgba(tmp_path: Path) -> None:
    image = bands(0)
    save_tiff_pages(image, tmp_path / "a.tif")
    np.save(tmp_path / "b.npy", image.astype(np.uint16) * 257)
    Image.fromarray(image, mode="RGBA").save(tmp_path / "c.png")
    # an RGB page followed by a gray page
    Image.fromarray(image[..., :3]).save(
        tmp_path / "d.tif",
        save_all=True,
        append_images=[Image.fromarray(np.ascontiguousarray(image[..., 3]))],
    )
    for name in ("a.tif", "b.npy", "c.png", "d.tif"):
        assert np.array_equal(read_image(tmp_path / name, 4), image), name
    with pytest.raises(DatasetError, match=r"image .*a.tif has 4 channels but dataset.in_channels is 5"):
        read_image(tmp_path / "a.tif", 5)
    np.save(tmp_path / "f.npy", image.astype(np.float32))
    with pytest.raises(DatasetError, match=r"f.npy: float32 values"):
        read_image(tmp_path / "f.npy", 4)
    assert read_image(tmp_path / "a.tif", 4).flags.c_contiguous


@pytest.mark.parametrize("channels", [1, 4, 6])
def test_augmentation_applies_to_every_channel(channels: int) -> None:
    """A known shape tracked through scale 0.5, pad and crop: every band moves together, each padded with
    its own mean."""
    image = np.zeros((20, 30, channels), dtype=np.uint8)
    image[4:12, 6:18] = np.arange(1, channels + 1, dtype=np.uint8) * 10  # a bright box, a level per band
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[4:12, 6:18] = 1
    means = [k / 20 for k in range(1, channels + 1)]
    t = train_transform((24, 32), (0.5, 0.5), False, 0.0, means, 255)
    t.set_random_state(np.random.default_rng(0), random.Random(0))
    out = t(image=image, mask=mask)
    img, m = out["image"], out["mask"]
    assert img.shape == (24, 32, channels)
    for k in range(channels):
        assert np.all(img[m == 1, k] == (k + 1) * 10)  # the box, where the mask says
        assert np.all(img[m == 255, k] == round(means[k] * 255))  # the padding: the band's mean
    assert (m == 1).sum() == 4 * 6


def test_four_band_folder_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    from deeplab.deploy.evaluate import evaluate_checkpoint
    from deeplab.deploy.predict import predict
    from deeplab.train.engine import train

    keys = write_four_band_folder(tmp_path / "data")
    overrides = ["dataset=folder", *keys, "dataset.num_classes=2", "dataset.in_channels=4",
                 f"dataset.mean={MEAN4}", f"dataset.std={STD4}", *TINY]  # fmt: skip
    with one_thread():
        metrics = train(compose_config(overrides), tmp_path / "run")
        best = tmp_path / "run" / "checkpoints" / "best.pt"
        model = torch.load(best, weights_only=True)["model"]
        assert model["backbone.conv1.weight"].shape[1] == 4
        evaluated = evaluate_checkpoint(
            compose_config([f"checkpoint={best}"], config_name="evaluate"), tmp_path / "eval"
        )
        assert evaluated["miou"] == pytest.approx(metrics["miou"])
        written = predict(
            compose_config(
                [f"checkpoint={best}", f"input={tmp_path / 'data' / 'val' / 'images'}", f"output={tmp_path / 'pred'}"],
                config_name="predict",
            ),
            tmp_path / "pred",
        )  # fmt: skip
    assert sorted(p.name for p in written) == ["4.png", "5.png"]
    ids = Image.open(tmp_path / "pred" / "4.png")
    assert ids.size == (SIZE[1], SIZE[0]) and int(np.asarray(ids).max()) < 2
    overlay = Image.open(tmp_path / "pred" / "5_overlay.jpg")
    assert overlay.mode == "RGB" and overlay.height == SIZE[0] and overlay.width >= SIZE[1]  # legend beside


@pytest.mark.parametrize("channels", [4, 1])
def test_pretrained_rgb_filters_are_kept(channels: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = resnet18().state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    means = ",".join(["0.5"] * channels)
    model = build_model(
        compose_config(
            ["dataset=folder", "dataset.num_classes=2", f"dataset.in_channels={channels}", f"dataset.mean=[{means}]",
             f"dataset.std=[{means}]", "backbone=resnet18", f"backbone.pretrained={tmp_path / 'resnet18.pth'}",
             *[f"dataset.{s}.{k}=x" for s in ("train", "val") for k in ("images", "masks")]]
        )
    )  # fmt: skip
    rgb = state["conv1.weight"]  # (64, 3, 7, 7)
    weight = model.backbone.conv1.weight
    assert weight.shape == (64, channels, 7, 7)
    if channels == 4:
        assert torch.equal(weight[:, :3], rgb)
        assert torch.allclose(weight[:, 3], rgb.mean(dim=1))
    else:  # a gray image gives the RGB filters' response to that grey
        assert torch.allclose(weight[:, 0], rgb.sum(dim=1), atol=1e-6)
    # the rest of the backbone is the file's
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    x = torch.randn(2, channels, 33, 41)
    assert model(x)["out"].shape == (2, 2, 33, 41)


def test_a_timm_encoder_keeps_its_wide_stem_across_output_strides() -> None:
    cfg = ["dataset=folder", "dataset.num_classes=2", "dataset.in_channels=4", f"dataset.mean={MEAN4}",
           f"dataset.std={STD4}", "backbone=timm", "backbone.model=resnet18", "backbone.pretrained=false",
           *[f"dataset.{s}.{k}=x" for s in ("train", "val") for k in ("images", "masks")]]  # fmt: skip
    torch.manual_seed(0)
    model = build_model(compose_config(cfg)).eval()
    stem = model.backbone.body.conv1.weight.clone()
    model.set_output_stride(8)
    assert torch.equal(model.backbone.body.conv1.weight, stem)
    with torch.no_grad():
        assert model(torch.randn(1, 4, 33, 41))["out"].shape == (1, 2, 33, 41)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.in_channels=4"], "dataset.mean has 3 values but dataset.in_channels is 4; give one per channel"),
        (["dataset.in_channels=4", f"dataset.mean={MEAN4}", f"dataset.std={STD4}"], "voc_aug images are RGB"),
        (["dataset=folder", "dataset.num_classes=2", "dataset.in_channels=4", f"dataset.mean={MEAN4}",
          f"dataset.std={STD4}", "dataset.augment.color_jitter=0.2",
          *[f"dataset.{s}.{k}=x" for s in ("train", "val") for k in ("images", "masks")]],
         "dataset.augment.color_jitter works on RGB images"),
    ],
)  # fmt: skip
def test_channel_mistakes_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train_config(compose_config(overrides))
