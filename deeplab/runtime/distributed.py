"""torch.distributed set-up for `torchrun` (DDP); a no-op single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from deeplab import errors


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def barrier() -> None:
    if _initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of `obj` on every rank (identity without a process group)."""
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sum_over_ranks(values: dict[str, torch.Tensor | float], device: torch.device) -> dict[str, float]:
    """Each named value summed over all ranks, read back to the host in one transfer."""
    names = list(values)
    stacked = torch.stack([torch.as_tensor(values[n], dtype=torch.float32, device=device) for n in names])
    return dict(zip(names, all_reduce_sum(stacked).tolist()))


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of one integer over all ranks (e.g. a stop request any rank received)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    if _initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def cleanup() -> None:
    if _initialized():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics).

    Without SyncBatchNorm each rank updates its running statistics from its own batches, so before a
    sharded validation the ranks would evaluate slightly different models; rank 0's is the one saved.
    """
    if _initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def raise_any(error: errors.UserError | None) -> None:
    """Called by every rank at the same point: if any rank met a user's mistake (a bad file, a locked run
    dir), every rank raises the first one, with its message, instead of waiting for it in a collective."""
    if not _initialized():
        if error is not None:
            raise error
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, None if error is None else (type(error).__name__, str(error)))
    first = next((g for g in gathered if g is not None), None)
    if first is not None:
        raise getattr(errors, first[0], errors.UserError)(first[1])
