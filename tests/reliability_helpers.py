"""Helpers of the reliability tests: a seconds-long training config, and train.py run as a real process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\|\s*(\d+)/(\d+) \[")


def tiny_overrides(data_dir: Path, **extra: object) -> list[str]:
    """The quickstart shrunk to seconds: R50 DeepLabv3 (16-channel ASPP, so checkpoints stay small-ish) at 40x40."""
    base = {
        "experiment": "quickstart",
        "model": "deeplabv3",
        "model.aspp.channels": 16,
        "paths.data_dir": str(data_dir),
        "dataset.num_train": 8,
        "dataset.num_val": 4,
        "dataset.image_size": "[40,56]",
        "trainer.max_iters": 6,
        "trainer.batch_size": 2,
        "trainer.crop_size": 40,
        "trainer.eval_interval": 6,
        "trainer.ckpt_interval": 2,
        "trainer.log_interval": 1,
        "trainer.num_workers": 0,
        "trainer.deterministic": True,
        "logger.num_images": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, as the train.py processes below: same arithmetic, and no slow-down from
    oversubscribed cores when other processes compete for them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TrainProcess:
    """`python train.py ARGS` in its own process; stdout and stderr go to one log file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "train.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def progress(self) -> int:
        """The last iteration count shown by the progress bar (0 before the first)."""
        found = PROGRESS.findall(self.log())
        return int(found[-1][0]) if found else 0

    def wait_until(self, condition: Callable[[], bool], timeout: float = 120.0, poll: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"train.py ended (exit {self.proc.returncode}) first:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting:\n{self.log()[-3000:]}")
            time.sleep(poll)

    def send(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.send(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"train.py did not exit within {timeout} s:\n{self.log()[-3000:]}") from None


def run_cli(script: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
