"""`python tests/faults.py ARGS` runs `train.py ARGS` with faults injected at exact moments, so the
reliability tests hit them every time instead of racing for them. Environment variables choose the faults:

FAULT_STEP_DELAY=S         every training step takes S seconds longer (time to act in the middle of a run)
FAULT_KILL_IN_WRITE=1      SIGKILL in the middle of the first write of last.pt: its temporary file is left
                           half written and not renamed, as a crash or the OOM killer would leave it
FAULT_SIGNAL=N:NAME[:group]  send signal NAME during training step N of this process; with `group`, to the
                           whole process group from another process (`kill -NAME -PGID`), as a scheduler does
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from deeplab.losses import SegmentationLoss

ROOT = Path(__file__).resolve().parents[1]


def inject() -> None:
    delay = float(os.environ.get("FAULT_STEP_DELAY", "0"))
    at, name, *group = (os.environ.get("FAULT_SIGNAL") or "0:SIGTERM").split(":")
    real_forward = SegmentationLoss.forward
    steps = [0]

    def forward(self, outputs, target):
        steps[0] += 1
        if delay:
            time.sleep(delay)
        if steps[0] == int(at):
            sig = signal.Signals[name]
            if (
                group
            ):  # sent by another process, as by SLURM or `timeout`: not this process's children's parent
                subprocess.run(
                    ["kill", f"-{sig.name.removeprefix('SIG')}", "--", f"-{os.getpgid(0)}"], check=False
                )
            else:
                os.kill(os.getpid(), sig)
        return real_forward(self, outputs, target)

    SegmentationLoss.forward = forward

    if os.environ.get("FAULT_KILL_IN_WRITE"):
        real_save = torch.save

        def save_half_then_die(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "optimizer" in obj:  # last.pt (best.pt holds the weights only)
                real_save(obj, f, *args, **kwargs)
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save_half_then_die


if __name__ == "__main__":
    inject()
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
