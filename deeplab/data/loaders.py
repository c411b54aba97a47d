"""DataLoaders for training (endless, resumable, sharded) and validation (whole images, sharded)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from deeplab.data import collate_eval
from deeplab.data.collate import UINT8_PAD
from deeplab.data.sampling import RareClasses, RareClassSampler, ResumableSampler
from deeplab.errors import UserError
from deeplab.runtime.signals import ignore_stop_signals, workers_start_deaf


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    pin_memory: bool = False,
    rare: RareClasses | None = None,
) -> DataLoader:
    """Endless loader of `batch_size` crops per rank, continuing after `start_iteration` iterations; with
    `rare` (dataset.sampler=rare_class), images are drawn by class (RareClassSampler)."""
    start = start_iteration * batch_size
    sampler: Sampler[tuple[int, int]] = (
        RareClassSampler(rare, len(dataset), seed, rank, world_size, start)
        if rare is not None
        else ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size, start=start)
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=num_workers > 0,
        # Its own generator: creating the iterator must not consume the global RNG that resume restores.
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals,
    )


def build_val_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    ignore_index: int = 255,
    pad: Sequence[int] = UINT8_PAD,
) -> DataLoader:
    """Whole-image loader over this rank's share: every image exactly once across ranks.

    (DistributedSampler pads the last round with repeated images, which would count them twice.)
    """
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)))  # type: ignore[arg-type]
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=functools.partial(collate_eval, ignore_index=ignore_index, pad=tuple(pad)),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_stop_signals,
    )


def batches(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate loader; a UserError raised in a DataLoader worker is re-raised with its own one-line message.

    When iteration stops early (an error, a stop signal, or the generator closed), the workers are shut down
    here: left to the garbage collector, a loader whose worker raised takes 5 s per worker to exit (its queues
    may be finalised before its iterator, and the workers then wait for a stop message that never comes).
    The workers start deaf to stop signals (signals.workers_start_deaf).
    """
    iterator: Iterator[Any] | None = None
    before = set(multiprocessing.active_children())
    try:
        with workers_start_deaf():
            iterator = iter(loader)
        _started.add(iterator)
        yield from iterator
    except UserError as e:
        _shut_down(loader, iterator)
        raise type(e)(worker_error_message(e)) from None
    except BaseException:
        _shut_down(loader, iterator)
        if iterator is None:
            # The start failed half-way (a worker died while the others started: torch's SIGCHLD handler
            # raises wherever this process is): no iterator is left to stop the workers already started.
            strays = set(multiprocessing.active_children()) - before
            for worker in strays:
                worker.kill()
            for worker in strays:
                with contextlib.suppress(RuntimeError):  # torch's SIGCHLD handler reporting that very kill
                    worker.join(timeout=5)
        raise


def _shut_down(loader: Iterable[Any] | None, iterator: Iterator[Any] | None) -> None:
    """Stop the workers of a multi-process DataLoader iterator, in bounded time.

    torch asks each worker to exit and waits up to 5 s for it, then terminate()s it, i.e. sends SIGTERM,
    which our workers ignore. A worker still alive after that is killed: left alive, it would make the
    process wait for ever at exit, where multiprocessing terminates (SIGTERM again) and joins its daemons."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process DataLoader iterators only
    if shutdown is not None:
        shutdown()
        for worker in getattr(iterator, "_workers", []):
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)
        if getattr(loader, "_iterator", None) is iterator:
            loader._iterator = None  # type: ignore[attr-defined]  # persistent workers: start afresh next time


_started: weakref.WeakSet[Any] = weakref.WeakSet()  # the iterators batches() started, while they exist


@atexit.register
def _shut_down_at_exit() -> None:
    """At exit, multiprocessing terminates its daemonic children with SIGTERM, which our workers ignore, then
    joins them without a time limit: an iterator left running (held by a traceback, a reference cycle) would
    keep the process waiting for ever. Its workers are stopped here first (this module is imported after
    multiprocessing registered its exit handler, and exit handlers run last registered first)."""
    for iterator in list(_started):
        _shut_down(None, iterator)


def shut_down_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now (the end of a run), rather than whenever it is collected."""
    _shut_down(loader, getattr(loader, "_iterator", None))


def worker_error_message(e: BaseException) -> str:
    """The original message of an exception that a DataLoader worker raised.

    The DataLoader re-raises a worker's exception with a new message: "Caught DatasetError in DataLoader worker
    process 0." and the worker's traceback, which ends with "deeplab.errors.DatasetError: <original message>".
    """
    text = str(e)
    if not (text.startswith("Caught ") and "DataLoader worker" in text.split("\n", 1)[0]):
        return text
    marker = f"\n{type(e).__module__}.{type(e).__qualname__}: "
    return text[text.rindex(marker) + len(marker) :].strip() if marker in text else text
