"""Stop signals in-process: DataLoader workers are born deaf to them, a signal during start-up or validation
ends the run at once, and a stuck worker never keeps the process waiting. (The whole-job signals at every
moment, through train.py, are in test_reliability_kill.py.)"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers.configs import one_thread, tiny_config
from helpers.processes import ROOT

import deeplab.data.loaders
import deeplab.evaluation.loop
import deeplab.train.engine
import deeplab.train.losses
from deeplab.artifacts.checkpoint import load_checkpoint
from deeplab.data.loaders import batches
from deeplab.runtime.signals import StopRequest, StopSignal, TrainingInterrupted, ignore_stop_signals
from deeplab.train.engine import train


class Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        return index


def test_workers_started_by_batches_survive_a_stop_signal_before_their_worker_init_fn():
    """torch's worker set-up, before worker_init_fn, installs a SIGTERM handler that dies of it: a SIGTERM
    arriving then (here sent by each worker to itself) is held back, then discarded by ignore_stop_signals."""
    held = multiprocessing.Value("i", 0)

    def signalled_in_setup(worker_id: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        if signal.SIGTERM in signal.sigpending():  # blocked, not delivered: the worker would have died
            with held.get_lock():
                held.value += 1
        ignore_stop_signals(worker_id)

    loader = torch.utils.data.DataLoader(
        Numbers(), batch_size=2, num_workers=2, worker_init_fn=signalled_in_setup, persistent_workers=True
    )
    assert [b.tolist() for b in batches(loader)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert held.value == 2
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process: unblocked again
    workers = loader._iterator._workers
    gen = batches(loader)
    next(gen)
    gen.close()  # stopped early: the workers are shut down
    assert not any(w.is_alive() for w in workers)


def test_stop_request_at_once_raises_where_the_work_is():
    with StopRequest() as stop:
        with stop.at_once(enabled=False):
            os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1  # recorded only
        with pytest.raises(StopSignal) as info, stop.at_once():  # one already recorded: at once
            time.sleep(5)
        assert info.value.signum == signal.SIGUSR1
    stop = StopRequest()
    with stop, pytest.raises(StopSignal), stop.at_once():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted


@pytest.fixture
def real_call(monkeypatch):
    """Replace module.name by a wrapper that sends SIGTERM to this process at its first call; returns the calls."""

    def install(module, name: str) -> list[int]:
        real, calls = getattr(module, name), []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return calls

    return install


def test_signal_during_start_up_ends_the_run_at_once_without_a_checkpoint(tiny_data, tmp_path, real_call):
    calls = real_call(deeplab.train.engine, "build_model")
    previous = signal.getsignal(signal.SIGTERM)
    run_dir = tmp_path / "run"
    with one_thread(), pytest.raises(TrainingInterrupted) as info:
        train(tiny_config(tiny_data, **{"trainer.max_iters": 50}), run_dir)
    assert (info.value.signum, info.value.checkpoint, info.value.exit_code) == (signal.SIGTERM, None, 143)
    assert "nothing new to save" in str(info.value)
    assert calls == [1] and not (run_dir / "checkpoints" / "last.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == previous
    deeplab.train.engine.rundir.claim(run_dir, "auto").release()  # the run dir's lock was released


def test_signal_during_validation_drops_it_and_saves_the_iteration(tiny_data, tmp_path, real_call):
    """Validation at iteration 1 (no checkpoint due): the first predicted image's signal ends it there; last.pt
    holds iteration 1 and no metrics are written."""
    calls = real_call(deeplab.evaluation.loop, "predict_probs")
    run_dir = tmp_path / "run"
    cfg = tiny_config(
        tiny_data, **{"trainer.max_iters": 50, "trainer.eval_interval": 1, "eval.batch_size": 1}
    )
    with one_thread(), pytest.raises(TrainingInterrupted) as info:
        train(cfg, run_dir)
    assert (info.value.iteration, info.value.checkpoint) == (1, run_dir / "checkpoints" / "last.pt")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 1
    assert calls == [1]  # 1 of the 4 validation images
    assert not (run_dir / "metrics.json").exists()


def test_iterators_left_running_are_shut_down_at_exit():
    """At exit multiprocessing would send the workers SIGTERM, which they ignore, and wait for them for ever."""
    loader = torch.utils.data.DataLoader(
        Numbers(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals
    )
    before = set(multiprocessing.active_children())
    gen = batches(loader)
    next(gen)  # left running, as by a traceback that holds it
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    deeplab.data.loaders._shut_down_at_exit()
    assert not any(w.is_alive() for w in workers)
    gen.close()


LEFT_RUNNING = """
import torch
from deeplab.data.loaders import batches
from deeplab.runtime.signals import ignore_stop_signals
loader = torch.utils.data.DataLoader(list(range(8)), num_workers=2, worker_init_fn=ignore_stop_signals)
gen = batches(loader)
next(gen)
cycle = [gen]
cycle.append(cycle)
"""


@pytest.mark.slow
def test_a_process_with_an_iterator_left_running_exits():
    done = subprocess.run([sys.executable, "-c", LEFT_RUNNING], cwd=ROOT, timeout=120, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


class Stuck(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 1:
            time.sleep(600)  # a worker that never answers the request to exit
        return index


@pytest.mark.slow
def test_a_stuck_worker_is_killed_at_shutdown():
    """torch waits 5 s for a worker to exit, then terminates it with SIGTERM, which our workers ignore: it is
    killed, so that nothing waits for it at exit."""
    loader = torch.utils.data.DataLoader(Stuck(), num_workers=1, worker_init_fn=ignore_stop_signals)
    before = set(multiprocessing.active_children())
    gen = batches(loader)
    assert next(gen).tolist() == [0]
    (worker,) = set(multiprocessing.active_children()) - before
    time.sleep(0.5)  # the worker is inside the sleep of sample 1
    start = time.monotonic()
    gen.close()
    assert time.monotonic() - start < 30
    assert not worker.is_alive() and worker.exitcode == -signal.SIGKILL


def test_signal_during_the_last_iteration_changes_nothing(tiny_data, tmp_path, real_call):
    """max_iters=1: the signal during the only step is recorded; the run validates and finishes."""
    real_call(deeplab.train.losses.SegmentationLoss, "forward")
    run_dir = tmp_path / "run"
    with one_thread():
        metrics = train(tiny_config(tiny_data, **{"trainer.max_iters": 1}), run_dir)
    assert metrics["iteration"] == 1 and (run_dir / "metrics.json").exists()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 1
