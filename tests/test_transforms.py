"""The train pipeline keeps image and mask aligned through scale, pad, crop and flip; eval keeps whole images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeplab.data.collate import collate_eval
from deeplab.data.dataset import Sample, SegmentationDataset
from deeplab.data.transforms import train_transform

MEAN = (0.485, 0.456, 0.406)
MEAN_PIXELS = np.array([124, 116, 104])  # MEAN * 255, rounded


def ramp(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image whose red channel is 5 * column and green 5 * row; masks holding the column and the row index."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([cols * 5, rows * 5, np.full_like(cols, 200)], axis=-1).astype(np.uint8)
    return image, cols.astype(np.uint8), rows.astype(np.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_train_pipeline_keeps_image_and_mask_aligned(seed: int) -> None:
    # Each mask pixel holds the source column (row) it came from; the bilinear image holds 5x the (fractional)
    # source position. Nearest-neighbour masks must sit within half a pixel of it: a mask resized with
    # OpenCV's plain INTER_NEAREST drifts by up to a pixel, a transposed or unflipped mask by far more.
    image, col_mask, row_mask = ramp(37, 45)
    t = train_transform(crop_size=41, scale=(0.5, 2.0), hflip=True, mean=MEAN)
    for mask, channel in ((col_mask, 0), (row_mask, 1)):
        t.set_random_seed(seed)
        out = t(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        assert img.shape == (41, 41, 3) and msk.shape == (41, 41)
        valid = msk != 255
        assert valid.sum() > 100
        source = img[..., channel].astype(np.float64) / 5.0
        # ignore the outermost ring of the image, where bilinear mixes in the padding colour
        inner = valid & np.pad(valid[1:-1, 1:-1] & valid[2:, 1:-1] & valid[:-2, 1:-1], 1)
        inner &= np.pad(valid[1:-1, 2:] & valid[1:-1, :-2], 1)
        error = np.abs(msk[inner].astype(np.float64) - source[inner])
        assert error.max() <= 0.65, f"mask off by {error.max():.2f} pixels"
        # padding: ignore index in the mask, the mean colour in the image
        assert (img[~valid] == MEAN_PIXELS).all()


def test_known_shape_moves_with_its_mask_including_flips() -> None:
    # An asymmetric L shape drawn in red on grey, labelled 1: after every transform the red pixels and the
    # label-1 pixels must coincide (up to the blended edge), and both flipped and unflipped outputs occur.
    image = np.full((30, 40, 3), 90, np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    for region in (np.s_[5:25, 6:12], np.s_[19:25, 6:30]):
        image[region] = (230, 20, 20)
        mask[region] = 1
    t = train_transform(crop_size=48, scale=(0.5, 2.0), hflip=True, mean=MEAN)
    t.set_random_seed(0)
    arm_sides = set()
    for _ in range(20):
        out = t(image=image, mask=mask)
        img, msk = out["image"].astype(int), out["mask"]
        red = (img[..., 0] > 160) & (img[..., 1] < 60)
        labelled = msk == 1
        assert labelled.any() or not red.any()
        disagree = (red != labelled) & (msk != 255)
        assert disagree.sum() <= 0.25 * max(labelled.sum(), 1) + 4  # only the blended rim may differ
        if labelled.sum() > 30:
            ys, xs = np.nonzero(labelled)
            bottom = ys > np.percentile(ys, 80)
            arm_sides.add(bool(xs[bottom].mean() > xs.mean()))  # the foot points right unless flipped
    assert arm_sides == {True, False}


def test_output_is_crop_sized_and_padding_is_ignore() -> None:
    image = np.full((8, 10, 3), 17, np.uint8)
    mask = np.ones((8, 10), np.uint8)
    t = train_transform(crop_size=33, scale=(1.0, 1.0), hflip=False, mean=MEAN)
    out = t(image=image, mask=mask)
    assert out["image"].shape == (33, 33, 3) and out["mask"].shape == (33, 33)
    assert (out["mask"] == 255).sum() == 33 * 33 - 80 and (out["mask"] == 1).sum() == 80
    assert (out["image"][out["mask"] == 255] == MEAN_PIXELS).all()
    assert (out["image"][out["mask"] == 1] == 17).all()


def test_large_image_is_cropped_not_resized() -> None:
    image, col_mask, _ = ramp(50, 51)
    t = train_transform(crop_size=20, scale=(1.0, 1.0), hflip=False, mean=MEAN)
    out = t(image=image, mask=col_mask)
    assert out["mask"].shape == (20, 20) and (out["mask"] != 255).all()
    assert (np.diff(out["mask"].astype(int), axis=1) == 1).all()  # consecutive source columns


def test_custom_ignore_index_pads_the_mask() -> None:
    t = train_transform(crop_size=12, scale=(1.0, 1.0), hflip=False, mean=MEAN, ignore_index=11)
    out = t(image=np.zeros((4, 4, 3), np.uint8), mask=np.zeros((4, 4), np.uint8))
    assert (out["mask"] == 11).sum() == 144 - 16


def test_color_jitter_changes_the_image_not_the_mask() -> None:
    image, col_mask, _ = ramp(20, 20)
    t = train_transform(crop_size=20, scale=(1.0, 1.0), hflip=False, color_jitter=0.4, mean=MEAN)
    t.set_random_seed(3)
    out = t(image=image, mask=col_mask)
    assert (out["mask"] == col_mask).all()
    assert not (out["image"] == image).all()


def test_bad_scale_range_is_refused() -> None:
    with pytest.raises(ValueError, match="scale range"):
        train_transform(crop_size=8, scale=(2.0, 0.5))


def _tiny_dataset(tmp_path, transform) -> SegmentationDataset:
    from helpers.fake_data import save_jpg, save_palette_png

    image, col_mask, _ = ramp(20, 24)
    save_jpg(image, tmp_path / "a.jpg")
    save_palette_png(col_mask % 3, tmp_path / "a.png")
    return SegmentationDataset(
        [Sample("a", tmp_path / "a.jpg", tmp_path / "a.png")] * 4, 3, transform=transform
    )


def test_augmentation_follows_torch_seed_and_differs_between_workers(tmp_path) -> None:
    ds = _tiny_dataset(tmp_path, train_transform(crop_size=16, scale=(0.5, 2.0), mean=MEAN))
    torch.manual_seed(0)
    a = [ds[0][1] for _ in range(3)]
    torch.manual_seed(0)
    b = [ds[0][1] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # reproducible from torch's seed
    assert not all(torch.equal(a[0], x) for x in a[1:])  # and random from call to call
    # Forked workers copy the parent's state: each must still draw its own augmentation.
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(1)
    )
    masks = [m for _, m in loader]
    assert not torch.equal(masks[0], masks[1])


def test_eval_keeps_the_whole_image(tmp_path) -> None:
    ds = _tiny_dataset(tmp_path, None)
    image, mask = ds[0]
    assert image.shape == (3, 20, 24) and mask.shape == (20, 24)


def test_collate_eval_pads_and_reports_sizes() -> None:
    a = (torch.randn(3, 5, 7), torch.zeros(5, 7, dtype=torch.int64))
    b = (torch.randn(3, 6, 4), torch.ones(6, 4, dtype=torch.int64))
    images, masks, sizes = collate_eval([a, b])
    assert images.shape == (2, 3, 6, 7) and masks.shape == (2, 6, 7) and masks.dtype == torch.int64
    assert sizes.tolist() == [[5, 7], [6, 4]] and sizes.dtype == torch.int64
    assert torch.equal(images[0, :, :5, :7], a[0]) and torch.equal(images[1, :, :6, :4], b[0])
    assert (images[0, :, 5:] == 0).all() and (images[1, :, :, 4:] == 0).all()
    assert (masks[0, 5:] == 255).all() and (masks[1, :, 4:] == 255).all()
    assert (masks[0, :5, :7] == 0).all() and (masks[1, :6, :4] == 1).all()


def test_collate_eval_uint8_and_custom_ignore() -> None:
    a = (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.int64))
    b = (torch.zeros(3, 3, 1, dtype=torch.uint8), torch.zeros(3, 1, dtype=torch.int64))
    images, masks, _ = collate_eval([a, b], ignore_index=11)
    assert images.dtype == torch.uint8 and images[0, :, 2, 0].tolist() == [124, 116, 104]
    assert masks[0, 2, 0] == 11 and masks[1, 0, 1] == 11
