"""Two (or more) DDP processes on the CPU (gloo) in one test: each joins a file-initialised process group, and
the test waits for them under a deadline instead of hanging when the ranks do not agree."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def join_group(rank: int, world: int, init_file: str) -> None:
    """In a spawned worker: the environment torchrun would give, one torch thread, the gloo process group."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def spawn(
    worker: Callable[..., None], tmp_path: Path, *args: Any, world: int = 2, deadline: float = 120
) -> None:
    """worker(rank, world, init_file, *args) in `world` processes; fails the test when they do not all end
    within `deadline` seconds (the processes are killed), and re-raises a worker's exception."""
    init_file = str(tmp_path / "ddp_init")
    context = mp.spawn(worker, args=(world, init_file, *args), nprocs=world, join=False)
    end = time.monotonic() + deadline
    while not context.join(timeout=5):
        if time.monotonic() > end:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the {world} DDP processes did not end within {deadline:.0f} s (a hang)")
