"""The training order: resumable mid-epoch, disjoint across ranks, and augmentation fixed by the sample seed."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

from deeplab import data
from deeplab.data.loaders import build_train_loader
from deeplab.data.sampling import RareClassSampler, ResumableSampler, rare_classes


def take(sampler: ResumableSampler | RareClassSampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


def test_resumed_sampler_continues_the_same_stream():
    full = take(ResumableSampler(10, seed=3), 37)  # crosses three epoch boundaries
    assert take(ResumableSampler(10, seed=3, start=13), 24) == full[13:]
    # every epoch is a permutation of the dataset
    assert sorted(i for i, _ in full[:10]) == list(range(10))
    assert [i for i, _ in full[:10]] != [i for i, _ in full[10:20]]
    assert len({s for _, s in full}) == len(full)  # a distinct augmentation seed per draw


def test_ranks_split_each_epoch_without_overlap():
    r0 = take(ResumableSampler(11, seed=0, rank=0, world_size=2), 5)
    r1 = take(ResumableSampler(11, seed=0, rank=1, world_size=2), 5)
    assert not {i for i, _ in r0} & {i for i, _ in r1}
    assert len({i for i, _ in r0} | {i for i, _ in r1}) == 10  # 11 // 2 * 2 samples of the epoch


def test_loader_batches_do_not_depend_on_workers_or_resume(tmp_path):
    from helpers.configs import compose_config

    cfg = compose_config(
        ["dataset=synthetic", f"paths.data_dir={tmp_path}", "dataset.num_train=6", "dataset.num_val=1",
         "dataset.image_size=[32,40]", "trainer.crop_size=24"]
    )  # fmt: skip
    dataset = data.build_dataset(cfg, "train")

    def batches(workers: int, start: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = build_train_loader(dataset, 2, workers, seed=7, start_iteration=start)
        return list(itertools.islice(iter(loader), n))

    plain = batches(0, 0, 5)
    for (a, am), (b, bm) in zip(plain[2:], batches(2, 2, 3)):
        assert torch.equal(a, b) and torch.equal(am, bm)
    assert not torch.equal(plain[0][0], plain[3][0])  # same images in another epoch are cropped differently


def rare_folder_overrides(root):
    """40 generated 8x10 images: classes 0 and 1 in every mask, class 2 in 2 of them (5%), as a small blob;
    the overrides of the folder dataset that reads them."""
    from helpers.fake_data import fake_image, save_jpg, save_palette_png

    for split in ("train", "val"):
        for i in range(40 if split == "train" else 2):
            mask = np.zeros((8, 10), np.uint8)
            mask[:, 5:] = 1
            if i in (7, 23):
                mask[2:4, 2:4] = 2
            save_palette_png(mask, root / split / "masks" / f"{i:02d}.png")
            save_jpg(fake_image(f"{i:02d}", mask.shape), root / split / "images" / f"{i:02d}.jpg")
    keys = [f"dataset.{s}.{k}={root / s / k}" for s in ("train", "val") for k in ("images", "masks")]
    return ["dataset=folder", *keys, "dataset.num_classes=3", "trainer.crop_size=8"]


def rare_folder_dataset(root):
    from helpers.configs import compose_config

    return data.build_dataset(compose_config(rare_folder_overrides(root)), "train")


def test_rare_class_sampler_draws_the_rare_images_more_often_and_resumes(tmp_path):
    from deeplab.data.stats import label_stats

    dataset = rare_folder_dataset(tmp_path / "data")
    stats = label_stats(dataset, tmp_path / "cache")
    assert stats.presence[7] == [0, 1, 2] and stats.presence[0] == [0, 1]
    cached = label_stats(dataset, tmp_path / "cache")  # the presence is read back from the cache
    assert cached.presence == stats.presence and np.array_equal(cached.counts, stats.counts)

    rare = rare_classes(stats.counts[:3].tolist(), stats.presence, temperature=0.01)
    assert rare.images[2] == [7, 23] and rare.probabilities[2] > rare.probabilities[0]
    n = 2000
    default = [i for i, _ in take(ResumableSampler(len(dataset), seed=1), n)]
    drawn = take(RareClassSampler(rare, len(dataset), seed=1), n)
    share_default = sum(i in (7, 23) for i in default) / n  # 5%
    share_rare = sum(i in (7, 23) for i, _ in drawn) / n
    assert share_rare >= 3 * share_default, (share_rare, share_default)
    # at DAFormer's T=0.01 the rarest class is drawn nearly always; at T=0.5 the others keep a fair share
    mild = take(RareClassSampler(rare_classes(stats.counts[:3].tolist(), stats.presence, 0.5), 40, seed=1), n)
    assert 0.2 < sum(i in (7, 23) for i, _ in mild) / n < share_rare and {i for i, _ in mild} == set(
        range(40)
    )

    # resumed after 57 draws (mid-block), the stream continues exactly; ranks draw their own streams
    assert take(RareClassSampler(rare, len(dataset), seed=1, start=57), 100) == drawn[57:157]
    r0 = take(RareClassSampler(rare, len(dataset), seed=1, rank=0, world_size=2), 60)
    r1 = take(RareClassSampler(rare, len(dataset), seed=1, rank=1, world_size=2), 60)
    assert r0 != r1 and len({s for _, s in r0} | {s for _, s in r1}) == 120
    # independent, not disjoint: the ranks draw the same image at the same step no more often than chance
    share = Counter(i for i, _ in r0 + r1)
    chance = sum((n / (2 * len(r0))) ** 2 for n in share.values()) * len(
        r0
    )  # sum over images of p_i^2, per step
    assert sum(a == b for (a, _), (b, _) in zip(r0, r1)) < 1.5 * chance + 5
    # a higher temperature flattens the class distribution
    warm = rare_classes(stats.counts[:3].tolist(), stats.presence, temperature=10.0)
    assert warm.probabilities[2] < rare.probabilities[2] and max(warm.probabilities) < 0.4


def test_dataset_sampler_temperature_sets_how_often_the_rare_class_is_drawn(tmp_path):
    """The training run's class probabilities (deeplab.train.engine) follow dataset.sampler_temperature."""
    from helpers.configs import compose_config

    from deeplab.config import train_config
    from deeplab.train.engine import _rare_classes

    overrides = [*rare_folder_overrides(tmp_path / "data"), "dataset.sampler=rare_class",
                 f"paths.cache_dir={tmp_path / 'cache'}", "trainer.num_workers=0"]  # fmt: skip
    dataset = data.build_dataset(compose_config(overrides), "train")
    rarest = []
    for temperature in (0.01, 0.5, 10.0):
        cfg = train_config(compose_config([*overrides, f"dataset.sampler_temperature={temperature}"]))
        rare = _rare_classes(cfg, dataset)
        assert rare is not None and rare.images[2] == [7, 23]
        rarest.append(rare.probabilities[2])
    assert rarest[0] > 0.99 and rarest[0] > rarest[1] > rarest[2] > 1 / 3 - 0.01
