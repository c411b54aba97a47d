"""Resumable, rank-sharded training order with per-sample augmentation seeds.

The order of epoch e is a permutation seeded by (seed, e), split across ranks like DistributedSampler, and
every sample carries its own seed for the augmentation (the dataset takes (index, seed) items). A run resumed
at iteration N therefore sees exactly the samples and crops an uninterrupted run would have seen, whatever
the number of DataLoader workers (torch's DistributedSampler restarts the epoch on resume).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


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
