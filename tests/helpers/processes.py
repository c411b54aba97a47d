"""train.py (and the other entry points) run as real processes, as a user or a scheduler runs them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRESS = re.compile(r"\|\s*(\d+)/(\d+) \[")


class TrainProcess:
    """`python train.py ARGS` in its own process; stdout and stderr go to one log file.

    With `faults` (environment variables of tests/faults.py) it runs through that script, which injects
    them. The process leads its own process group, as a job under a scheduler does.
    """

    def __init__(
        self, args: list[str], log_path: Path, faults: dict[str, str] | None = None, script: str = "train.py"
    ) -> None:
        self.log_path = log_path
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
        env.update(faults or {})
        script = str(ROOT / "tests" / "faults.py") if faults else script  # script "-m": args[0] is a module
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, script, *args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
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
                    f"the process ended (exit {self.proc.returncode}) first:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting:\n{self.log()[-3000:]}")
            time.sleep(poll)

    def send(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the whole process group (the process leads it): DataLoader workers included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def group_left(self, wait: float = 5.0) -> bool:
        """Whether a process of the job (a DataLoader worker) outlives the process, `wait` seconds after it
        ended; any such process is killed."""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return False
            if time.monotonic() > deadline:
                self.kill()
                return True
            time.sleep(0.05)

    def wait(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"train.py did not exit within {timeout} s:\n{self.log()[-3000:]}") from None


def run_cli(script: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (or `python -m MODULE ARGS` with script="-m") from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
