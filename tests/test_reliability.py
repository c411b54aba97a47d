"""Faults during training and evaluation: signals, divergence, full disks, bad data, untrusted and wrong files.

Training runs here in this process (the kill and exit-code tests in test_reliability_kill.py run train.py).
"""

from __future__ import annotations

import builtins
import copy
import errno
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, generated_voc, one_thread, tiny_config, tiny_overrides
from helpers.ddp import join_group, spawn
from helpers.fake_data import save_palette_png
from helpers.processes import run_cli
from omegaconf import OmegaConf
from PIL import Image

import deeplab.artifacts.checkpoint as ckpt_module
import deeplab.train.engine as engine
from deeplab import data
from deeplab.artifacts.checkpoint import load_checkpoint, save_checkpoint
from deeplab.config import train_config
from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.errors import CheckpointError, ConfigError, DatasetError, DivergenceError
from deeplab.evaluation.metrics import ConfusionMatrix
from deeplab.models import build_model
from deeplab.train.engine import TrainingInterrupted, train
from deeplab.train.losses import SegmentationLoss

# Characters a shell would act on: config values must reach the file system as plain paths.
ODD = 'odd dir; touch {marker} $(touch {marker}) `touch {marker}` "dq" & | > <'


def compose(data_dir: Path, **extra: object):
    return tiny_config(data_dir, **extra)


def compose_eval(checkpoint: Path, *extra: str):
    return compose_config([f"checkpoint={checkpoint}", "num_workers=0", *extra], config_name="evaluate")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data_dir(tiny_data) -> Path:
    """The generated dataset of the tiny experiment (copied by the tests that change it)."""
    return tiny_data


@pytest.fixture(scope="module")
def model_file(data_dir, tmp_path_factory) -> Path:
    """A DeepLabv3 checkpoint as train.py writes it, model and config (what loading needs), without training."""
    cfg = train_config(compose(data_dir, model="deeplabv3"))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": build_model(cfg).state_dict(), "config": cfg.model_dump()})
    return path


def copy_data(data_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(data_dir, tmp_path / "data")
    return tmp_path / "data"


class LossHook:
    """Patches SegmentationLoss.forward: records whether each step's logits were finite, and on chosen calls
    (1 = the first training step) multiplies the losses by `value` or runs `action`."""

    def __init__(
        self, monkeypatch, bad: dict[int, float] | None = None, action=None, parts=("main",)
    ) -> None:
        self.finite_outputs: list[bool] = []
        real = SegmentationLoss.forward
        hook = self

        def forward(loss_self, outputs, target):
            call = len(hook.finite_outputs) + 1
            hook.finite_outputs.append(bool(torch.isfinite(outputs["out"]).all()))
            total, losses = real(loss_self, outputs, target)
            if bad and call in bad:
                losses = {k: v * bad[call] if k in parts else v for k, v in losses.items()}
                total = total * bad[call]
            if action is not None:
                action(call)
            return total, losses

        monkeypatch.setattr(SegmentationLoss, "forward", forward)


class SaveRecorder:
    """Wraps engine.save_checkpoint: remembers (file name, iteration, copy of the weights) of every write."""

    def __init__(self, monkeypatch) -> None:
        self.saves: list[tuple[str, int, dict]] = []
        real = engine.save_checkpoint

        def save(path, state):
            real(path, state)
            self.saves.append((Path(path).name, state["iteration"], copy.deepcopy(state["model"])))

        monkeypatch.setattr(engine, "save_checkpoint", save)

    def iterations(self, name: str) -> list[int]:
        return [it for n, it, _ in self.saves if n == name]

    def weights(self, name: str, iteration: int) -> dict:
        return next(w for n, it, w in self.saves if n == name and it == iteration)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_checkpoints_at_the_next_iteration_and_stops(sig, data_dir, tmp_path, monkeypatch, caplog):
    previous = signal.getsignal(sig)
    LossHook(monkeypatch, action=lambda call: call == 2 and os.kill(os.getpid(), sig))
    cfg = compose(
        data_dir, **{"trainer.max_iters": 50, "trainer.ckpt_interval": 50, "trainer.eval_interval": 50}
    )
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingInterrupted) as info:
        train(cfg, run_dir)
    stopped = info.value
    assert (stopped.signum, stopped.iteration, stopped.exit_code) == (sig, 2, 128 + sig)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 2  # iteration 2 was finished
    assert not (run_dir / "metrics.json").exists()  # no validation delays the exit
    assert f"{sig.name} received: wrote {run_dir / 'checkpoints' / 'last.pt'} at iteration 2" in caplog.text
    assert signal.getsignal(sig) == previous  # the handler is removed again


