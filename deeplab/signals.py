"""Stop requests: SIGTERM / SIGUSR1 (cluster preemption), SIGHUP (terminal closed) and Ctrl-C become a
checkpoint-and-exit of the training process; its DataLoader workers leave them to it."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any


class StopRequest:
    """Records the first stop signal while active; the loop checkpoints at the next iteration and exits."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                with contextlib.suppress(ValueError):  # not the main thread
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing last.pt; the run continues with trainer.resume=auto."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(
            f"{signal.Signals(signum).name} received: wrote {checkpoint} at iteration {iteration}; "
            "continue with trainer.resume=auto"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's code for "ended by that signal": the run is not finished."""
        return 128 + self.signum


def ignore_stop_signals(worker_id: int = 0) -> None:
    """worker_init_fn of the DataLoaders: a scheduler (SLURM, `timeout`, systemd) and a terminal signal every
    process of the job, workers included. A worker that died of the signal would end the training process
    with "DataLoader worker killed by signal" before it could write last.pt; ignoring it, the worker runs on
    until the training process has checkpointed and shuts it down."""
    for name in StopRequest.SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
