"""`python tests/faults.py ARGS` runs `train.py ARGS` with faults injected at exact moments, so the
reliability tests hit them every time instead of racing for them. Environment variables choose the faults:

FAULT_STEP_DELAY=S         every training step takes S seconds longer (time to act in the middle of a run)
FAULT_KILL_IN_WRITE=1      SIGKILL in the middle of the first write of last.pt: its temporary file is left
                           half written and not renamed, as a crash or the OOM killer would leave it
FAULT_SIGNAL=N:NAME[:group]  send signal NAME during training step N of this process; with `group`, to the
                           whole process group from another process (`kill -NAME -PGID`), as a scheduler does
FAULT_KILL_AT=MOMENT:N      SIGKILL to this process at MOMENT of iteration N:
    after_save         last.pt of iteration N written, before the loggers send its steps
    after_validation   the validation of iteration N logged, before it is sent and recorded
FAULT_GROUP_SIGNAL=MOMENT[:NAME]  send NAME (SIGTERM) once to the whole process group, from another process,
                           at MOMENT:
    startup        while the model is built
    label_count    while a DataLoader worker reads a mask to count the labels (start-up; needs a cold cache)
    worker_start   in a DataLoader worker's set-up, before its worker_init_fn (the first worker to start)
    first_fetch    while the first training sample is read (in a worker with trainer.num_workers > 0)
    worker_death   as first_fetch, from DataLoader worker 0, which then dies of SIGKILL: the stop signal
                   followed by a dead worker, as when a scheduler's SIGKILL follows its SIGTERM
    checkpoint     while the first checkpoint is written
    validation     while the first validation image is predicted
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import deeplab.data.loaders
import deeplab.data.stats
import deeplab.evaluation.loop
import deeplab.train.engine
from deeplab.data.dataset import SegmentationDataset
from deeplab.train.losses import SegmentationLoss

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


def inject_kill(moment: str, iteration: int) -> None:
    """FAULT_KILL_AT: SIGKILL right after last.pt of `iteration` is written, or right after its validation."""
    engine = deeplab.train.engine
    if moment == "after_save":
        real_save = engine.save_checkpoint

        def save(path, state):
            real_save(path, state)
            if Path(path).name == "last.pt" and state["iteration"] == iteration:
                os.kill(os.getpid(), signal.SIGKILL)

        engine.save_checkpoint = save
    elif moment == "after_validation":
        real_validated_at = engine.Run.validated_at

        def validated_at(self, it):
            if it == iteration:
                os.kill(os.getpid(), signal.SIGKILL)
            real_validated_at(self, it)

        engine.Run.validated_at = validated_at
    else:
        raise ValueError(f"FAULT_KILL_AT: unknown moment {moment!r}")


def signal_group(sig: signal.Signals) -> None:
    """`kill -NAME -PGID`: every process of the job, from another process, as a scheduler or `timeout` does."""
    subprocess.run(["kill", f"-{sig.name.removeprefix('SIG')}", "--", f"-{os.getpgid(0)}"], check=False)


def inject_group_signal(moment: str, sig: signal.Signals) -> None:
    """FAULT_GROUP_SIGNAL: wrap the function running at `moment` so that its first call signals the group."""
    sent = multiprocessing.Value("b", 0)  # shared with the DataLoader workers forked later: sent once in all

    def first() -> bool:
        with sent.get_lock():
            was, sent.value = sent.value, 1
        return not was

    def signalling(real, worker0: bool = False, die: bool = False):
        def wrapper(*args, **kwargs):
            info = torch.utils.data.get_worker_info()
            if (not worker0 or (info is not None and info.id == 0)) and first():
                signal_group(sig)
                if die:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return wrapper

    if moment == "startup":
        deeplab.train.engine.build_model = signalling(deeplab.train.engine.build_model)
    elif moment == "label_count":
        inspect = deeplab.data.stats._Inspect
        inspect.__getitem__ = signalling(inspect.__getitem__)
    elif moment == "worker_start":
        deeplab.data.loaders.ignore_stop_signals = signalling(deeplab.data.loaders.ignore_stop_signals)
    elif moment in ("first_fetch", "worker_death"):
        die = moment == "worker_death"
        SegmentationDataset.__getitem__ = signalling(SegmentationDataset.__getitem__, worker0=die, die=die)
    elif moment == "checkpoint":
        deeplab.train.engine.save_checkpoint = signalling(deeplab.train.engine.save_checkpoint)
    elif moment == "validation":
        deeplab.evaluation.loop.predict_probs = signalling(deeplab.evaluation.loop.predict_probs)
    else:
        raise ValueError(f"FAULT_GROUP_SIGNAL: unknown moment {moment!r}")


if __name__ == "__main__":
    inject()
    if os.environ.get("FAULT_KILL_AT"):
        moment, at = os.environ["FAULT_KILL_AT"].split(":")
        inject_kill(moment, int(at))
    if os.environ.get("FAULT_GROUP_SIGNAL"):
        moment, *name = os.environ["FAULT_GROUP_SIGNAL"].split(":")
        inject_group_signal(moment, signal.Signals[name[0] if name else "SIGTERM"])
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
