"""The training order: resumable mid-epoch, disjoint across ranks, and augmentation fixed by the sample seed."""

from __future__ import annotations

import itertools

import torch

from deeplab import data
from deeplab.loaders import build_train_loader
from deeplab.sampling import ResumableSampler


def take(sampler: ResumableSampler, n: int) -> list[tuple[int, int]]:
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
    from conftest import compose_config

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
