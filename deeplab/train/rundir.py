"""The run directory: created and test-written at the start, locked for one training process, and never
silently reused: a fresh run refuses a directory that holds another run's checkpoints."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from deeplab.errors import ConfigError

LOCK_NAME = ".lock"


def check_writable(directory: Path) -> None:
    """Create directory and write a file in it: fail at the start, not at the first checkpoint hours later."""
    probe = directory / f".write_test.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise ConfigError(
            f"cannot write the run's checkpoints in {directory} ({e.strerror or e}{where}); "
            "set hydra.run.dir to a writable directory"
        ) from None


class RunDirLock:
    """An exclusive lock (fcntl.flock) on checkpoints/.lock, held while the process trains.

    The kernel releases it when the process ends, however it ends (also SIGKILL), so a stale lock never
    blocks a restart. The lock file holds the owner's pid, to name it to a second process.
    """

    def __init__(self, ckpt_dir: Path) -> None:
        self.path = ckpt_dir / LOCK_NAME
        self.file: IO[str] | None = None

    def acquire(self) -> RunDirLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lifetime of the run
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(
                f"run dir {self.path.parents[1]} is in use by another training process (pid {owner}); "
                "wait for it to end, or give this run another hydra.run.dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()  # closing the descriptor releases the lock
            self.file = None


def claim(run_dir: Path, resume: str | None) -> RunDirLock:
    """Make run_dir/checkpoints usable by this run: writable, locked, and not another run's.

    A fresh run (trainer.resume null) in a directory that already holds checkpoints would overwrite them at
    its first checkpoint; that is refused with the way to continue instead.
    """
    ckpt_dir = run_dir / "checkpoints"
    check_writable(ckpt_dir)
    lock = RunDirLock(ckpt_dir).acquire()
    existing = [name for name in ("last.pt", "best.pt") if (ckpt_dir / name).is_file()]
    if resume is None and existing:
        lock.release()
        raise ConfigError(
            f"run dir {run_dir} already holds checkpoints/{' and '.join(existing)} of an earlier run; continue "
            "it with trainer.resume=auto, or give this run another hydra.run.dir"
        )
    return lock
