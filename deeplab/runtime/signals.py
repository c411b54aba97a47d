"""Stop requests: SIGTERM / SIGUSR1 (cluster preemption), SIGHUP (terminal closed) and Ctrl-C become a
checkpoint-and-exit of the training process; its DataLoader workers leave them to it, from their first
instruction on."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def stop_signals() -> set[signal.Signals]:
    """The signals that ask training to stop (those this platform has)."""
    return {getattr(signal, name) for name in StopRequest.SIGNALS if hasattr(signal, name)}


_HAS_SIGMASK = hasattr(signal, "pthread_sigmask")  # not on Windows (which has no process groups to signal)


class StopSignal(BaseException):
    """Raised by StopRequest's handler inside `at_once()`: where there is no iteration to finish (start-up,
    validation), a stop signal ends the work where it is. A BaseException, as KeyboardInterrupt, so that no
    `except Exception` on the way (a bad sample skipped, a cache not written) takes it for an error."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class StopRequest:
    """Records the first stop signal while active; the loop checkpoints at the next iteration and exits.
    Inside `at_once()` the signal raises StopSignal instead."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._at_once = False

    def __enter__(self) -> StopRequest:
        for sig in stop_signals():
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        _active.append(self)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum
        if self._at_once and not _starting_workers:
            raise StopSignal(signum)

    def _raise_if_due(self) -> None:
        """After workers started: the StopSignal held back meanwhile."""
        if self._at_once and self.signum is not None:
            raise StopSignal(self.signum)

    @contextlib.contextmanager
    def at_once(self, enabled: bool = True) -> Iterator[None]:
        """Within (when enabled): a stop signal, or one already recorded, raises StopSignal at once."""
        if not enabled:
            yield
            return
        self._at_once = True
        try:
            if self.signum is not None:
                raise StopSignal(self.signum)
            yield
        finally:
            self._at_once = False

    def __exit__(self, *exc: Any) -> None:
        _active.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_active: list[StopRequest] = []  # the StopRequests entered in this process
_starting_workers = 0  # > 0 inside workers_start_deaf(): a StopSignal waits until the workers have started


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing last.pt; the run continues with trainer.resume=auto."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        name = signal.Signals(signum).name
        if checkpoint is None:  # start-up, or no iteration finished since the last checkpoint
            message = f"{name} received before an iteration finished: nothing new to save"
        else:
            message = f"{name} received: wrote {checkpoint} at iteration {iteration}"
        super().__init__(f"{message}; continue with trainer.resume=auto")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's code for "ended by that signal": the run is not finished."""
        return 128 + self.signum


@contextlib.contextmanager
def workers_start_deaf() -> Iterator[None]:
    """Around the start of DataLoader workers (creating a loader's iterator): this thread holds the stop
    signals back (pending, delivered at the end), so that the workers it forks are born with them blocked.

    Between its fork and its worker_init_fn, a worker runs torch's set-up, which installs a SIGTERM handler
    that dies of the signal; a stop signal to the whole process group in that window killed the worker, and
    the training process with "DataLoader worker ... is killed by signal". Blocked, the signal waits until
    ignore_stop_signals has set it to be ignored, which discards it."""
    global _starting_workers
    # Another thread may still take the signal, and the main thread would run its Python handler: a
    # StopSignal raised in the middle of starting workers would leave them without an iterator to stop them.
    _starting_workers += 1
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals()) if _HAS_SIGMASK else None
    try:
        yield
    finally:
        _starting_workers -= 1
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if not _starting_workers:
            for request in _active:
                request._raise_if_due()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """worker_init_fn of the DataLoaders: a scheduler (SLURM, `timeout`, systemd) and a terminal signal every
    process of the job, workers included. A worker that died of the signal would end the training process
    with "DataLoader worker killed by signal" before it could write last.pt; ignoring it, the worker runs on
    until the training process has checkpointed and shuts it down. Workers started inside
    workers_start_deaf() were born with the signals blocked: they are ignored first, then unblocked (a
    signal pending meanwhile is discarded)."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)
    if _HAS_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals())
