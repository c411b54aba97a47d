"""Resumable, rank-sharded training order with per-sample augmentation seeds.

The order of epoch e is a permutation seeded by (seed, e), split across ranks like DistributedSampler, and
every sample carries its own seed for the augmentation (the dataset takes (index, seed) items). A run resumed
at iteration N therefore sees exactly the samples and crops an uninterrupted run would have seen, whatever
the number of DataLoader workers (torch's DistributedSampler restarts the epoch on resume).

RareClassSampler (dataset.sampler=rare_class) draws images of the rare classes more often, resumable and per
rank in the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

RARE_CLASS_STREAM = 0x52435321  # keeps the rare-class draws apart from other streams of the same seed


def _mix(*values: int) -> int:
    """A 63-bit seed from integers; NumPy's SeedSequence hashes them, so nearby inputs give unrelated seeds."""
    entropy = [v % 2**64 for v in values]  # SeedSequence takes non-negative integers
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


class ResumableSampler(Sampler[tuple[int, int]]):
    """Endless (index, sample_seed) stream for one rank, starting after `start` samples of that rank."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size < world_size:
            raise ValueError(f"dataset of {size} samples is smaller than the {world_size} ranks")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        # Each rank takes every world_size-th sample of an epoch; the tail that does not divide is dropped.
        self.per_rank = size // world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, pos = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(self.size, generator=g)[self.rank :: self.world_size][: self.per_rank]
            for p in range(pos, self.per_rank):
                yield int(order[p]), _mix(self.seed, epoch, p, self.rank)
            epoch, pos = epoch + 1, 0


@dataclass(frozen=True)
class RareClasses:
    """What dataset.sampler=rare_class draws from: a class, then an image holding it."""

    probabilities: list[float]  # per class, summing to 1
    images: list[list[int]]  # per class: the training images whose masks hold it


def rare_classes(pixels: Sequence[int], presence: Sequence[Sequence[int]], temperature: float) -> RareClasses:
    """Rare-class sampling (DAFormer, Hoyer et al. 2022): P(c) proportional to exp((1 - f_c) / T), f_c the
    share of class c among the training masks' class pixels (pixels: one count per class). A lower T draws
    the rare classes more often; a class no image holds is never drawn."""
    counts = np.asarray(pixels, dtype=np.float64)
    images: list[list[int]] = [[] for _ in counts]
    for index, classes in enumerate(presence):
        for c in classes:
            if c < len(counts):
                images[c].append(index)
    drawable = (counts > 0) & np.array([bool(i) for i in images])
    if not drawable.any():
        raise ValueError("no class pixel in the training masks to sample from")
    share = counts / counts[drawable].sum()
    logits = np.where(drawable, (1 - share) / temperature, -np.inf)
    weights = np.exp(logits - logits[drawable].max())  # shifted: exp((1 - f) / 0.01) would overflow
    return RareClasses((weights / weights.sum()).tolist(), images)


class RareClassSampler(Sampler[tuple[int, int]]):
    """Endless (index, sample_seed) stream for one rank, starting after `start` samples of that rank: each draw
    picks a class by RareClasses.probabilities, then one of the images holding it, uniformly.

    Draws are made per block of size // world_size (an "epoch", as ResumableSampler's) from a generator seeded
    by (seed, block, rank): a resumed run draws what an uninterrupted one would, and each rank draws its own
    images (sampling with replacement: the ranks' draws are independent, not disjoint)."""

    def __init__(self, classes: RareClasses, size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:  # fmt: skip
        if size < world_size:
            raise ValueError(f"dataset of {size} samples is smaller than the {world_size} ranks")
        self.classes = classes
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.per_rank = size // world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, pos = divmod(self.start, self.per_rank)
        probabilities = np.asarray(self.classes.probabilities, dtype=np.float64)
        while True:
            rng = np.random.default_rng(_mix(self.seed, epoch, self.rank, RARE_CLASS_STREAM))
            drawn = rng.choice(len(probabilities), size=self.per_rank, p=probabilities)
            which = rng.random(self.per_rank)  # the image among those holding the class
            for p in range(pos, self.per_rank):
                holding = self.classes.images[drawn[p]]
                yield holding[int(which[p] * len(holding))], _mix(self.seed, epoch, p, self.rank)
            epoch, pos = epoch + 1, 0