def test_second_ctrl_c_stops_at_once(data_dir, tmp_path, monkeypatch):
    def two_ctrl_c(call):
        if call == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    LossHook(monkeypatch, action=two_ctrl_c)
    cfg = compose(data_dir, **{"trainer.max_iters": 50, "trainer.ckpt_interval": 50})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


# ----------------------------------------------------------------------------- divergence


def test_nan_between_checks_is_never_saved_nor_validated(data_dir, tmp_path, monkeypatch):
    """A NaN loss at step 3 corrupts the weights in memory; the check at iteration 4 stops the run before
    they are validated or saved, and last.pt / best.pt stay those of iteration 2."""
    hook = LossHook(monkeypatch, bad={3: float("nan")})
    saves = SaveRecorder(monkeypatch)
    validated: list[bool] = []
    real_evaluate = engine.evaluate_as_configured

    def evaluate(model, *args, **kwargs):
        validated.append(all_finite(model.state_dict()))
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_as_configured", evaluate)
    cfg = compose(data_dir, **{"trainer.max_iters": 8, "trainer.eval_interval": 2, "trainer.log_interval": 2})
    run_dir = tmp_path / "run"
    with pytest.raises(DivergenceError) as info:
        train(cfg, run_dir)
    message = str(info.value)
    assert_one_line(message)
    for part in ("non-finite main loss", "iterations 3..4", "iteration 4", "lr 0.00", "checkpoint was kept"):
        assert part in message, message
    assert hook.finite_outputs == [True, True, True, False]  # step 4 ran on the NaN weights of step 3
    assert validated == [True]  # only at iteration 2
    assert saves.iterations("last.pt") == saves.iterations("best.pt") == [2]
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(run_dir / "checkpoints" / name)
        assert saved["iteration"] == 2 and all_finite(saved["model"])
        for key, value in saves.weights(name, 2).items():
            assert torch.equal(saved["model"][key], value), key


def test_inf_in_the_aux_loss_names_it(data_dir, tmp_path, monkeypatch):
    LossHook(monkeypatch, bad={2: float("inf")}, parts=("aux",))
    cfg = compose(data_dir, **{"model.aux_head": True, "trainer.max_iters": 4})
    with pytest.raises(DivergenceError, match=r"non-finite aux loss in iterations 2\.\.2 \(iteration 2, lr"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_max_nonfinite_skips_skips_a_bounded_number_of_steps(data_dir, tmp_path, monkeypatch, caplog):
    odd = ODD.format(marker=tmp_path / "marker")  # an odd run dir too: used as a plain path
    LossHook(monkeypatch, bad={2: float("nan"), 5: float("inf")})
    cfg = compose(data_dir, **{"trainer.max_iters": 4, "trainer.max_nonfinite_skips": 2})
    run_dir = tmp_path / odd
    with caplog.at_level(logging.WARNING):
        train(cfg, run_dir)
    assert "iter 2: non-finite loss, step skipped (1/2)" in caplog.text
    assert "step skipped (2/2)" in caplog.text
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["iteration"] == 4 and all_finite(saved["model"])
    assert not (tmp_path / "marker").exists()

    monkeypatch.undo()
    LossHook(monkeypatch, bad={1: float("nan"), 2: float("nan")})
    cfg = compose(data_dir, **{"trainer.max_iters": 4, "trainer.max_nonfinite_skips": 1})
    with pytest.raises(DivergenceError, match=r"after skipping 1 steps \(iteration 1, lr"):
        train(cfg, tmp_path / "run2")


def test_best_pt_is_replaced_only_by_a_better_model(data_dir, tmp_path, monkeypatch):
    """Validation mIoUs 0.5, 0.3, NaN, 0.6: best.pt is written at iterations 1 and 4 only."""
    mious = iter([0.5, 0.3, float("nan"), 0.6])
    real_compute = ConfusionMatrix.compute
    monkeypatch.setattr(ConfusionMatrix, "compute", lambda cm: {**real_compute(cm), "miou": next(mious)})
    saves = SaveRecorder(monkeypatch)
    cfg = compose(
        data_dir, **{"trainer.max_iters": 4, "trainer.eval_interval": 1, "trainer.ckpt_interval": 4}
    )
    train(cfg, tmp_path / "run")
    assert saves.iterations("best.pt") == [1, 4]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["metrics"]["miou"] == 0.6 and best["best_miou"] == 0.6


# ----------------------------------------------------------------------------- disk


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(data_dir, tmp_path, monkeypatch):
    real_save = torch.save

    def full_disk_at_iteration_4(obj, f, *args, **kwargs):
        if obj["iteration"] == 4:
            f.write(
                b"PK\x03\x04" + b"\0" * 4096
            )  # some bytes reach the temporary file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", full_disk_at_iteration_4)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError) as info:
        train(compose(data_dir, **{"trainer.max_iters": 6, "trainer.eval_interval": 2}), run_dir)
    message = str(info.value)
    assert_one_line(message)
    assert "No space left on device" in message and "left intact" in message
    assert "checkpoints/best.pt" in message or "checkpoints/last.pt" in message
    monkeypatch.undo()
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["iteration"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        ".lock",
        "best.pt",
        "last.pt",
        "validated.json",
    ]


def test_unwritable_run_dir_fails_at_the_start(data_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoint folder should be")
    monkeypatch.setattr(data, "build_dataset", lambda *a, **k: pytest.fail("the run dir is checked first"))
    with pytest.raises(ConfigError) as info:
        train(compose(data_dir), run_dir)
    assert_one_line(str(info.value))
    assert str(run_dir / "checkpoints") in str(info.value) and "hydra.run.dir" in str(info.value)


@pytest.mark.slow
def test_run_dir_under_a_regular_file_is_reported_by_train_py(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_cli("train.py", "experiment=quickstart", f"hydra.run.dir={blocker}/run")
    assert proc.returncode != 0
    assert f"Not a directory: '{blocker}/run'" in proc.stderr


# ----------------------------------------------------------------------------- bad data


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_corrupt_image_in_a_worker_stops_train_py_with_one_line(data_dir, tmp_path):
    data_copy = copy_data(data_dir, tmp_path)
    bad = sorted((data_copy / "synthetic").rglob("JPEGImages/*.jpg"))[3]
    truncate(bad)
    args = tiny_overrides(
        data_copy, **{"trainer.num_workers": 2, "trainer.max_iters": 20, "dataset.num_val": 4}
    )
    proc = run_cli("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}", timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot read image {bad}" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr


def test_bad_mask_in_a_worker_gives_the_original_message(data_dir, tmp_path):
    from PIL import Image

    data_copy = copy_data(data_dir, tmp_path)
    bad = sorted((data_copy / "synthetic").rglob("SegmentationClass/*.png"))[0]
    mask = Image.open(bad)
    mask.putpixel((3, 3), 7)  # class 7 of 4
    mask.save(bad)
    cfg = compose(data_copy, **{"trainer.num_workers": 2, "trainer.max_iters": 20})
    with pytest.raises(DatasetError) as info:
        train(cfg, tmp_path / "run")
    assert str(info.value).startswith(f"mask {bad} has values {{7}} outside 0..3")
    assert_one_line(str(info.value))


def test_skip_bad_skips_and_counts_samples_that_workers_skipped(data_dir, tmp_path, caplog):
    data_copy = copy_data(data_dir, tmp_path)
    images = sorted((data_copy / "synthetic").rglob("JPEGImages/*.jpg"))
    train_ids = (data_copy / "synthetic").rglob("train.txt")
    first_train = next(iter(train_ids)).read_text().split()[0]
    bad = next(p for p in images if p.stem == first_train)
    truncate(bad)
    cfg = compose(data_copy, **{"trainer.num_workers": 2, "dataset.skip_bad": True, "trainer.max_iters": 4})
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg, tmp_path / "run")
    assert 0 <= metrics["miou"] <= 1
    counts = [
        int(r.getMessage().split()[0])
        for r in caplog.records
        if "bad samples skipped so far" in r.getMessage()
    ]
    assert counts and counts[-1] >= 1  # 8 images, batch 2, 4 iterations: every image is read once at least


def test_evaluation_names_a_bad_image_found_by_a_worker(data_dir, model_file, tmp_path):
    data_copy = copy_data(data_dir, tmp_path)
    bad = sorted((data_copy / "synthetic").rglob("JPEGImages/*.jpg"))[-1]
    truncate(bad)
    val_ids = next((data_copy / "synthetic").rglob("val.txt")).read_text().split()
    if bad.stem not in val_ids:
        bad = next(
            p for p in sorted((data_copy / "synthetic").rglob("JPEGImages/*.jpg")) if p.stem in val_ids
        )
        truncate(bad)
    cfg = compose_eval(model_file, f"dataset.root={data_copy / 'synthetic'}", "num_workers=2")
    with pytest.raises(DatasetError) as info:
        evaluate_checkpoint(cfg, tmp_path / "eval")
    assert str(info.value).startswith(f"cannot read image {bad}")
    assert_one_line(str(info.value))


# ----------------------------------------------------------------------------- untrusted files and values


class RunsCode:
    """A pickle payload that creates `marker` when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def evil_file(path: Path, marker: Path, *, state_dict: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"weight": RunsCode(marker)} if state_dict else {"model": {}, "config": RunsCode(marker)}
    torch.save(payload, path)
    return path


def assert_refused(message: str, path: Path, marker: Path) -> None:
    assert_one_line(message)
    assert str(path) in message and "could run code" in message, message
    assert not marker.exists()


def test_evaluate_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "marker"
    evil = evil_file(tmp_path / ODD.format(marker=marker) / "last.pt", marker)
    with pytest.raises(CheckpointError) as info:
        evaluate_checkpoint(compose_eval(f"'{evil}'"), tmp_path / "eval")
    assert_refused(str(info.value), evil, marker)


@pytest.mark.slow
def test_evaluate_py_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "marker"
    odd = ODD.format(marker=marker)
    evil = evil_file(tmp_path / odd / "last.pt", marker)
    out = tmp_path / f"eval {odd}"
    proc = run_cli("evaluate.py", f"checkpoint='{evil}'", f"hydra.run.dir='{out}'")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert_refused(errors[0], evil, marker)
    assert out.is_dir()  # the run dir is exactly the given string, shell characters and all


@pytest.mark.parametrize("key", ["trainer.resume", "backbone.pretrained", "model.pretrained"])
def test_training_refuses_a_pickle_that_runs_code(key, data_dir, tmp_path):
    marker = tmp_path / "marker"
    evil = evil_file(tmp_path / "weights.pth", marker, state_dict=key != "trainer.resume")
    # torchvision publishes DeepLabV3 weights for ResNet-50/101: model.pretrained needs one of them
    backbone = {"backbone": "resnet50", "backbone.pretrained": False} if key == "model.pretrained" else {}
    with pytest.raises(CheckpointError) as info:
        train(compose(data_dir, **backbone, **{key: f"'{evil}'"}), tmp_path / "run")
    assert_refused(str(info.value), evil, marker)


def test_cached_torchvision_weights_that_run_code_are_refused(data_dir, tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights

    marker = tmp_path / "marker"
    url = ResNet50_Weights.IMAGENET1K_V2.url
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    evil_file(tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1], marker, state_dict=True)
    with pytest.raises((CheckpointError, ConfigError)) as info:
        build_model(compose(data_dir, **{"backbone": "resnet50", "backbone.pretrained": True}))
    assert_one_line(str(info.value))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["voc", "folder"])
def test_dataset_root_with_shell_characters_is_only_a_path(name, tmp_path):
    marker = tmp_path / "marker"
    root = tmp_path / ODD.format(marker=marker)
    keys = {"voc": ["dataset=voc", f"dataset.root='{root}'"],
            "folder": ["dataset=folder", f"dataset.train.images='{root}/images'", f"dataset.train.masks='{root}/masks'",
                       f"dataset.val.images='{root}/images'", f"dataset.val.masks='{root}/masks'", "dataset.num_classes=2"]}  # fmt: skip
    cfg = compose_config([*keys[name], "trainer.crop_size=32"])
    with pytest.raises(DatasetError) as info:
        data.build_dataset(cfg, "train")
    assert_one_line(str(info.value))
    assert str(root) in str(info.value)
    assert not marker.exists() and not root.exists()


# ----------------------------------------------------------------------------- wrong or damaged checkpoints


def test_resume_with_another_class_count_names_the_key(data_dir, model_file, tmp_path):
    three = {"dataset.num_classes": 3, "dataset.class_names": "[background,disc,square]"}
    cfg = compose(tmp_path / "data", **{"trainer.resume": model_file, **three})
    with pytest.raises(CheckpointError) as info:
        train(cfg, tmp_path / "run")
    assert_one_line(str(info.value))
    assert "dataset.num_classes: checkpoint 4, config 3" in str(info.value)


def test_evaluate_with_weights_of_another_class_count_names_the_parameters(model_file, tmp_path):
    saved = load_checkpoint(model_file)
    saved["config"]["dataset"]["num_classes"] = 3
    saved["config"]["dataset"]["class_names"] = ["background", "disc", "square"]
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, saved)
    with pytest.raises(CheckpointError) as info:
        evaluate_checkpoint(compose_eval(wrong), tmp_path / "eval")
    message = str(info.value)
    assert_one_line(message)
    assert (
        "does not fit this model" in message
        and "head.classifier.weight (4, 16, 1, 1) vs (3, 16, 1, 1)" in message
    )


def test_evaluate_with_weights_of_another_architecture_names_the_parameters(model_file, tmp_path):
    saved = load_checkpoint(model_file)
    # the weights are DeepLabv3's: no decoder, and a classifier on the 16 ASPP channels
    saved["config"]["model"] |= {"name": "deeplabv3plus"}
    saved["config"]["model"]["decoder"] |= {"enabled": True, "channels": 32}
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, saved)
    with pytest.raises(CheckpointError) as info:
        evaluate_checkpoint(compose_eval(wrong), tmp_path / "eval")
    assert_one_line(str(info.value))
    assert "shape differs: head." in str(info.value) and "missing: head." in str(info.value)


@pytest.mark.parametrize("where", ["evaluate", "resume"])
def test_truncated_checkpoint_says_truncated(where, data_dir, model_file, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        if where == "evaluate":
            evaluate_checkpoint(compose_eval(cut), tmp_path / "eval")
        else:
            train(compose(data_dir, **{"trainer.resume": cut}), tmp_path / "run")
    assert_one_line(str(info.value))
    assert f"checkpoint file {cut} is truncated" in str(info.value)


# ----------------------------------------------------------------------------- DDP


def _ddp_stop_worker(
    rank: int, world: int, init_file: str, cfg_yaml: str, run_dir: str, out_dir: str
) -> None:
    """One DDP rank of a tiny training; rank 1 alone receives SIGTERM, during its third step."""
    join_group(rank, world, init_file)
    calls = []
    real = SegmentationLoss.forward

    def forward(self, outputs, target):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, outputs, target)

    SegmentationLoss.forward = forward
    try:
        train(OmegaConf.create(cfg_yaml), Path(run_dir))
        result = "finished"
    except TrainingInterrupted as e:
        result = f"{e.signum} {e.iteration}"
    Path(out_dir, f"rank{rank}").write_text(result)


@pytest.mark.slow
def test_ddp_ranks_agree_to_stop_when_one_receives_a_signal(data_dir, tmp_path):
    """Without agreement, rank 1 would leave the loop after step 3 and rank 0 would wait for it forever."""
    cfg = compose(
        data_dir,
        **{
            "trainer.batch_size": 4,
            "trainer.max_iters": 100,
            "trainer.ckpt_interval": 100,
            "trainer.log_interval": 2,
        },
    )
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    out_dir.mkdir()
    spawn(
        _ddp_stop_worker,
        tmp_path,
        OmegaConf.to_yaml(cfg, resolve=True),
        str(run_dir),
        str(out_dir),
        deadline=240,
    )
    assert [(out_dir / f"rank{r}").read_text() for r in (0, 1)] == [f"{signal.SIGTERM.value} 4"] * 2
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 4


# ----------------------------------------------------------------------------- reused run dirs and resumes


def test_a_finished_run_resumed_with_other_data_is_refused_or_revalidated(data_dir, tmp_path):
    """resume=auto in a finished run dir: other data is refused (naming the keys); the same data in another
    place is validated again rather than the stored metrics returned."""
    run_dir = tmp_path / "run"
    stored = train(compose(data_dir), run_dir)
    stamp = (generated_voc(data_dir).parent / "synthetic.json").read_text()
    with pytest.raises(CheckpointError) as info:
        train(compose(data_dir, **{"trainer.resume": "auto", "dataset.seed": 1}), run_dir)
    assert_one_line(str(info.value))
    assert "trained on other data: dataset.seed: checkpoint 0, config 1" in str(info.value)
    assert (generated_voc(data_dir).parent / "synthetic.json").read_text() == stamp
    assert (
        len(list((data_dir / "synthetic").glob("*/synthetic.json"))) == 1
    )  # refused before the data was made

    moved = copy_data(data_dir, tmp_path)  # the same files elsewhere, with one validation mask changed
    mask_path = sorted((moved / "synthetic").rglob("SegmentationClass/val_*.png"))[0]
    mask = np.array(Image.open(mask_path))
    mask[mask != 255] = 1
    save_palette_png(mask, mask_path)
    again = train(compose(moved, **{"trainer.resume": "auto"}), run_dir)
    assert again["iteration"] == 4 and again["iou_per_class"] != stored["iou_per_class"]
    fresh = evaluate_checkpoint(
        compose_eval(run_dir / "checkpoints" / "last.pt", f"dataset.root={moved}/synthetic"), tmp_path / "e"
    )
    assert again["miou"] == pytest.approx(fresh["miou"])


@pytest.mark.parametrize(
    ("key", "value"), [("optim.lr", 0.02), ("optim.momentum", 0.5), ("optim.weight_decay", 0.0)]
)
def test_resume_with_another_optimiser_setting_is_refused(key, value, data_dir, tmp_path, monkeypatch):
    """The optimiser state would silently keep the checkpoint's value while the record showed the new one."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(engine, "save_checkpoint", stop_after_save(2))
    with pytest.raises(KeyboardInterrupt):
        train(compose(data_dir), run_dir)
    monkeypatch.undo()
    with pytest.raises(CheckpointError) as info:
        train(compose(data_dir, **{"trainer.resume": "auto", key: value}), run_dir)
    assert_one_line(str(info.value))
    assert str(info.value).startswith(f"{key}: checkpoint ") and "a resumed run continues" in str(info.value)


def stop_after_save(iteration: int):
    """A save_checkpoint that writes, then stops the run at `iteration` (as a kill right after would)."""
    real = ckpt_module.save_checkpoint

    def save(path, state):
        real(path, state)
        if Path(path).name == "last.pt" and state["iteration"] == iteration:
            raise KeyboardInterrupt

    return save


def test_a_failure_while_validating_keeps_the_interval(data_dir, tmp_path, monkeypatch):
    """last.pt is written before validation at a shared boundary: a bad image or out-of-memory there loses
    nothing."""
    real_evaluate = engine.evaluate_as_configured

    def evaluate(model, *args, **kwargs):
        raise DatasetError("cannot read image val_00003.jpg: broken")

    monkeypatch.setattr(engine, "evaluate_as_configured", evaluate)
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError):
        train(compose(data_dir, **{"trainer.eval_interval": 2, "trainer.ckpt_interval": 2}), run_dir)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 2
    monkeypatch.setattr(engine, "evaluate_as_configured", real_evaluate)


def test_a_restart_without_last_pt_does_not_replace_a_better_best_pt(data_dir, tmp_path, monkeypatch):
    """Killed before the first last.pt (eval_interval < ckpt_interval) and restarted: best.pt is only
    replaced by a model that beats it."""
    run_dir = tmp_path / "run"
    cfg = compose(data_dir, **{"trainer.eval_interval": 1, "trainer.ckpt_interval": 100})
    mious = iter([0.8, 0.3, 0.4, 0.5, 0.9])
    real_compute = ConfusionMatrix.compute
    monkeypatch.setattr(ConfusionMatrix, "compute", lambda cm: {**real_compute(cm), "miou": next(mious)})

    def killed_after_first_best(path, state):
        ckpt_module.save_checkpoint(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", killed_after_first_best)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir)
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    monkeypatch.setattr(engine, "save_checkpoint", ckpt_module.save_checkpoint)
    train(
        compose(
            data_dir, **{"trainer.eval_interval": 1, "trainer.ckpt_interval": 100, "trainer.resume": "auto"}
        ),
        run_dir,
    )
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["metrics"]["miou"] == 0.9 and best["iteration"] == 4  # 0.3..0.6 did not beat 0.8


def test_a_run_dir_in_use_is_refused_naming_the_process(data_dir, tmp_path):
    from deeplab.train.rundir import RunDirLock

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    held = RunDirLock(run_dir / "checkpoints").acquire()  # another training process
    try:
        with pytest.raises(ConfigError) as info:
            train(compose(data_dir), run_dir)
    finally:
        held.release()
    assert_one_line(str(info.value))
    assert f"is in use by another training process (pid {os.getpid()})" in str(info.value)
    train(compose(data_dir), run_dir)  # free again


def test_a_fresh_run_does_not_overwrite_another_runs_checkpoints(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(compose(data_dir), run_dir)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as info:
        train(compose(data_dir, **{"optim.lr": 0.02}), run_dir)
    assert "already holds checkpoints/last.pt and best.pt of an earlier run" in str(info.value)
    assert "trainer.resume=auto" in str(info.value)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_the_default_run_dir_is_unique_per_start() -> None:
    hydra = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "hydra" / "default.yaml")
    dirs = OmegaConf.to_container(hydra, resolve=False)
    assert "%f" in dirs["run"]["dir"] and "%f" in dirs["sweep"]["dir"]  # two runs started in the same second


def test_evaluation_with_skip_bad_leaves_a_bad_image_out(data_dir, model_file, tmp_path):
    """Not replaced by the next image (which would be scored twice): left out, and counted."""
    data_copy = copy_data(data_dir, tmp_path)
    val_ids = next((data_copy / "synthetic").rglob("val.txt")).read_text().split()
    truncate(next((data_copy / "synthetic").rglob(f"JPEGImages/{val_ids[1]}.jpg")))
    root = f"dataset.root={data_copy / 'synthetic'}"
    with pytest.raises(DatasetError, match=f"cannot read image .*{val_ids[1]}"):
        evaluate_checkpoint(compose_eval(model_file, root), tmp_path / "a")
    skip = evaluate_checkpoint(compose_eval(model_file, root, "dataset.skip_bad=true"), tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["num_images"] == 3 and saved["left_out"] == 1
    # the same as evaluating the three good images alone
    (generated_voc(data_copy) / "ImageSets" / "Segmentation" / "val3.txt").write_text(
        "".join(f"{i}\n" for i in val_ids if i != val_ids[1])
    )
    three = evaluate_checkpoint(compose_eval(model_file, root, "dataset.val_split=val3"), tmp_path / "c")
    assert skip["miou"] == pytest.approx(three["miou"]) and skip["pixel_acc"] == pytest.approx(
        three["pixel_acc"]
    )


def _ddp_data_error_worker(
    rank: int, world: int, init_file: str, cfg_yaml: str, run_dir: str, out_dir: str
) -> None:
    join_group(rank, world, init_file)
    try:
        train(OmegaConf.create(cfg_yaml), Path(run_dir))
        result = "finished"
    except DatasetError as e:
        result = f"DatasetError: {e}"
    Path(out_dir, f"rank{rank}").write_text(result)


def test_ddp_ranks_stop_together_with_the_message_of_one_ranks_data_error(data_dir, tmp_path):
    """Rank 1 alone reads the broken image; both ranks stop with its message, at the next log boundary,
    instead of rank 0 waiting for rank 1 in the next collective until the timeout."""
    data_copy = copy_data(data_dir, tmp_path)
    bad = sorted((data_copy / "synthetic").rglob("JPEGImages/train_*.jpg"))
    for path in bad:  # every training image: whichever rank reads first, the error is the same kind
        truncate(path)
    cfg = compose(
        data_copy, **{"trainer.batch_size": 4, "trainer.log_interval": 2, "dataset.check_labels": False}
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spawn(
        _ddp_data_error_worker,
        tmp_path,
        OmegaConf.to_yaml(cfg, resolve=True),
        str(tmp_path / "run"),
        str(out_dir),
    )
    results = [(out_dir / f"rank{r}").read_text() for r in (0, 1)]
    assert results[0] == results[1] and results[0].startswith("DatasetError: cannot read image ")
